"""Hostile and unusual inputs: no crash, hang, poisoning or memory blow-up.

Each class of attack is made in code (``hostile.py``). Where a failure would
kill the process (a segfault, an abort, the OOM killer), the attack runs in a
child process whose exit status, wall time and peak memory are checked.
"""

import json
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import vmamba_rt
from vmamba_rt import ConversionError, VMambaError

import hostile
from conftest import GOLDEN, plain, rel_err
from torchfmt import write_pth

HERE = os.path.dirname(__file__)


def run_child(code: str, *, address_space: int | None = None, timeout: float = 60) -> dict:
    """Run Python ``code`` in a child: its exit status, output, wall time and peak RSS in MB
    (reported by the child itself as it ends, so that other children cannot blur it)."""
    def limit():
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    code = textwrap.dedent(code) + "\nimport resource as _r\nprint('__RSS_KB__', _r.getrusage(_r.RUSAGE_SELF).ru_maxrss)\n"
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=limit, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"rc": "timeout", "out": out, "err": err, "seconds": timeout, "rss_mb": None}
    rss = [line.split()[1] for line in out.splitlines() if line.startswith("__RSS_KB__")]
    return {"rc": proc.returncode, "out": out, "err": err, "seconds": time.monotonic() - start,
            "rss_mb": int(rss[0]) / 1024 if rss else None}


def convert_in_child(src, **limits) -> dict:
    r = run_child(f"""
        import vmamba_rt
        try:
            vmamba_rt.convert({str(src)!r}, {str(src) + '.safetensors'!r})
            print("CONVERTED")
        except vmamba_rt.VMambaError as e:
            print("REFUSED", type(e).__name__, e)
        """, **limits)
    assert r["rc"] == 0, r  # never a signal, a hang or an escaped exception
    assert r["seconds"] < 10, r
    return r


# 1. Shared-state poisoning ------------------------------------------------------------

@pytest.mark.parametrize("slotstate", [False, True])
def test_build_on_reachable_objects_is_refused_and_later_loads_are_unaffected(tmp_path, slotstate):
    before = vmamba_rt.load(vmamba_rt.convert(GOLDEN / "v2_s1_small.pth", tmp_path / "before.safetensors"))
    for target in hostile.BUILD_TARGETS:
        src = tmp_path / f"build_{target.replace(' ', '_')}.pth"
        hostile.write_build_attack(src, target, slotstate)
        with pytest.raises(ConversionError, match=f"{src.name}.*(BUILD|state|damaged)"):
            vmamba_rt.convert(src, tmp_path / "o.safetensors")
    after = vmamba_rt.load(vmamba_rt.convert(GOLDEN / "v2_s1_small.pth", tmp_path / "after.safetensors"))
    x = np.load(GOLDEN / "v2_s1_small.input.npy")
    assert np.array_equal(before(x), after(x))
    assert rel_err(after(x), np.load(GOLDEN / "v2_s1_small.expected.npy")) < 1e-4


def test_stand_ins_are_made_fresh_for_each_load(tmp_path):
    from vmamba_rt.checkpoint import load_pth

    a, b = load_pth(GOLDEN / "v2_s2_small.pth"), load_pth(GOLDEN / "v2_s2_small.pth")
    assert type(a["config"]) is not type(b["config"])  # config classes are per load
    assert a["config"]["MODEL"]["VSSM"]["DEPTHS"] == b["config"]["MODEL"]["VSSM"]["DEPTHS"]


# 2. Stack exhaustion --------------------------------------------------------------------

