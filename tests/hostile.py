"""Hostile files, made in code: each function writes one kind of attack.

Used by ``test_hostile.py`` and by ``fuzz/hostile_report.py``, which measures
the time and peak memory each one costs the reader.
"""

from __future__ import annotations

import struct
import zipfile

from torchfmt import _global, _int, _str, write_pth

PROTO = b"\x80\x02"


def _ints(values) -> bytes:
    return b"".join(_int(v) for v in values)


def contiguous(shape) -> list[int]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.insert(0, acc)
        acc *= n
    return strides


def storage_ref(key: str, numel: int, kind: str = "FloatStorage") -> bytes:
    """The persistent id of a storage, loaded into a storage reference."""
    return b"(" + _str("storage") + _global("torch", kind) + _str(key) + _str("cpu") + _int(numel) + b"tQ"


def tensor_record(key: str, numel: int, shape, stride=None, kind: str = "FloatStorage") -> bytes:
    """A ``_rebuild_tensor_v2`` record as torch writes it (storage, offset, size, stride, ...)."""
    stride = contiguous(shape) if stride is None else stride
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage_ref(key, numel, kind) + _int(0)
            + b"(" + _ints(shape) + b"t(" + _ints(stride) + b"t\x89"
            + _global("collections", "OrderedDict") + b")RtR")


def dict_of(items: dict[str, bytes]) -> bytes:
    return b"}(" + b"".join(_str(k) + v for k, v in items.items()) + b"u"


def build_on(target: bytes, state: bytes, slotstate: bool = False) -> bytes:
    """``target`` with BUILD(state) applied, then popped; the result is an empty dict."""
    if slotstate:
        state = b"N" + state + b"\x86"
    return PROTO + target + state + b"b0}."


# What a pickle can reach: every allowed global, and the objects the reader makes.
BUILD_TARGETS = {
    "storage type": _global("torch", "FloatStorage"),
    "tensor rebuild function": _global("torch._utils", "_rebuild_tensor_v2"),
    "parameter rebuild function": _global("torch._utils", "_rebuild_parameter"),
    "config class": _global("yacs.config", "CfgNode"),
    "namespace class": _global("argparse", "Namespace"),
    "OrderedDict": _global("collections", "OrderedDict"),
    "numpy dtype": _global("numpy", "dtype"),
    "numpy scalar": _global("numpy.core.multiarray", "scalar"),
    "set": _global("builtins", "set"),
    "tensor record": tensor_record("0", 4, [4]),
    "storage reference": storage_ref("0", 4),
}
POISON_STATE = dict_of({"name": _str("HalfStorage"), "numel": _int(2**31 - 1), "shape": b"(K\x01t",
                        "__defaults__": b"(K\x01t", "__setstate__": b"N", "update": b"N"})


def write_build_attack(path, target: str, slotstate: bool = False) -> None:
    write_pth(path, None, raw_pickle=build_on(BUILD_TARGETS[target], POISON_STATE, slotstate),
              storages=[b"\0" * 16])


def write_nested_key(path, depth: int) -> None:
    """A dict whose key is a tuple nested ``depth`` deep: one byte a level."""
    write_pth(path, None, raw_pickle=PROTO + b"}N" + b"\x85" * depth + b"Ns.")


def write_memo_bomb(path, trailing: int = 163_000) -> None:
    """A memo index just under the pickle's length, which trailing junk after STOP makes long."""
    idx = trailing
    write_pth(path, None, raw_pickle=PROTO + b"}r" + struct.pack("<I", idx) + b"." + b"\0" * trailing,
              compress=True)


def write_opcode_flood(path, mib: int) -> None:
    """A small (deflated) file whose pickle is ``mib`` MiB of push/pop pairs."""
    write_pth(path, None, raw_pickle=PROTO + b"N0" * (mib << 19) + b"}.", compress=True)


