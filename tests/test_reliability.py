"""Hostile and damaged files, interrupted writes, threads and memory."""

import json
import os
import struct
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

import vmamba_rt
from vmamba_rt import ConversionError, VMambaError

from conftest import GOLDEN
from torchfmt import write_pth


def _call_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle that calls module.name(arg) when loaded by a plain unpickler."""
    a = arg.encode()
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(a)) + a + b"\x85R."


def _stack_global_pickle(module: str, name: str) -> bytes:
    """Protocol 4 STACK_GLOBAL form of the same."""
    m, n = module.encode(), name.encode()
    return (b"\x80\x04\x8c" + bytes([len(m)]) + m + b"\x8c" + bytes([len(n)]) + n + b"\x93"
            + b"\x8c\x04true\x85R.")


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
                                         ("posix", "system"), ("torch", "load"), ("numpy", "load")])
def test_hostile_globals_are_refused_by_name_and_never_run(tmp_path, module, name):
    marker = tmp_path / "ran"
    for i, pkl in enumerate([_call_pickle(module, name, f"touch {marker}"), _stack_global_pickle(module, name)]):
        src = tmp_path / f"evil{i}.pth"
        write_pth(src, None, raw_pickle=pkl)
        with pytest.raises(ConversionError, match=f"refusing to load global '{module}.{name}'"):
            vmamba_rt.convert(src, tmp_path / "o.safetensors")
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


def _golden_bytes(case="v2_s1_small"):
    return (GOLDEN / f"{case}.pth").read_bytes()


@pytest.mark.parametrize("cut", [10, 200, 5_000, 100_000, -5_000, -100])
def test_truncated_checkpoints_give_clear_errors(tmp_path, cut):
    src = tmp_path / "cut.pth"
    src.write_bytes(_golden_bytes()[:cut])
    with pytest.raises(ConversionError, match="cut.pth"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_corrupted_pickles_give_clear_errors(tmp_path):
    z = zipfile.ZipFile(GOLDEN / "v2_s1_small.pth")
    pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
    good = z.read(pkl_name)
    rng = np.random.default_rng(0)
    bad_cases = [good[: len(good) // 2], good[:-1], b"\x80\x02", b"garbage", b"\x80\x02}r\xff\xff\xff\x7f."]
    for _ in range(20):  # random byte flips
        b = bytearray(good)
        for i in rng.integers(0, len(b), 5):
            b[i] = rng.integers(0, 256)
        bad_cases.append(bytes(b))
    for i, pkl in enumerate(bad_cases):
        src = tmp_path / f"bad{i}.pth"
        with zipfile.ZipFile(GOLDEN / "v2_s1_small.pth") as zin, zipfile.ZipFile(src, "w") as zout:
            for n in zin.namelist():
                zout.writestr(n, pkl if n == pkl_name else zin.read(n))
        try:
            vmamba_rt.convert(src, tmp_path / "o.safetensors")
        except ConversionError as e:
            assert f"bad{i}.pth" in str(e)
        # A flip may land in a tensor value or a name that is then reported missing;
        # what must never happen is any other exception, a crash or a hang.


def test_huge_memo_index_is_refused_before_allocating(tmp_path):
    pkl = b"\x80\x02}r\xff\xff\xff\x7f."  # LONG_BINPUT 2**31 - 1: the C unpickler would grow its memo to 16 GiB
    src = tmp_path / "memo.pth"
    write_pth(src, None, raw_pickle=pkl)
    with pytest.raises(ConversionError, match="memo index 2147483647"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")


def test_absurd_tensor_records_are_refused(tmp_path):
    from vmamba_rt.checkpoint import LazyTensor, load_pth

    src = tmp_path / "t.pth"
    write_pth(src, {"w": np.zeros((2, 3), np.float32)})
    t = load_pth(src)["w"]
    for shape, stride, what in [((1 << 40,), (0,), "claims"), ((2, 3), (4, 1), "runs past"), ((2, -3), (3, 1), "negative")]:
        bad = LazyTensor(t._reader, t.storage, 0, shape, stride)
        with pytest.raises(vmamba_rt.CheckpointError, match=what):
            bad.numpy()


def _safetensors_header(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("name,blob", [
    ("length_past_end", struct.pack("<Q", 1 << 40) + b"{}"),
    ("not_json", struct.pack("<Q", 5) + b"{nope"),
    ("offsets_out_of_range", _safetensors_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)),
    ("overlapping", _safetensors_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)),
    ("absurd_shape", _safetensors_header({"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 8]}}, b"\0" * 8)),
    ("empty", b""),
])
def test_damaged_safetensors_give_clear_errors(tmp_path, name, blob):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(blob)
    with pytest.raises(VMambaError, match=f"{name}.safetensors.*not a valid safetensors file"):
        vmamba_rt.load(path)


def test_wrong_dtype_in_safetensors_is_named(tmp_path, converted):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    src = converted("v2_s1_small")
    sd = load_file(src)
    with safe_open(src, "numpy") as f:
        meta = f.metadata()
    sd["classifier.head.bias"] = sd["classifier.head.bias"].astype(np.int32)
    save_file(sd, tmp_path / "i.safetensors", metadata=meta)
    with pytest.raises(VMambaError, match="'classifier.head.bias' has dtype I32"):
        vmamba_rt.load(tmp_path / "i.safetensors")


def test_interrupted_conversion_leaves_no_output(tmp_path):
    """The process dies mid-write (SIGKILL): the destination is absent, not partial."""
    dst = tmp_path / "out.safetensors"
    code = f"""
