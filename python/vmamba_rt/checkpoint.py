"""Read ``torch.save`` checkpoints (zip format) without torch and without running them.

A pickle names Python globals and asks the loader to call them. This reader
never imports or calls what a file names: every global is looked up in a small
table of stand-ins written here (``_SAFE_GLOBALS``), and anything else is refused
with an error that names it. Tensors come back as :class:`LazyTensor` records
that read their bytes from the archive only when asked, so optimizer state in a
training checkpoint costs nothing.

A file may also be built to exhaust the reader rather than to run code. So:

- the pickle's opcodes are walked first, in native code and linear time
  (``_native.scan_pickle``): nesting depth, opcode count and memo indices are
  bounded, and nothing may follow STOP;
- every object the pickle can reach is made for this load alone (functions are
  wrapped, classes are fresh subclasses), and BUILD on anything that is not a
  config record is refused: a file cannot change what a later load does;
- the archive's entry count, the pickle's size and the bytes read from storages
  (at most a few times the file's own size, whatever the headers claim) are
  capped; tensor bytes are read one span at a time and never cached.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import stat
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

from . import _native
from .errors import CheckpointError, VMambaError

# torch storage class -> numpy dtype of the stored elements
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
               RuntimeError, zlib.error, struct.error)

# Limits. Real checkpoints sit far below each: a VMamba-B training checkpoint
# (model, EMA, optimizer state) has a data.pkl of well under 1 MiB, a few
# hundred thousand opcodes, nesting under 20 levels and a few thousand members.
MAX_PICKLE_BYTES = 32 << 20
MAX_PICKLE_OPS = 4_000_000
MAX_NESTING = 100
MAX_ARCHIVE_ENTRIES = 200_000
MAX_ELEMENTS = 1 << 31  # per tensor; no VMamba weight comes near it
MAX_DIMS = 8
# Bytes decompressed from storages in one load: this many times the file's size, plus a margin.
READ_BUDGET_RATIO = 4
READ_BUDGET_MARGIN = 64 << 20


def _refuse_state(obj, state):
    what = f"global '{obj.name}'" if isinstance(obj, _Global) else f"a {type(obj).__name__.lstrip('_')}"
    raise CheckpointError(f"the pickle sets state (BUILD) on {what}, which takes none")


class _Global:
    """What ``find_class`` returns for an allowed function or storage type: a
    fresh, attribute-less wrapper per lookup, so nothing shared can be changed."""

    __slots__ = ("name", "_fn")
    __setstate__ = _refuse_state

    def __init__(self, name: str, fn):
        self.name = name
        self._fn = fn

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            raise CheckpointError(f"the pickle calls '{self.name}', which is not callable here")
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<global {self.name}>"


class _Storage:
    __slots__ = ("kind", "key", "numel")
    __setstate__ = _refuse_state

    def __init__(self, kind: str, key: str, numel: int):
        self.kind, self.key, self.numel = kind, key, numel


class _StorageRef:
    __slots__ = ("reader", "storage")
    __setstate__ = _refuse_state

    def __init__(self, reader: "_ArchiveReader", storage: _Storage):
        self.reader, self.storage = reader, storage


class LazyTensor:
    """A tensor in a checkpoint: its dtype, shape and where its bytes live."""

    __slots__ = ("_reader", "storage", "offset", "shape", "stride")
    __setstate__ = _refuse_state

    def __init__(self, reader: "_ArchiveReader", storage: _Storage, offset: int, size: tuple, stride: tuple):
        self._reader = reader
        self.storage = storage
        self.offset = offset
        self.shape = size
        self.stride = stride

    @property
    def dtype(self) -> str:
        return self.storage.kind.replace("Storage", "").lower()

    def _check(self) -> None:
        where = f"tensor in storage '{self.storage.key}'"
        if not all(type(v) is int for v in (self.offset, *self.shape, *self.stride)) or len(self.shape) != len(self.stride):
            raise CheckpointError(f"{where} has a malformed shape or stride")
        if len(self.shape) > MAX_DIMS:
            raise CheckpointError(f"{where} has {len(self.shape)} dimensions (at most {MAX_DIMS} are read)")
        if self.offset < 0 or any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride):
            raise CheckpointError(f"{where} has a negative offset, size or stride")
        count = math.prod(self.shape)
        if count > max(self.storage.numel, 1):
            raise CheckpointError(
                f"tensor of shape {self.shape} claims {count} elements, but its storage "
                f"'{self.storage.key}' holds {self.storage.numel}"
            )

    def numpy(self) -> np.ndarray:
        """The tensor as a contiguous array (bfloat16 widened to float32)."""
        self._check()
        dtype = _STORAGE_DTYPES[self.storage.kind]
        if 0 in self.shape:
            arr = np.zeros(self.shape, dtype=dtype)
        else:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
            if last >= self.storage.numel:
                raise CheckpointError(
                    f"tensor of shape {self.shape} at offset {self.offset} runs past its storage "
                    f"'{self.storage.key}' of {self.storage.numel} elements"
                )
            # Only the span this tensor covers is read.
            base = self._reader.read_span(self.storage, self.offset, last + 1 - self.offset)
            arr = np.lib.stride_tricks.as_strided(
                base, shape=self.shape, strides=[s * base.itemsize for s in self.stride], writeable=False
            )
            arr = np.ascontiguousarray(arr)
        if self.storage.kind == "BFloat16Storage":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr

    def __repr__(self) -> str:
        return f"LazyTensor({self.dtype}, shape={self.shape})"


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _StorageRef):
        raise CheckpointError("a tensor record without a storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or type(storage_offset) is not int:
        raise CheckpointError("a tensor record with a malformed size, stride or offset")
    return LazyTensor(storage.reader, storage.storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    return data


class _Record(dict):
    """Stand-in for dict-like config objects (yacs CfgNode, argparse Namespace).
    The one kind of object that takes state: its attributes become entries."""

    __slots__ = ()

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
            state = state[1]  # (None, slotstate) form
        if not isinstance(state, dict):
            raise CheckpointError(f"a config record got state of type {type(state).__name__}")
        self.update({k: v for k, v in state.items() if not str(k).startswith("__")})


class _NumpyDType:
    """Stand-in for ``numpy.dtype`` inside a pickle: only plain numeric kinds."""

    __slots__ = ("name",)
    _OK = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"})

    def __init__(self, name, *args):
        if type(name) is not str or name not in self._OK:
            raise CheckpointError(f"refusing numpy dtype {str(name)[:40]!r} in the checkpoint")
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

    __slots__ = ()

    def __setstate__(self, state):
        pass


# (module, name) -> a function to call, a class (instantiated by NEWOBJ, so a
# fresh subclass is made per load), or None for a storage type (not callable).
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
_SAFE_GLOBALS.update({("torch", name): None for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, reader: "_ArchiveReader"):
        super().__init__(io.BytesIO(data))
        self._reader = reader
        self._classes: dict[tuple[str, str], type] = {}  # fresh per load

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key not in _SAFE_GLOBALS:
            raise CheckpointError(
                f"{self._reader.path}: refusing to load global '{module}.{name}' named by the pickle "
                "(only tensors, dicts and plain configs are read; nothing a file names is imported or run)"
            )
        target = _SAFE_GLOBALS[key]
        if isinstance(target, type) and issubclass(target, _Record):
            if key not in self._classes:
                self._classes[key] = type(target.__name__, (target,), {"__slots__": ()})
            return self._classes[key]
        return _Global(f"{module}.{name}", target)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._reader.path}: unsupported persistent id {_short(pid)}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not (isinstance(kind, _Global) and kind.name.startswith("torch.")
                and kind.name[len("torch."):] in _STORAGE_DTYPES):
            raise CheckpointError(f"{self._reader.path}: storage record of unknown type {_short(kind)}")
        if type(numel) is not int or type(key) is not str or len(key) > 256:
            raise CheckpointError(f"{self._reader.path}: malformed storage record {_short(pid)}")
        if not 0 <= numel <= MAX_ELEMENTS:
            raise CheckpointError(f"{self._reader.path}: storage '{key}' claims {numel} elements")
        return _StorageRef(self._reader, _Storage(kind.name[len("torch."):], key, numel))


def _short(obj, limit: int = 80) -> str:
    """A bounded repr for error messages (values from a file can be huge)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlevel = 3
    return r.repr(obj)[: 2 * limit]


