"""Read ``torch.save`` checkpoints (zip format) without torch and without running them.

A pickle names Python globals and asks the loader to call them. This reader
never imports or calls what a file names: every global is looked up in a small
table of stand-ins written here (``_SAFE_GLOBALS``), and anything else is refused
with an error that names it. Tensors come back as :class:`LazyTensor` records
that read their bytes from the archive only when asked, so optimizer state in a
training checkpoint costs nothing.
"""

from __future__ import annotations

import io
import math
import zlib
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """The file is not a checkpoint this reader understands, or it is damaged."""


# torch storage class -> (numpy dtype of the stored elements, dtype name)
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # widened to float32 on read
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

# What a damaged archive can raise while reading a member.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
               RuntimeError, zlib.error)
# data.pkl holds names and shapes only; real ones are well under this.
_MAX_PICKLE_BYTES = 256 << 20

# Refuse tensors past this many elements: no VMamba weight comes near it, and a
# hostile header must not make us allocate without bound.
_MAX_ELEMENTS = 1 << 31


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _Storage:
    kind: str  # a key of _STORAGE_DTYPES
    key: str
    numel: int


class LazyTensor:
    """A tensor in a checkpoint: its dtype, shape and where its bytes live."""

    def __init__(self, reader: "_ArchiveReader", storage: _Storage, offset: int, size: tuple, stride: tuple):
        self._reader = reader
        self.storage = storage
        self.offset = offset
        self.shape = size
        self.stride = stride

    @property
    def dtype(self) -> str:
        return self.storage.kind.replace("Storage", "").lower()

    def numpy(self) -> np.ndarray:
        """The tensor as a contiguous array (bfloat16 widened to float32)."""
        if not all(isinstance(v, int) for v in (*self.shape, *self.stride)) or len(self.shape) != len(self.stride):
            raise CheckpointError(f"tensor in storage '{self.storage.key}' has a malformed shape or stride")
        if any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride):
            raise CheckpointError(f"tensor in storage '{self.storage.key}' has a negative size or stride")
        count = math.prod(self.shape)
        if count > max(self.storage.numel, 1):
            raise CheckpointError(
                f"tensor of shape {self.shape} claims {count} elements, but its storage "
                f"'{self.storage.key}' holds {self.storage.numel}"
            )
        base = self._reader.storage_array(self.storage)
        if 0 in self.shape:
            arr = np.zeros(self.shape, dtype=base.dtype)
        else:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
            if self.offset < 0 or last >= base.size:
                raise CheckpointError(
                    f"tensor of shape {self.shape} at offset {self.offset} runs past its storage "
                    f"'{self.storage.key}' of {base.size} elements"
                )
            item = base.itemsize
            arr = np.lib.stride_tricks.as_strided(
                base[self.offset :], shape=self.shape, strides=[s * item for s in self.stride], writeable=False
            )
            arr = np.ascontiguousarray(arr)
        if self.storage.kind == "BFloat16Storage":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr

    def __repr__(self) -> str:
        return f"LazyTensor({self.dtype}, shape={self.shape})"


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return LazyTensor(storage._reader, storage.storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    return data


class _StorageRef:
    def __init__(self, reader, storage):
        self._reader = reader
        self.storage = storage


class _Record(dict):
    """Stand-in for dict-like config objects (yacs CfgNode, argparse Namespace)."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.update({k: v for k, v in state.items() if not str(k).startswith("__")})


class _NumpyDType:
    """Stand-in for ``numpy.dtype`` inside a pickle: only plain numeric kinds."""

    _OK = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}

    def __init__(self, name, *args):
        if name not in self._OK:
            raise CheckpointError(f"refusing numpy dtype {name!r} in the checkpoint")
        self.name = name

    def __setstate__(self, state):  # byte order and flags: little-endian assumed below
        pass


def _numpy_scalar(dtype, data=b""):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise CheckpointError("malformed numpy scalar in the checkpoint")
    arr = np.frombuffer(data, dtype=np.dtype(dtype.name).newbyteorder("<"))
    if arr.size != 1:
        raise CheckpointError("malformed numpy scalar in the checkpoint")
    return arr[0].item()


class _OrderedDict(dict):
    """Stand-in for ``collections.OrderedDict``; drops the ``_metadata`` attribute
    that ``state_dict()`` attaches (module versions, not weights)."""

    def __setstate__(self, state):
        pass


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("yacs.config", "CfgNode"): _Record,
    ("argparse", "Namespace"): _Record,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _NumpyDType,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
}
_SAFE_GLOBALS.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, reader: "_ArchiveReader"):
        super().__init__(io.BytesIO(data))
        self._reader = reader

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self._reader.path}: refusing to load global '{module}.{name}' named by the pickle "
                "(only tensors, dicts and plain configs are read; nothing a file names is imported or run)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._reader.path}: unsupported persistent id {str(pid)[:80]!r}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(kind, _StorageType) or not isinstance(numel, int) or not isinstance(key, str):
            raise CheckpointError(f"{self._reader.path}: malformed storage record {str(pid)[:80]!r}")
        if not 0 <= numel <= _MAX_ELEMENTS:
            raise CheckpointError(f"{self._reader.path}: storage '{key}' claims {numel} elements")
        return _StorageRef(self._reader, _Storage(kind.name, key, numel))


class _ArchiveReader:
    def __init__(self, path: str, zf: zipfile.ZipFile, prefix: str):
        self.path = path
        self._zf = zf
        self._prefix = prefix
        self._cache: dict[str, np.ndarray] = {}
        big = prefix + "byteorder" in zf.namelist() and self.read(prefix + "byteorder", 16).strip() == b"big"
        self._byteorder = ">" if big else "<"

    def read(self, name: str, limit: int) -> bytes:
        """Up to ``limit`` bytes of a member; never more, whatever its header claims."""
        try:
            with self._zf.open(name) as f:
                return f.read(limit)
        except KeyError:
            raise CheckpointError(f"{self.path}: '{name}' is missing from the archive") from None
        except _ZIP_ERRORS as e:
            raise CheckpointError(f"{self.path}: cannot read '{name}': {e}") from None

    def storage_array(self, st: _Storage) -> np.ndarray:
        if st.key in self._cache:
            return self._cache[st.key]
        name = f"{self._prefix}data/{st.key}"
        dtype = _STORAGE_DTYPES[st.kind].newbyteorder(self._byteorder)
        need = st.numel * dtype.itemsize
        raw = self.read(name, need)
        if len(raw) < need:
            raise CheckpointError(f"{self.path}: storage '{st.key}' holds {len(raw)} bytes, its header needs {need}")
        arr = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("<"), copy=False)
        self._cache[st.key] = arr
        return arr


def _check_opcodes(data: bytes, path: str) -> None:
    """Walk the opcodes without running them and refuse what could make the
    unpickler allocate without bound: memo slots far past the pickle's size
    (the C unpickler grows its memo table to the index it is given)."""
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not (isinstance(arg, int) and 0 <= arg <= len(data)):
                raise CheckpointError(f"{path}: pickle memo index {arg} at byte {pos} is out of range")
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError) as e:
        raise CheckpointError(f"{path}: damaged pickle: {e}") from None


def load_pth(path: str) -> Any:
    """Unpickle a ``torch.save`` zip checkpoint into dicts, lists and :class:`LazyTensor`.

    Raises :class:`CheckpointError` naming the problem for anything else.
    """
    path = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except _ZIP_ERRORS as e:
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
            raise CheckpointError(
                f"{path}: a legacy (pre-zip) torch checkpoint; re-save it with a torch >= 1.6 "
                "or convert it on a machine that has torch"
            ) from None
        raise CheckpointError(f"{path}: not a torch checkpoint (not a zip archive: {e})") from None
    pkl = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pkl:
        raise CheckpointError(f"{path}: zip archive without a data.pkl; not a torch checkpoint")
    name = min(pkl, key=len)
    reader = _ArchiveReader(path, zf, name[: -len("data.pkl")])
    data = reader.read(name, _MAX_PICKLE_BYTES + 1)
    if len(data) > _MAX_PICKLE_BYTES:
        raise CheckpointError(f"{path}: {name} is larger than {_MAX_PICKLE_BYTES >> 20} MiB; not a model checkpoint")
    _check_opcodes(data, path)
    try:
        return _RestrictedUnpickler(data, reader).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, KeyError, IndexError,
            RecursionError, OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: damaged or unsupported pickle in {name}: {type(e).__name__}: {e}") from None