@pytest.mark.parametrize("depth", [20_000, 200_000])
def test_deeply_nested_keys_are_refused_before_unpickling(tmp_path, depth):
    src = tmp_path / f"nested{depth}.pth"
    hostile.write_nested_key(src, depth)
    r = convert_in_child(src)
    assert "REFUSED CheckpointError" in r["out"] and "nested deeper than 100 levels" in r["out"], r
    cli = subprocess.run([sys.executable, "-m", "vmamba_rt.cli", "convert", str(src)], capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 1 and "nested deeper" in cli.stderr and "Traceback" not in cli.stderr


# 3. Memory bombs ------------------------------------------------------------------------

def test_memo_index_past_the_stored_slots_is_refused(tmp_path):
    src = tmp_path / "memo.pth"
    hostile.write_memo_bomb(src)
    r = convert_in_child(src)
    assert "memo index 163000 is out of range" in r["out"], r
    assert r["rss_mb"] < 500, r


def test_bytes_after_stop_are_refused(tmp_path):
    src = tmp_path / "tail.pth"
    write_pth(src, None, raw_pickle=b"\x80\x02}.junk")
    with pytest.raises(ConversionError, match="4 bytes after the STOP"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")


def read_all_tensors_in_child(src) -> dict:
    """Read every tensor of a checkpoint (what conversion does once the architecture is known)."""
    r = run_child(f"""
        import vmamba_rt
        from vmamba_rt.checkpoint import LazyTensor, load_pth
        try:
            ckpt = load_pth({str(src)!r})
            sd = ckpt.get("model", ckpt)
            arrays = [t.numpy() for t in sd.values() if isinstance(t, LazyTensor)]
            print("READ", sum(a.nbytes for a in arrays))
        except vmamba_rt.VMambaError as e:
            print("REFUSED", type(e).__name__, e)
        """)
    assert r["rc"] == 0 and r["seconds"] < 10, r
    return r


def test_storage_decompression_bomb_is_refused_within_budget(tmp_path):
    src = tmp_path / "inflate.pth"
    hostile.write_storage_bomb(src, mib=512)
    assert os.path.getsize(src) < 2 << 20
    r = read_all_tensors_in_child(src)
    assert "REFUSED CheckpointError" in r["out"] and "more bytes than the file holds" in r["out"], r
    assert r["rss_mb"] < 400, r


def test_many_views_of_one_storage_cannot_multiply_the_output(tmp_path):
    src = tmp_path / "views.pth"
    hostile.write_shared_storage_views(src, views=64, numel=1 << 20)  # 4 MB file, 256 MB of views
    r = read_all_tensors_in_child(src)
    assert "more bytes than the file holds" in r["out"], r
    assert r["rss_mb"] < 400, r
    hostile.write_shared_storage_views(src, views=4, numel=1 << 20)  # within the budget: read
    assert f"READ {4 * 4 << 20}" in read_all_tensors_in_child(src)["out"]


# 4. CPU hangs ---------------------------------------------------------------------------

@pytest.mark.parametrize("mib,why", [(30, "more than 4000000 opcodes"), (64, "larger than 32 MiB")])
def test_opcode_floods_are_refused_fast(tmp_path, mib, why):
    src = tmp_path / f"flood{mib}.pth"
    hostile.write_opcode_flood(src, mib)
    assert os.path.getsize(src) < 1 << 20
    r = convert_in_child(src)
    assert why in r["out"], r


@pytest.mark.parametrize("stages,blocks,why", [(6000, 1, "more than 8 stages"), (1, 6000, "more than 1024 blocks")])
def test_architecture_inference_is_linear_and_bounded(tmp_path, stages, blocks, why):
    src = tmp_path / "keys.pth"
    hostile.write_many_keys(src, stages, blocks)
    start = time.monotonic()
    with pytest.raises(ConversionError, match=why):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")
    assert time.monotonic() - start < 5


def test_fifos_are_refused_not_waited_on(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    os.mkfifo(folder / "stuck.png")
    os.mkfifo(tmp_path / "model.safetensors")
    os.mkfifo(tmp_path / "ckpt.pth")
    r = run_child(f"""
        import vmamba_rt
        for what in [lambda: vmamba_rt.load({str(tmp_path / 'model.safetensors')!r}),
                     lambda: vmamba_rt.convert({str(tmp_path / 'ckpt.pth')!r}, {str(tmp_path / 'o.safetensors')!r}),
                     lambda: vmamba_rt.load().predict({str(folder / 'stuck.png')!r})]:
            try:
                what()
            except vmamba_rt.VMambaError as e:
                print("REFUSED", e)
        """, timeout=30)
    assert r["rc"] == 0 and r["out"].count("not a regular file") == 3, r
    cli = subprocess.run([sys.executable, "-m", "vmamba_rt.cli", "classify", str(folder)], capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 1 and "not a regular file" in cli.stderr


# 5. Aborts: images, preprocessing metadata, inputs too large for memory ----------------------

def test_image_declaring_ten_billion_pixels_is_refused_from_its_header(tmp_path):
    png = tmp_path / "huge.png"
    hostile.write_huge_png(png)
    assert os.path.getsize(png) < 100
    model = vmamba_rt.load()
    with pytest.raises(VMambaError, match="huge.png.*over the limit"):
        model.predict(str(png))
    with pytest.raises(VMambaError, match="over the limit"):
        vmamba_rt._native.preprocess_file(str(png), model.preprocess.to_json())


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    model = vmamba_rt.load()
    model.predict(str(tmp_path / "ok.png"))
    monkeypatch.setenv("VMAMBA_RT_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(VMambaError, match="64x64 pixels is over the limit of 1000"):
        model.predict(str(tmp_path / "ok.png"))


def test_extreme_aspect_ratios_and_empty_images_are_refused(tmp_path):
    from PIL import Image

    Image.new("RGB", (20000, 1)).save(tmp_path / "thin.png")
    model = vmamba_rt.load()
    model.preprocess = vmamba_rt.preprocess.Preprocess(resize="crop", input_size=224)
    r = run_child(f"""
        import vmamba_rt
        from vmamba_rt.preprocess import Preprocess
        m = vmamba_rt.load()
        m.preprocess = Preprocess(resize="crop", input_size=224)
        for args in [{str(tmp_path / 'thin.png')!r}]:
            try:
                m.predict(args)
            except vmamba_rt.VMambaError as e:
                print("REFUSED", e)
        try:
            vmamba_rt._native.preprocess_file({str(tmp_path / 'thin.png')!r}, m.preprocess.to_json())
        except vmamba_rt.VMambaError as e:
            print("REFUSED", e)
        """)
    assert r["rc"] == 0 and r["out"].count("aspect ratio is too extreme") == 2, r
    assert r["rss_mb"] < 600, r
    with pytest.raises(VMambaError, match="no pixels"):
        model.predict(np.zeros((0, 5), np.uint8))


@pytest.mark.parametrize("entry,value,field", [
    ("vmamba_rt.preprocess", '{"input_size": 100000}', "input_size"),
    ("vmamba_rt.preprocess", '{"resize_ratio": 1e300}', "resize_ratio"),
    ("vmamba_rt.preprocess", '{"std": [1, 0, 1]}', "std"),
    ("vmamba_rt.preprocess", "[" * 4000, "not valid"),
    ("vmamba_rt.preprocess", "[" * 100_000, "holds 100000 bytes, over its limit of 4096"),
    ("vmamba_rt.labels", "[" * 5000, "not valid JSON"),
    ("vmamba_rt.labels", "[" * 100_000, "holds 100000 bytes, over its limit of 10304"),
    ("vmamba_rt.labels", '{"a": 1}', "list of names"),
])
def test_bad_metadata_is_refused_naming_file_and_field(tmp_path, entry, value, field):
    src = vmamba_rt.DEFAULT_MODEL if hasattr(vmamba_rt, "DEFAULT_MODEL") else None
    from safetensors import safe_open

    with safe_open(src, "numpy") as f:
        meta = f.metadata()
    meta[entry] = value
    dst = tmp_path / "meta.safetensors"
    save_file(load_file(src), dst, metadata=meta)
    with pytest.raises(VMambaError, match=f"meta.safetensors.*{field}"):
        vmamba_rt.load(dst)
    r = run_child(f"""
        import vmamba_rt
        from vmamba_rt import _native
        try:
            _native.preprocess_file({vmamba_rt.DEFAULT_MODEL!r}, {value!r})
        except vmamba_rt.VMambaError as e:
            print("REFUSED")
        """)
    assert r["rc"] == 0, r


def test_input_too_large_for_memory_raises_memory_error():
    """1x3x6000x6000 under a 3 GB address-space limit: MemoryError, and the process lives on."""
    r = run_child("""
        import numpy as np, vmamba_rt
        m = vmamba_rt.Model.random("vmamba-tiny-s1l8", num_threads=1)
        x = np.zeros((1, 3, 6000, 6000), np.float32)
        try:
            m(x)
        except MemoryError as e:
            print("MemoryError:", e)
        print("alive", m(np.zeros((1, 3, 64, 64), np.float32)).shape)
        """, address_space=3 << 30, timeout=120)
    assert r["rc"] == 0, r
    assert "MemoryError: not enough memory: a forward pass on input [1, 3, 6000, 6000] needs" in r["out"], r
    assert "alive (1, 1000)" in r["out"], r


def test_memory_cap_from_the_environment(monkeypatch):
    model = vmamba_rt.load()
    x = np.zeros((1, 3, 64, 64), np.float32)
    model(x)
    monkeypatch.setenv("VMAMBA_RT_MAX_MEMORY", "64K")  # the NHWC copy of x alone is 48K
    with pytest.raises(MemoryError, match="VMAMBA_RT_MAX_MEMORY"):
        model(x)
    monkeypatch.setenv("VMAMBA_RT_MAX_MEMORY", "lots")
    with pytest.raises(VMambaError, match="VMAMBA_RT_MAX_MEMORY"):
        model(x)


# 6. Weights changed underneath a loaded model ------------------------------------------

@pytest.mark.parametrize("mmap", [False, True])
def test_rewriting_or_truncating_the_file_cannot_touch_a_loaded_model(tmp_path, mmap):
    """A model copies what it keeps: mapped or not, the file is let go after the load."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(open(vmamba_rt.DEFAULT_MODEL, "rb").read())
    r = run_child(f"""
        import os, numpy as np, vmamba_rt
        from safetensors.numpy import load_file, save_file
        from safetensors import safe_open
        path = {str(path)!r}
        m = vmamba_rt.load(path, mmap={mmap})
        x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
        before = m(x)
        sd = load_file(path)
        with safe_open(path, "numpy") as f:
            meta = f.metadata()
        with open(path, "r+b") as f:          # rewritten in place, same size, other weights
            f.seek(0)
            data = bytearray(f.read())
            for i in range(len(data) - 4000, len(data)):
                data[i] = 0x3f
            f.seek(0)
            f.write(data)
        print("same after rewrite", np.array_equal(m(x), before))
        os.truncate(path, 100)                 # truncated
        print("same after truncate", np.array_equal(m(x), before))
        """)
    assert r["rc"] == 0, r  # no SIGBUS
    assert "same after rewrite True" in r["out"] and "same after truncate True" in r["out"], r


def test_mmap_gives_the_same_model(tmp_path):
    x = np.zeros((1, 3, 64, 64), np.float32)
    mapped = vmamba_rt.load(mmap=True)
    assert np.array_equal(mapped(x), vmamba_rt.load()(x))


# 8. Error types -------------------------------------------------------------------------

def _training_ckpt():
    from vmamba_rt.checkpoint import load_pth

    ckpt = load_pth(GOLDEN / "v2_s2_small.pth")
    return {k: v.numpy() for k, v in ckpt["model"].items()}, plain(ckpt["config"])


def _yacs_ckpt(tmp_path, **vssm):
    sd, config = _training_ckpt()
    config["MODEL"]["VSSM"].update(vssm)
    src = tmp_path / "cfg.pth"
    write_pth(src, {"model": sd, "config": {"MODEL": config["MODEL"]}})
    return src


@pytest.mark.parametrize("vssm,field", [
    ({"EMBED_DIM": float("inf")}, "EMBED_DIM"),
    ({"EMBED_DIM": "abc"}, "EMBED_DIM"),
    ({"SSM_D_STATE": -3}, "SSM_D_STATE"),
    ({"DEPTHS": [1] * 20}, "DEPTHS"),
    ({"SSM_RATIO": 1e300}, "SSM_RATIO"),
])
def test_bad_embedded_configs_name_the_field(tmp_path, vssm, field):
    src = _yacs_ckpt(tmp_path, **vssm)
    with pytest.raises(ConversionError, match=f"cfg.pth.*{field}"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")


def test_hundred_dimensional_tensor_is_a_conversion_error(tmp_path):
    src = tmp_path / "nd.pth"
    rec = hostile.tensor_record("0", 1, [1] * 70)
    sd = {"patch_embed.0.weight": rec, "layers.0.blocks.0.norm.weight": hostile.tensor_record("0", 1, [1])}
    write_pth(src, None, raw_pickle=hostile.PROTO + hostile.dict_of(sd) + b".", storages=[b"\0" * 4])
    with pytest.raises(ConversionError, match="70 dimensions"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")


def test_error_hierarchy():
    assert issubclass(vmamba_rt.CheckpointError, ConversionError)
    assert issubclass(ConversionError, VMambaError) and issubclass(vmamba_rt.DownloadError, VMambaError)
    assert issubclass(VMambaError, ValueError)


def test_weights_errors_name_the_file(tmp_path, converted):
    sd = load_file(converted("v2_s1_small"))
    from safetensors import safe_open

    with safe_open(converted("v2_s1_small"), "numpy") as f:
        meta = f.metadata()
    sd["extra.weight"] = np.zeros(3, np.float32)
    save_file(sd, tmp_path / "extra.safetensors", metadata=meta)
    with pytest.raises(VMambaError, match="extra.safetensors: weights hold unexpected tensor 'extra.weight'"):
        vmamba_rt.load(tmp_path / "extra.safetensors")
    meta["vmamba_rt.config"] = meta["vmamba_rt.config"].replace('"dims":', '"dims":1e9,"x":')
    save_file(load_file(converted("v2_s1_small")), tmp_path / "cfg.safetensors", metadata=meta)
    with pytest.raises(VMambaError, match="cfg.safetensors: invalid model config"):
        vmamba_rt.load(tmp_path / "cfg.safetensors")


@pytest.mark.parametrize("bad", [-1, 2**70, 1.5, "4", 5000])
def test_num_threads_is_checked(bad):
    with pytest.raises(VMambaError, match="num_threads"):
        vmamba_rt.load(num_threads=bad)


def test_threads_env_must_be_a_number(monkeypatch):
    monkeypatch.setenv("VMAMBA_RT_NUM_THREADS", "abc")
    with pytest.raises(VMambaError, match="VMAMBA_RT_NUM_THREADS='abc'|VMAMBA_RT_NUM_THREADS=\"abc\""):
        vmamba_rt.load()


@pytest.mark.parametrize("dims,error", [(2**62, VMambaError), (200_000, VMambaError), (8192, MemoryError)])
def test_absurd_random_configs_are_errors_not_panics(dims, error):
    cfg = json.loads(vmamba_rt._native.Model.preset_json("vmamba-tiny-s1l8"))
    cfg["dims"] = dims
    try:
        vmamba_rt.Model.random(cfg)
    except Exception as e:  # a PanicException would escape this (it is a BaseException)
        assert isinstance(e, error), repr(e)
    else:
        pytest.fail("no error")


def test_reference_ops_check_their_shapes():
    from vmamba_rt import _native

    rng = np.random.default_rng(0)
    bs, k, di, n, length = 1, 4, 3, 2, 5

    def arrays(n_a=n, n_b=n, k_b=k):
        f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
        return (f(bs, k * di, length), f(bs, k * di, length), f(k * di, n_a), f(bs, k_b, n_b, length),
                f(bs, k_b, n_b, length), f(k * di), f(k * di))

    assert _native.selective_scan_ref(*arrays()).shape == (bs, k * di, length)
    with pytest.raises(VMambaError, match="A has shape"):
        _native.selective_scan_ref(*arrays(n_a=3))
    with pytest.raises(VMambaError, match="not a multiple"):
        _native.selective_scan_ref(*arrays(k_b=5))
    with pytest.raises(VMambaError, match="empty"):
        _native.cross_scan_ref(np.zeros((1, 0, 2, 2), np.float32))
    with pytest.raises(VMambaError, match="4 directions"):
        _native.cross_merge_ref(np.zeros((1, 3, 2, 2, 2), np.float32))


def test_ops_with_wrapping_or_oversized_sizes_are_refused():
    # A product of sizes that wraps around to a small number once passed the
    # GEMM's size check and the tiles read far past the buffers (a segfault).
    r = run_child("""
        import json, numpy as np
        from vmamba_rt import _native, VMambaError
        ones = lambda n: np.ones(n, np.float32)
        linear = {"op": "linear", "src": 0, "dst": 1, "inp": 2, "out": 2, "weight": 0, "bias": None,
                  "accumulate": False}
        cases = [
            dict(linear, rows=2**63 + 1),  # (rows - 1) * 2 wraps to 0
            dict(linear, rows=3),  # 6 values asked of 4-value buffers
            {"op": "layer_norm", "src": 0, "dst": 1, "rows": 2, "c": 0, "weight": None, "bias": None},
            {"op": "cross_scan", "u": 0, "xdbl": 1, "dst": 2, "b": 2**62, "h": 2, "w": 2, "di": 1, "n": 1,
             "r": 1, "paths": ["raster"], "dt_weight": 0, "dt_bias": 0, "a": 0, "d": 0},
            # Parameters that do not fit the op once reached a kernel's assert ("internal error").
            dict(linear, rows=2, bias=1),
            dict(linear, rows=2, bias=7),
            {"op": "layer_norm", "src": 0, "dst": 1, "rows": 2, "c": 2, "weight": 0, "bias": 1},
        ]
        for op in cases:
            try:
                _native.run_op(json.dumps(op), [ones(4), ones(4), ones(4)], [ones(4), ones(1)])
                print("RAN", op["op"])
            except VMambaError as e:
                print("REFUSED", e)
        # An empty weight of 0 x 2^40 once was packed before any check: the process aborted.
        for op in (dict(linear, rows=1, inp=2**40, out=0), dict(linear, rows=0, inp=2**62),
                   {"op": "to_channels_last", "src": 0, "dst": 1, "b": 0, "c": 2**62, "h": 64, "w": 64}):
            try:
                _native.run_op(json.dumps(op), [ones(4), ones(4)], [ones(0)])
                print("RAN", op["op"])
            except VMambaError as e:
                print("REFUSED", e)
        """)
    assert r["rc"] == 0, r
    refusals = [line for line in r["out"].splitlines() if line.startswith("REFUSED")]
    assert refusals == ["REFUSED linear op: its sizes overflow",
                        "REFUSED linear op needs 6 values in buffer 0, which holds 4",
                        "REFUSED layer_norm op: c is 0",
                        "REFUSED cross_scan op: its sizes overflow",
                        "REFUSED linear op: parameter 1 holds 1 values, not 2",
                        "REFUSED linear op: parameter 7 does not exist (2 are loaded)",
                        "REFUSED layer_norm op: parameter 0 holds 4 values, not 2",
                        "REFUSED linear op: out is 0",
                        "REFUSED linear weight 0 holds 0 values, not 2x4611686018427387904",
                        "REFUSED to_channels_last op: its sizes overflow"], r["out"]
    assert "panicked" not in r["err"], r["err"]


# 9. Outputs -----------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vmamba_rt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_convert_never_replaces_its_input_or_a_special_file(tmp_path):
    src = tmp_path / "ckpt.pth"
    src.write_bytes((GOLDEN / "v2_s1_small.pth").read_bytes())
    r = _cli("convert", src, "-o", src)
    assert r.returncode == 1 and "is the checkpoint being converted" in r.stderr
    assert src.read_bytes() == (GOLDEN / "v2_s1_small.pth").read_bytes()
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    r = _cli("convert", src, "-o", fifo)
    assert r.returncode == 1 and "not a regular file" in r.stderr
    assert os.path.exists(fifo) and not os.path.isfile(fifo)
    r = _cli("convert", src, "-o", "/dev/null")
    assert r.returncode == 1 and "not a regular file" in r.stderr
    r = _cli("convert", src, "-o", tmp_path / "missing" / "x.safetensors")
    assert r.returncode == 1 and "missing/x.safetensors: the output folder" in r.stderr and ".part" not in r.stderr


def test_part_files_of_killed_conversions_are_cleaned_up(tmp_path):
    import fcntl

    stale = tmp_path / ".vmamba-rt-dead.safetensors.part"
    stale.write_bytes(b"left by a killed run")
    os.utime(stale, (time.time() - 3600,) * 2)
    live = tmp_path / ".vmamba-rt-live.safetensors.part"
    live.write_bytes(b"being written")
    os.utime(live, (time.time() - 3600,) * 2)
    held = open(live, "rb")
    fcntl.flock(held, fcntl.LOCK_EX)  # a writer that is still running
    try:
        vmamba_rt.convert(GOLDEN / "v2_s1_small.pth", tmp_path / "o.safetensors")
    finally:
        held.close()
    assert not stale.exists() and live.exists()
    assert sorted(os.listdir(tmp_path)) == [live.name, "o.safetensors"]


# 10. Silent wrong architecture --------------------------------------------------------------

def _bare(tmp_path):
    sd, config = _training_ckpt()
    src = tmp_path / "bare.pth"
    write_pth(src, sd)
    return src, config


def test_guessed_architecture_is_said_and_recorded(tmp_path):
    src, _ = _bare(tmp_path)
    with pytest.warns(vmamba_rt.ArchitectureGuessWarning, match="guessed v05_noz.*--preset, --config"):
        dst = vmamba_rt.convert(src, tmp_path / "o.safetensors")
    assert vmamba_rt.load(dst).metadata["vmamba_rt.config_source"] == "inferred"
    r = _cli("convert", src, "-o", tmp_path / "cli.safetensors")
    assert r.returncode == 0 and "vmamba-rt: warning: " in r.stderr and "guessed" in r.stderr


def test_explicit_architecture_from_the_official_yaml(tmp_path):
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read official yaml configs")
    src, config = _bare(tmp_path)
    cfg = {"MODEL": config["MODEL"]}
    # A _BASE_ file under it, whose values the file itself overrides.
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"MODEL": {"VSSM": {"EMBED_DIM": 8, "DEPTHS": [9]}}}))
    cfg["_BASE_"] = ["base.yaml"]
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(cfg))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", vmamba_rt.ArchitectureGuessWarning)
        dst = vmamba_rt.convert(src, tmp_path / "o.safetensors", config=tmp_path / "model.yaml")
    model = vmamba_rt.load(dst)
    assert model.metadata["vmamba_rt.config_source"] == "given"
    x = np.load(GOLDEN / "v2_s2_small.input.npy")
    assert rel_err(model(x), np.load(GOLDEN / "v2_s2_small.expected.npy")) < 1e-4
    # The names and shapes are those of the bidirectional ablation too: the yaml's variant is built.
    cfg["MODEL"]["VSSM"]["SSM_FORWARDTYPE"] = "v052d_noz"
    (tmp_path / "bidi.yaml").write_text(yaml.safe_dump(cfg))
    r = _cli("convert", src, "--config", tmp_path / "bidi.yaml", "-o", tmp_path / "b.safetensors")
    assert r.returncode == 0, r.stderr
    bidi = vmamba_rt.load(tmp_path / "b.safetensors")
    assert bidi.config["forward_type"] == "v052d_noz" and rel_err(bidi(x), model(x)) > 1e-3
    # A forward type the official code does not run is refused by name, not run as another.
    cfg["MODEL"]["VSSM"]["SSM_FORWARDTYPE"] = "v9_noz"
    (tmp_path / "v9.yaml").write_text(yaml.safe_dump(cfg))
    r = _cli("convert", src, "--config", tmp_path / "v9.yaml", "-o", tmp_path / "c.safetensors")
    assert r.returncode == 1 and 'forward_type "v9_noz"' in r.stderr, r.stderr


def test_explicit_preset_must_fit(tmp_path):
    src, _ = _bare(tmp_path)
    with pytest.raises(ConversionError, match="weights are missing tensor|has shape"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors", preset="vmamba-tiny-s1l8")
    assert not (tmp_path / "o.safetensors").exists()


# Everything at once: a load from many threads while attacks are refused ---------------------

def test_refusals_from_many_threads_leave_good_loads_intact(tmp_path):
    srcs = []
    for i, target in enumerate(hostile.BUILD_TARGETS):
        p = tmp_path / f"a{i}.pth"
        hostile.write_build_attack(p, target)
        srcs.append(p)
    errors, outs = [], []

    def attack(p):
        try:
            vmamba_rt.convert(p, str(p) + ".safetensors")
            errors.append(f"{p} converted")
        except ConversionError:
            pass

    def good(i):
        outs.append(vmamba_rt.convert(GOLDEN / "v2_s1_small.pth", tmp_path / f"g{i}.safetensors"))

    threads = [threading.Thread(target=attack, args=(p,)) for p in srcs]
    threads += [threading.Thread(target=good, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    x = np.load(GOLDEN / "v2_s1_small.input.npy")
    ref = vmamba_rt.load(outs[0])(x)
    assert all(np.array_equal(vmamba_rt.load(o)(x), ref) for o in outs)


# 11. Config files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_configs(tmp_path_factory):
    pytest.importorskip("yaml", reason="PyYAML is needed to read official yaml configs")
    return hostile.write_hostile_configs(str(tmp_path_factory.mktemp("configs")))


@pytest.mark.parametrize("name", ["deep.yaml", "deep.json", "deep_block.yaml", "long_int.yaml", "long_int.json",
                                  "base60.yaml", "nul_base.yaml", "int_base.yaml", "laughs.yaml", "alias.yaml",
                                  "python_tag.yaml", "set_tag.yaml", "self_base.yaml", "too_long.yaml",
                                  "many_values.yaml", "long_string.json", "typo.yaml", "typo.json", "not_utf8.yaml",
                                  "fan0.yaml", "fifo.yaml", "fifo_base.yaml"])
def test_hostile_configs_are_refused_by_name_and_fast(hostile_configs, name):
    from vmamba_rt.convert import arch_config

    path, why = hostile_configs[name]
    start = time.monotonic()
    with pytest.raises(ConversionError) as e:
        arch_config(path, "checkpoint.pth")
    assert time.monotonic() - start < 2, name
    msg = str(e.value)
    assert why in msg, msg
    assert os.path.dirname(path) in msg, msg  # names the file (or the base file) it refuses
    assert len(msg) < 1000, msg


def test_config_refusals_reach_the_cli_as_errors_not_tracebacks(tmp_path, hostile_configs):
    src = tmp_path / "ckpt.pth"
    src.write_bytes((GOLDEN / "v2_s1_small.pth").read_bytes())
    for name in ("deep.yaml", "deep.json", "base60.yaml", "fifo.yaml"):
        r = _cli("convert", src, "--config", hostile_configs[name][0], "-o", tmp_path / "o.safetensors")
        assert r.returncode == 1 and r.stderr.startswith("vmamba-rt: error: ") and "Traceback" not in r.stderr, r
    assert not (tmp_path / "o.safetensors").exists()


def test_official_yaml_with_bases_reads_as_yacs_does(tmp_path):
    """BASE (the official name) and _BASE_ both merge, each base before the file, values
    overriding key by key; one base named twice is read once."""
    from vmamba_rt import configfile

    (tmp_path / "common.yaml").write_text("MODEL:\n  NUM_CLASSES: 10\n  VSSM: {EMBED_DIM: 8, DEPTHS: [1, 1]}\n")
    (tmp_path / "mid.yaml").write_text("BASE: ['common.yaml']\nMODEL:\n  VSSM: {SSM_RATIO: 1.0}\n")
    (tmp_path / "top.yaml").write_text("_BASE_: [mid.yaml, common.yaml]\nDATA: {IMG_SIZE: 64}\n"
                                       "MODEL:\n  VSSM:\n    EMBED_DIM: 16  # over the base's\n")
    cfg = configfile.load_yacs(str(tmp_path / "top.yaml"))
    assert cfg == {"MODEL": {"NUM_CLASSES": 10, "VSSM": {"EMBED_DIM": 16, "DEPTHS": [1, 1], "SSM_RATIO": 1.0}},
                   "DATA": {"IMG_SIZE": 64}}


# 12. Metadata that amplifies ---------------------------------------------------------------------

@pytest.mark.parametrize("entry,kind", [("vmamba_rt.preprocess", "mean_string"),
                                        ("vmamba_rt.preprocess", "mean_list"),
                                        ("vmamba_rt.labels", "label_lists")])
def test_metadata_too_large_for_its_entry_is_refused_cheaply(tmp_path, entry, kind):
    """A 90 MB entry took 5-11 s and 2-5 GB to parse and quote; now its size is checked first."""
    dst = tmp_path / "big.safetensors"
    hostile.write_amplifying_metadata(vmamba_rt.DEFAULT_MODEL, str(dst), entry, kind)
    r = run_child(f"""
        import vmamba_rt
        try:
            vmamba_rt.load({str(dst)!r})
            print("LOADED")
        except vmamba_rt.VMambaError as e:
            print("REFUSED", str(e)[:300], len(str(e)))
        """)
    assert r["rc"] == 0 and "REFUSED" in r["out"], r
    assert f"big.safetensors: invalid model config: metadata entry '{entry}' holds" in r["out"], r["out"]
    assert r["seconds"] < 10 and r["rss_mb"] < 1000, r
    assert int(r["out"].split()[-3]) < 300  # the message's length: the value is never quoted


@pytest.mark.parametrize("value,why", [
    ('{"mean": "123"}', "mean must be 3 finite numbers, got a str"),
    ('{"mean": [1, 2]}', "mean must be 3 finite numbers, got 2 entries"),
    ('{"std": [1, true, 1]}', "std must be 3 finite numbers"),
    ('{"resize": "' + "x" * 3000 + '"}', "resize must be 'crop' or 'squash'"),
    ('{"input_size": "224"}', "input_size must be a int, got a str"),
])
def test_preprocess_metadata_types_are_checked_before_conversion(value, why):
    from vmamba_rt.preprocess import Preprocess

    with pytest.raises(VMambaError, match=why) as e:
        Preprocess.from_metadata({"vmamba_rt.preprocess": value})
    assert len(str(e.value)) < 400


# 13. Images: integer modes and formats that run programs --------------------------------------

@pytest.mark.parametrize("mode,fmt", [("I", "TIFF"), ("I;16", "PNG")])
def test_integer_gray_images_at_the_pixel_limit_convert_in_bounded_memory(tmp_path, mode, fmt):
    """A 9459x9459 mode-I TIFF (0.6 MB) took 2.1 GB in int64 temporaries, an I;16 PNG 1.75 GB."""
    path = tmp_path / f"big.{fmt.lower()}"
    r = run_child(f"""
        from PIL import Image
        img = Image.new({mode!r}, (9459, 9459), 40000)
        img.save({str(path)!r}, {fmt!r}, **({{"compression": "tiff_adobe_deflate"}} if {fmt!r} == "TIFF" else {{}}))
        """, timeout=120)
    assert r["rc"] == 0, r
    r = run_child(f"""
        import numpy as np
        from vmamba_rt.preprocess import load_rgb
        img = load_rgb({str(path)!r})
        print("MODE", img.mode, img.size, np.asarray(img.crop((0, 0, 4, 4)))[0, 0].tolist())
        """, timeout=120)
    assert r["rc"] == 0, r
    assert "MODE RGB (9459, 9459) [156, 156, 156]" in r["out"], r["out"]  # 40000 >> 8
    assert r["rss_mb"] < 1500, r


def test_small_integer_images_keep_their_top_byte():
    from PIL import Image

    from vmamba_rt.preprocess import load_rgb

    values = np.array([[0, 255, 256, 65535], [-5, 70000, 512, 1 << 20]], np.int32)
    got = np.asarray(load_rgb(Image.fromarray(values, "I")))[..., 0]
    assert got.tolist() == [[0, 0, 1, 255], [0, 255, 2, 255]]


def test_images_are_only_opened_as_raster_formats(tmp_path):
    """Pillow's EPS plugin runs Ghostscript on the file: a stand-in `gs` on PATH must never run."""
    marker = tmp_path / "gs-ran"
    gs = tmp_path / "bin" / "gs"
    gs.parent.mkdir()
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    eps = tmp_path / "image.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\n"
                    b"showpage\n%%EOF\n")
    r = run_child(f"""
        import os
        os.environ["PATH"] = {str(gs.parent)!r} + os.pathsep + os.environ["PATH"]
        import vmamba_rt
        from vmamba_rt.preprocess import IMAGE_FORMATS, load_rgb
        for source in ({str(eps)!r}, open({str(eps)!r}, "rb").read()):
            try:
                load_rgb(source)
                print("OPENED")
            except vmamba_rt.VMambaError as e:
                print("REFUSED", e)
        print("FORMATS", ",".join(IMAGE_FORMATS))
        """)
    assert r["rc"] == 0, r
    assert r["out"].count("REFUSED") == 2 and "not an image in one of the formats read" in r["out"], r["out"]
    assert "FORMATS PNG,JPEG,BMP,GIF,TIFF,WEBP,PPM" in r["out"]
    assert not marker.exists(), "Ghostscript (the stand-in) was run"


# 14. What the CLI prints -------------------------------------------------------------------------

def test_cli_prints_file_names_escaped_and_goes_on_past_odd_names(tmp_path):
    png = (HERE + "/../examples/images/digit_3.png")
    names = [b"forged.png\n   100.00%  7.png", b"not-utf8-\xff.png", b"plain.png"]
    for name in names:
        with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
            f.write(open(png, "rb").read())
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    r = subprocess.run([sys.executable, "-m", "vmamba_rt.cli", "classify", str(tmp_path), "--topk", "1"],
                       capture_output=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines == [f'"{tmp_path}/forged.png\\n   100.00%  7.png"', "   91.56%  3",
                     f'"{tmp_path}/not-utf8-\\377.png"', "   91.56%  3", f"{tmp_path}/plain.png", "   91.56%  3"], lines
    r = subprocess.run([sys.executable, "-m", "vmamba_rt.cli", "classify", str(tmp_path), "--topk", "1", "--json"],
                       capture_output=True, env=dict(env, PYTHONIOENCODING="ascii:strict"), timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [os.path.basename(row["image"]) for row in rows] == [
        "forged.png\n   100.00%  7.png", "not-utf8-\udcff.png", "plain.png"]


def test_shown_escapes_what_does_not_print():
    from vmamba_rt.cli import shown

    assert shown("a b/é.png", "utf-8") == "a b/é.png"
    assert shown("é.png", "ascii") == '"\\303\\251.png"'
    assert shown('a"b\\c\td\u202e.png', "utf-8") == '"a\\"b\\\\c\\td\\342\\200\\256.png"'
    assert shown("\ud800", "utf-8") == '"\\355\\240\\200"'
