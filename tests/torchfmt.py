"""Write small ``torch.save``-style zip checkpoints from numpy arrays, for tests.

The pickle is emitted opcode by opcode, so tests can build exactly the files
they need (other containers, dtypes, hostile globals) without torch.
"""

from __future__ import annotations

import struct
import zipfile

import numpy as np

_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage"}


class BF16:
    """Marks a float32 array to be stored as bfloat16 (truncated)."""

    def __init__(self, arr):
        self.arr = np.ascontiguousarray(arr, dtype=np.float32)


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


class _Writer:
    def __init__(self):
        self.storages: list[bytes] = []

    def tensor(self, arr) -> bytes:
        if isinstance(arr, BF16):
            kind, raw = "BFloat16Storage", (arr.arr.view(np.uint32) >> 16).astype("<u2").tobytes()
            shape = arr.arr.shape
        else:
            arr = np.ascontiguousarray(arr)
            kind, raw, shape = _STORAGE[arr.dtype], arr.astype(arr.dtype.newbyteorder("<")).tobytes(), arr.shape
        key = str(len(self.storages))
        self.storages.append(raw)
        numel = int(np.prod(shape))
        strides, acc = [], 1
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= n
        out = _global("torch._utils", "_rebuild_tensor_v2") + b"("
        out += b"(" + _str("storage") + _global("torch", kind) + _str(key) + _str("cpu") + _int(numel) + b"tQ"
        out += _int(0) + b"(" + b"".join(_int(n) for n in shape) + b"t"
        out += b"(" + b"".join(_int(s) for s in strides) + b"t"
        out += b"\x89" + _global("collections", "OrderedDict") + b")R" + b"tR"
        return out

    def value(self, v) -> bytes:
        if isinstance(v, (np.ndarray, BF16)):
            return self.tensor(v)
        if isinstance(v, dict):
            return b"}(" + b"".join(self.value(k) + self.value(x) for k, x in v.items()) + b"u"
        if isinstance(v, (list, tuple)):
            return b"](" + b"".join(self.value(x) for x in v) + b"e"
        if isinstance(v, bool):
            return b"\x88" if v else b"\x89"
        if isinstance(v, int):
            return _int(v)
        if isinstance(v, float):
            return b"G" + struct.pack(">d", v)
        if isinstance(v, str):
            return _str(v)
        if v is None:
            return b"N"
        raise TypeError(type(v))


def write_pth(path, obj, *, raw_pickle: bytes | None = None, storages: list[bytes] = (),
              compress: bool = False) -> None:
    """Save ``obj`` (dicts, lists, numbers, strings, numpy arrays) like ``torch.save``;
    or, with ``raw_pickle``, an archive whose data.pkl is exactly those bytes (and
    whose storages are ``storages``). ``compress`` deflates every member."""
    w = _Writer()
    w.storages = list(storages)
    pkl = raw_pickle if raw_pickle is not None else b"\x80\x02" + w.value(obj) + b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for i, raw in enumerate(w.storages):
            z.writestr(f"archive/data/{i}", raw)
        z.writestr("archive/version", "3\n")