class _ArchiveReader:
    def __init__(self, path: str, zf: zipfile.ZipFile, prefix: str, budget: int):
        self.path = path
        self._zf = zf
        self._prefix = prefix
        self._budget = budget  # bytes storages may still decompress
        names = set(zf.namelist())
        big = prefix + "byteorder" in names and self.read(prefix + "byteorder", 16).strip() == b"big"
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

    def read_span(self, st: _Storage, start: int, count: int) -> np.ndarray:
        """Elements ``start .. start + count`` of a storage, read from its member."""
        name = f"{self._prefix}data/{st.key}"
        dtype = _STORAGE_DTYPES[st.kind].newbyteorder(self._byteorder)
        first, need = start * dtype.itemsize, count * dtype.itemsize
        try:
            info = self._zf.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: '{name}' is missing from the archive") from None
        # Skipping into a compressed member decompresses what is skipped.
        cost = need + (first if info.compress_type != zipfile.ZIP_STORED else 0)
        if cost > self._budget:
            raise CheckpointError(
                f"{self.path}: the tensors ask for more bytes than the file holds (storage '{st.key}' "
                f"would make the total pass {READ_BUDGET_RATIO}x the file's size)"
            )
        self._budget -= cost
        try:
            with self._zf.open(info) as f:
                f.seek(first)
                raw = f.read(need)
        except _ZIP_ERRORS as e:
            raise CheckpointError(f"{self.path}: cannot read '{name}': {e}") from None
        if len(raw) < need:
            raise CheckpointError(
                f"{self.path}: storage '{st.key}' holds {first + len(raw)} bytes, its tensor needs {first + need}"
            )
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("<"), copy=False)