import os, signal, safetensors.numpy as sn, vmamba_rt
real = sn.save_file
def dying(tensors, path, metadata=None):
    real(tensors, path, metadata=metadata)
    with open(path, "r+b") as f:
        f.truncate(1000)            # half-written ...
    os.kill(os.getpid(), signal.SIGKILL)   # ... and killed
sn.save_file = dying
vmamba_rt.convert({str(GOLDEN / 'v2_s1_small.pth')!r}, {str(dst)!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert not dst.exists()
    assert all(not n.endswith(".safetensors") for n in os.listdir(tmp_path))


def test_keyboard_interrupt_during_conversion_cleans_up(tmp_path, monkeypatch):
    from vmamba_rt import _native

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(_native, "check_weights", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vmamba_rt.convert(GOLDEN / "v2_s1_small.pth", tmp_path / "o.safetensors")
    assert os.listdir(tmp_path) == []


def test_nan_and_inf_propagate_only_to_their_image(converted):
    model = vmamba_rt.load(converted("v0_small"))
    x = np.load(GOLDEN / "v0_small.input.npy").copy()
    clean = model(x)
    x[1, 0, 5, 5] = np.nan
    out = model(x)
    assert np.array_equal(out[0], clean[0]) and np.isnan(out[1]).all()
    x[1, 0, 5, 5] = np.inf
    assert not np.isfinite(model(x)[1]).all()


def test_one_model_from_many_threads_matches_serial_results(converted):
    model = vmamba_rt.load(converted("v2_s1_small"))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 3, 3, 56 + 8 * i, 64), dtype=np.float32) for i in range(8)]
    serial = [model(x) for x in inputs]
    results = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            for _ in range(3):
                results[i] = model(inputs[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for got, want in zip(results, serial):
        assert np.array_equal(got, want)


def test_inference_releases_the_gil():
    model = vmamba_rt.Model.random("vmamba-tiny-s1l8", num_threads=1)
    x = np.zeros((1, 3, 224, 224), np.float32)
    done = threading.Event()
    t = threading.Thread(target=lambda: (model(x), done.set()))
    ticks = 0
    t.start()
    while not done.is_set():  # this loop can only run while the forward pass holds no GIL
        ticks += 1
        time.sleep(0.001)
    t.join()
    assert ticks > 10


def test_loading_from_many_threads(converted):
    path = converted("v2_backbone")
    models, errors = [], []

    def work():
        try:
            models.append(vmamba_rt.load(path))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(models) == 6
    x = np.load(GOLDEN / "v2_backbone.input.npy")
    first = models[0].features(x)
    for m in models[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(m.features(x), first))


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_loaded_model_holds_its_weights_once(tmp_path):
    """A 90 MB model: once loaded it holds one copy of its weights (about the file's
    size, mapped or read: the file's bytes are let go), and half that with bf16
    linear weights (they are 97% of the parameters). The file never is in memory
    besides that copy, not even while loading: each tensor is read when the model
    asks for it (mapped: copied, and its pages let go), and bf16 weights are
    rounded one by one as they are read."""
    shapes = vmamba_rt._native.parameter_shapes(vmamba_rt._native.Model.preset_json("vanilla-vmamba-tiny"))
    rng = np.random.default_rng(0)
    sd = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in shapes}
    src = tmp_path / "big.pth"
    write_pth(src, sd)
    dst = vmamba_rt.convert(src, tmp_path / "big.safetensors")
    size = os.path.getsize(dst)
    grew, peak = {}, {}
    for mmap, dtype in [(False, "float32"), (True, "float32"), (False, "bfloat16"), (True, "bfloat16")]:
        r = _child(f"""
import json, vmamba_rt
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
def peak():  # this process's own high-water mark (ru_maxrss carries the parent's across exec)
    return next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith('VmHWM'))
before, peak_before = rss(), peak()
m = vmamba_rt.load({str(dst)!r}, mmap={mmap}, dtype={dtype!r})
print(json.dumps({{"grew": rss() - before, "peak": peak() - peak_before}}))
""")
        grew[mmap, dtype], peak[mmap, dtype] = r["grew"], r["peak"]
    assert size > 80e6
    assert 0.9 * size < grew[False, "float32"] < 1.3 * size, grew
    assert 0.9 * size < grew[True, "float32"] < 1.3 * size, grew
    assert 0.4 * size < grew[False, "bfloat16"] < 0.7 * size, grew
    # Whole-file reads, and mapped loads that kept the pages they touched, peaked
    # at twice the size (the file's bytes and the model's copy). Mapped, the
    # pages of the tensor being copied count too (the largest is 10% of the file).
    assert peak[False, "float32"] < 1.3 * size, peak
    assert peak[True, "float32"] < 1.3 * size, peak
    assert peak[False, "bfloat16"] < 0.8 * size, peak
    assert peak[True, "bfloat16"] < 0.9 * size, peak


def test_a_thousand_passes_do_not_grow_peak_memory():
    r = _child("""
import json, resource, numpy as np, vmamba_rt
m = vmamba_rt.load()
x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
for _ in range(50):
    m(x)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(1000):
    m(x)
print(json.dumps({"base": base, "after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")
    assert r["after"] < 1.05 * r["base"], r