def write_storage_bomb(path, mib: int) -> None:
    """A tensor whose storage member inflates from a few KB to ``mib`` MiB of zeros."""
    numel = (mib << 20) // 4
    pkl = PROTO + dict_of({"model": dict_of({"patch_embed.0.weight": tensor_record("0", numel, [numel])})}) + b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            zeros = b"\0" * (16 << 20)
            for _ in range(max(1, mib // 16)):
                f.write(zeros)


def write_shared_storage_views(path, views: int, numel: int) -> None:
    """``views`` tensors over one stored storage of ``numel`` floats (a small file, a large output)."""
    sd = {f"t{i}": tensor_record("0", numel, [numel]) for i in range(views)}
    write_pth(path, None, raw_pickle=PROTO + dict_of(sd) + b".", storages=[b"\0" * (4 * numel)])


def write_many_keys(path, stages: int, blocks: int) -> None:
    """A bare state dict of ``stages`` x ``blocks`` entries that all share one tiny storage."""
    rec = tensor_record("0", 1, [1])
    sd = {"patch_embed.0.weight": tensor_record("0", 1, [1, 1, 1, 1])}
    sd.update({f"layers.{i}.blocks.{j}.norm.weight": rec for i in range(stages) for j in range(blocks)})
    write_pth(path, None, raw_pickle=PROTO + dict_of(sd) + b".", storages=[b"\0" * 4])


def write_huge_png(path, width: int = 100_000, height: int = 100_000) -> None:
    """A tiny PNG whose header declares ``width`` x ``height`` RGB pixels."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                + chunk(b"IEND", b""))


# Config files (``convert --config``) -------------------------------------------------------

def write_hostile_configs(folder) -> dict[str, tuple[str, str]]:
    """Hostile yaml and JSON configs in ``folder``: name -> (path, what the refusal says)."""
    import os

    def put(name: str, text: str) -> str:
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    cases = {
        "deep.yaml": ("a: " + "[" * 50_000 + "]" * 50_000, "nested more than 32 levels"),
        "deep.json": ("[" * 50_000 + "]" * 50_000, "nested more than 32 levels"),
        "deep_block.yaml": ("".join(" " * i + f"k{i}:\n" for i in range(1000)), "nested more than 32 levels"),
        "long_int.yaml": ("MODEL:\n  VSSM:\n    EMBED_DIM: " + "9" * 5000 + "\n", "not a number a config can hold"),
        "long_int.json": ('{"dims": ' + "9" * 5000 + "}", "a number of 5000 characters"),
        "base60.yaml": ("MODEL:\n  NUM_CLASSES: " + ":".join(["59"] * 300_000) + "\n", "not a number a config can hold"),
        "nul_base.yaml": ('_BASE_: "a\\0b.yaml"\n', "cannot hold a NUL"),
        "int_base.yaml": ("_BASE_: 7\n", "_BASE_ must be a file name or a list of them"),
        "laughs.yaml": ("a0: &a0 [x, x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 40))
                        + "dims: 8\n", "anchors (&name) are not read"),
        "alias.yaml": ("x: [1]\ny: *x\n", "aliases (*name) are not read"),
        "python_tag.yaml": ("a: !!python/object/apply:os.system [echo pwned]\n", "could not determine a constructor"),
        "set_tag.yaml": ("a: !!set {x: null}\n", "could not determine a constructor"),
        "self_base.yaml": ("_BASE_: self_base.yaml\n", "includes itself"),
        "too_long.yaml": ("# " + "x" * (1 << 20) + "\nMODEL: {}\n", "over the limit of 1048576"),
        "many_values.yaml": ("a: [" + "1, " * 100_000 + "1]\n", "more than 20000 values"),
        "long_string.json": ('{"dims": "' + "x" * 100_000 + '"}', "longer than 4096 characters"),
        "typo.yaml": ("MODEL:\n  VSSM:\n    DEPTHS: [1]\n    SSM_RATIOO: 2.0\n", "MODEL.VSSM.'SSM_RATIOO' is not an official key"),
        "typo.json": ('{"dims": 8, "depths": [1], "ssm_act_layerr": "relu"}', "'ssm_act_layerr' is not a runtime config field"),
        "not_utf8.yaml": ("", "not UTF-8"),
    }
    out = {name: (put(name, text), why) for name, (text, why) in cases.items()}
    with open(out["not_utf8.yaml"][0], "wb") as f:
        f.write(b"MODEL: \xff\xfe\n")
    # Ten bases a level, eight levels: 10^8 reads unless the files are counted.
    for i in range(8):
        put(f"fan{i}.yaml", "_BASE_: [" + ", ".join([f"fan{i + 1}.yaml"] * 10) + "]\n")
    put("fan8.yaml", "MODEL: {}\n")
    out["fan0.yaml"] = (os.path.join(folder, "fan0.yaml"), "more than 16 files")
    fifo = os.path.join(folder, "fifo.yaml")
    os.mkfifo(fifo)
    out["fifo.yaml"] = (fifo, "not a regular file")
    out["fifo_base.yaml"] = (put("fifo_base.yaml", "_BASE_: fifo.yaml\n"), "not a regular file")
    return out


# Metadata ---------------------------------------------------------------------------------

def write_amplifying_metadata(src: str, dst: str, entry: str, kind: str, size: int = 90 << 20) -> None:
    """``src``'s weights with a metadata ``entry`` of about ``size`` bytes that
    would cost many times that to parse: ``mean`` as one long string or a long
    list of numbers, or labels as millions of empty lists."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(src, "numpy") as f:
        meta = f.metadata()
    if kind == "mean_string":
        value = json.dumps({"mean": "1" * size})
    elif kind == "mean_list":
        value = '{"mean": [' + "1," * (size // 2) + "1]}"
    elif kind == "label_lists":
        value = "[" + "[]," * (size // 3) + "[]]"
    else:
        raise ValueError(kind)
    meta[entry] = value
    save_file(load_file(src), dst, metadata=meta)