def _zip_entries(f) -> int | None:
    """The entry count from a zip's end-of-central-directory record (None if absent)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - (1 << 16) - 22))
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    entries = struct.unpack("<H", tail[at + 10 : at + 12])[0]
    if entries == 0xFFFF:  # zip64: the count is in the zip64 end record
        z64 = tail.rfind(b"PK\x06\x06", 0, at)
        if z64 >= 0 and z64 + 40 <= len(tail):
            entries = struct.unpack("<Q", tail[z64 + 32 : z64 + 40])[0]
    return entries


def open_regular(path: str, what: str, error: type = CheckpointError):
    """Open a regular file for reading; refuse folders, FIFOs and devices with
    ``error`` first. The open does not block (a FIFO would wait for a writer),
    and the type is checked on what was opened, not on a name that may change."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path}: not a regular file (a folder, FIFO or device); expected {what}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_pth(path: str) -> Any:
    """Unpickle a ``torch.save`` zip checkpoint into dicts, lists and :class:`LazyTensor`.

    Raises :class:`CheckpointError` naming the problem for anything else.
    """
    path = os.fspath(path)
    with open_regular(path, "a .pth checkpoint") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        try:
            entries = _zip_entries(f)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read: {e}") from None
    if entries is not None and entries > MAX_ARCHIVE_ENTRIES:
        raise CheckpointError(f"{path}: zip archive of {entries} entries (at most {MAX_ARCHIVE_ENTRIES} are read)")
    try:
        zf = zipfile.ZipFile(path)  # kept open: tensors read their bytes later
    except _ZIP_ERRORS as e:
        if head[:1] == b"\x80":
            raise CheckpointError(
                f"{path}: a legacy (pre-zip) torch checkpoint; re-save it with a torch >= 1.6 "
                "or convert it on a machine that has torch"
            ) from None
        raise CheckpointError(f"{path}: not a torch checkpoint (not a zip archive: {e})") from None
    return _load_archive(path, zf, size)


def _load_archive(path: str, zf: zipfile.ZipFile, size: int) -> Any:
    pkl = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pkl:
        raise CheckpointError(f"{path}: zip archive without a data.pkl; not a torch checkpoint")
    name = min(pkl, key=len)
    reader = _ArchiveReader(path, zf, name[: -len("data.pkl")], READ_BUDGET_RATIO * size + READ_BUDGET_MARGIN)
    data = reader.read(name, MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{path}: {name} is larger than {MAX_PICKLE_BYTES >> 20} MiB; not a model checkpoint")
    try:
        _native.scan_pickle(data, MAX_NESTING, MAX_PICKLE_OPS)
    except VMambaError as e:
        raise CheckpointError(f"{path}: refusing {name}: {e}") from None
    try:
        return _RestrictedUnpickler(data, reader).load()
    except CheckpointError as e:
        if str(e).startswith(path):
            raise
        raise CheckpointError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, KeyError, IndexError,
            RecursionError, OverflowError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: damaged or unsupported pickle in {name}: {type(e).__name__}: {_short(str(e), 200)}") from None
