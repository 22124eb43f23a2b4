"""The CUDA path. Compilation to PTX runs everywhere (NVRTC from pip, no GPU);
the parity tests need CuPy and an NVIDIA GPU and skip, saying so, without them."""

import importlib.util

import numpy as np
import pytest

import vmamba_rt
from opcases import op_cases, random_inputs, run_cpu
from vmamba_rt import _native, gpu

from conftest import GOLDEN, HAS_GPU, NO_GPU, golden_cases, golden_meta, rel_err, use_fake_cupy

HAS_NVRTC = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.cuda_nvrtc") is not None

needs_gpu = pytest.mark.skipif(not HAS_GPU, reason=NO_GPU)

# fp16 keeps 11 significant bits (relative rounding 4.9e-4), bf16 8 (3.9e-3). Each of
# the ~20 residual steps of the small golden models rounds its activations once, and
# the roundings add up like a random walk: about sqrt(20) * eps * (growth through the
# norms, ~5) relative to the largest output, i.e. ~1e-2 for fp16 and ~9e-2 for bf16.
BOUNDS = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}


@pytest.mark.skipif(not HAS_NVRTC, reason="nvidia-cuda-nvrtc-cu12 is not installed (pip install '.[nvrtc]', or bash scripts/test.sh --full)")
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("dtype", sorted(gpu.DTYPES))
def test_kernels_compile_to_ptx(arch, dtype):
    from vmamba_rt import nvrtc

    names = gpu.kernel_names(gpu.DTYPES[dtype], {(1, 1), (1, 6), (16, 2), (16, 6)})
    ptx, lowered = nvrtc.compile_ptx(gpu.kernel_source(), arch, names)
    assert f".target sm_{arch[-2:]}" in ptx
    for name in names:  # every instantiation made it into the PTX
        assert f".entry {lowered[name]}(" in ptx, name


@pytest.mark.skipif(not HAS_NVRTC, reason="nvidia-cuda-nvrtc-cu12 is not installed (pip install '.[nvrtc]', or bash scripts/test.sh --full)")
@pytest.mark.parametrize("name", gpu.KERNEL_FILES)
def test_each_cu_file_compiles_alone(name):
    from vmamba_rt import nvrtc

    src = open(f"{gpu.KERNEL_DIR}/{name}").read()
    ptx, _ = nvrtc.compile_ptx(src, "compute_90", include_dirs=[gpu.KERNEL_DIR])
    assert ".version" in ptx


def test_broken_kernel_is_reported():
    if not HAS_NVRTC:
        pytest.skip("nvidia-cuda-nvrtc-cu12 is not installed (pip install '.[nvrtc]', or bash scripts/test.sh --full)")
    from vmamba_rt import nvrtc

    with pytest.raises(nvrtc.NvrtcError, match="undefined"):
        nvrtc.compile_ptx("__global__ void k(float* x) { x[0] = undefined_thing; }", "compute_90")


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error(converted):
    with pytest.raises(vmamba_rt.VMambaError, match="device='cuda'"):
        vmamba_rt.load(converted("v2_s1_small"), device="cuda")
    # and the CPU path is untouched
    assert vmamba_rt.load(converted("v2_s1_small"))(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)


def test_bad_device_and_dtype_arguments(converted):
    with pytest.raises(vmamba_rt.VMambaError, match="device must be"):
        vmamba_rt.load(converted("v2_s1_small"), device="tpu")
    with pytest.raises(vmamba_rt.VMambaError, match="float32 or bfloat16"):
        vmamba_rt.load(converted("v2_s1_small"), dtype="float16")


# The CUDA engine runs on a real GPU ("gpu") and, for its own logic, on a numpy
# stand-in for CuPy ("fake", tests/fakecupy.py, float32 only) that runs everywhere.
BACKENDS = ["fake", "gpu"]


@pytest.fixture
def backend(request, monkeypatch):
    """Use the CUDA backend named by the test's parameter; returns its CuPy module."""
    if request.param == "fake":
        return use_fake_cupy(monkeypatch)
    if not HAS_GPU:
        pytest.skip(NO_GPU)
    import cupy

    return cupy


def _outputs(model, x, meta_backbone):
    if meta_backbone:
        return model.features(x)
    return [model(x), model.embeddings(x)] + model.features(x)


@pytest.mark.parametrize("backend,dtype", [("fake", "float32")] + [("gpu", d) for d in sorted(gpu.DTYPES)],
                         indirect=["backend"])
@pytest.mark.parametrize("case,ema", golden_cases(), ids=lambda v: str(v))
def test_gpu_matches_cpu_engine_on_golden_cases(case, ema, dtype, converted, backend):
    path = converted(case, ema)
    meta = golden_meta(case)
    cpu, cuda = vmamba_rt.load(path), vmamba_rt.load(path, device="cuda", dtype=dtype)
    x = np.load(GOLDEN / f"{case}.input.npy")
    for _ in range(3):  # eager, then captured, then replayed
        for got, want in zip(_outputs(cuda, x, meta["backbone"]), _outputs(cpu, x, meta["backbone"]), strict=True):
            assert rel_err(got, want) < BOUNDS[dtype], dtype


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_graph_replay_device_io_batches_and_odd_sizes(converted, backend):
    path = converted("v0_small")
    cpu, cuda = vmamba_rt.load(path), vmamba_rt.load(path, device="cuda")
    rng = np.random.default_rng(0)
    for shape in [(3, 3, 37, 53), (1, 3, 64, 64), (5, 3, 20, 20)]:
        x = rng.standard_normal(shape).astype(np.float32)
        want = cpu(x)
        for _ in range(3):  # eager, then captured, then replayed
            assert rel_err(cuda(x), want) < 1e-4
        out = cuda(backend.asarray(x))
        assert isinstance(out, backend.ndarray) and rel_err(backend.asnumpy(out), want) < 1e-4
    assert cuda.engine._plans[((1, 3, 64, 64), "logits")].graph is not None, "no CUDA graph was captured"
    assert cuda.predict(str(GOLDEN.parent.parent / "examples/images/digit_3.png"), topk=2)
    with pytest.raises(vmamba_rt.VMambaError, match="too small"):
        cuda(np.zeros((1, 3, 2, 2), np.float32))
    # Plans are made from the shape alone: one far too large is refused before any size is computed.
    with pytest.raises(MemoryError, match="far beyond"):
        cuda.engine._native.plan_json((1 << 40, 3, 64, 64), "logits")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_random_model_on_the_gpu_is_the_cpu_model(backend):
    import json

    cfg = json.loads(vmamba_rt._native.Model.preset_json("vmamba-tiny-s1l8"))
    cfg["dims"], cfg["depths"] = 8, [1, 1, 1, 1]
    cpu = vmamba_rt.Model.random(cfg, seed=3)
    cuda = vmamba_rt.Model.random(cfg, seed=3, device="cuda")
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert cuda.device == "cuda" and cpu.device == "cpu"
    assert rel_err(cuda(x), cpu(x)) < 1e-4 and rel_err(cuda.embeddings(x), cpu.embeddings(x)) < 1e-4
    # The GPU holds the weights: the native model keeps their table and plans, not their values.
    assert cuda._native.param_table() == cpu._native.param_table()
    with pytest.raises(vmamba_rt.VMambaError, match="handed to another engine"):
        cuda._native.forward(x)
    assert rel_err(cuda(x[:1]), cpu(x[:1])) < 1e-4  # a new shape plans and runs on the GPU alone


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_threads_share_one_engine(converted, backend):
    """Many threads, one model: same-shape calls never see each other's results."""
    from concurrent.futures import ThreadPoolExecutor

    path = converted("v2_s1_small")
    cpu, cuda = vmamba_rt.load(path), vmamba_rt.load(path, device="cuda")
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 3, 32 + 8 * (i % 3), 32)).astype(np.float32) for i in range(24)]
    want = [cpu(x) for x in xs]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda x: (cuda(x), cuda.features(x)), xs * 2))
    for (logits, maps), w, x in zip(got, want * 2, xs * 2):
        assert rel_err(logits, w) < 1e-4
        assert len(maps) == len(cpu.features(x))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_plan_cache_is_bounded(converted, backend):
    path = converted("v2_s1_small")
    cpu, cuda = vmamba_rt.load(path), vmamba_rt.load(path, device="cuda")
    sizes = range(16, 16 + 2 * (gpu.MAX_PLANS + 3), 2)
    for s in list(sizes) + [16]:  # the first shape again, after it was dropped
        x = np.full((1, 3, s, s), 0.5, np.float32)
        assert rel_err(cuda(x), cpu(x)) < 1e-4
        assert len(cuda.engine._plans) <= gpu.MAX_PLANS


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_failed_capture_leaves_that_shape_eager_and_correct(converted, backend):
    path = converted("v2_s1_small")
    cpu, cuda = vmamba_rt.load(path), vmamba_rt.load(path, device="cuda")
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = cpu(x)
    cuda(x)
    plan = cuda.engine._plans[((1, 3, 32, 32), "logits")]
    stream = cuda.engine._stream

    def disturbed():  # what another thread's work can do to a capture
        if stream.is_capturing():
            raise RuntimeError("capture invalidated")

    plan.steps.insert(0, disturbed)
    for _ in range(gpu.MAX_CAPTURE_FAILURES + 2):
        assert rel_err(cuda(x), want) < 1e-4
    assert plan.graph is None and plan.capture_failures == gpu.MAX_CAPTURE_FAILURES
    assert "capture invalidated" in cuda.engine.graph_error
    y = np.zeros((1, 3, 40, 40), np.float32)  # other shapes still get graphs
    for _ in range(3):
        assert rel_err(cuda(y), cpu(y)) < 1e-4
    assert cuda.engine._plans[((1, 3, 40, 40), "logits")].graph is not None


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("seed", range(4))
def test_every_op_matches_the_cpu_engine(seed, backend):
    """Each op kind alone on random shapes: the CUDA engine against the Rust CPU
    engine (ggml's test-backend-ops, in small)."""
    rng = np.random.default_rng(seed)
    kinds = set()
    for op, lens, plens, f32 in op_cases(rng):
        bufs, params = random_inputs(rng, op, lens, plens)
        want = run_cpu(op, bufs, params)
        for g, w in zip(gpu.run_op(op, bufs, params, f32), want, strict=True):
            assert rel_err(g, w) < 1e-5, op
        kinds.add(op["op"])
    assert kinds == set(_native.OP_KINDS), kinds  # every kind of plan op


def test_every_op_kind_of_the_schema_has_a_cuda_launch():
    """The CUDA engine's table (and so the numpy stand-in, which runs it) covers
    the plan's op schema exactly: a kind added to the schema alone fails here,
    not on a GPU at run time. The CPU engine's match is checked by the compiler,
    and the schema against the ops the model emits by plan.rs's tests."""
    assert set(gpu.CudaEngine.OPS) == set(_native.OP_KINDS)
    fields = {field for kind_fields in _native.OP_KINDS.values() for field in kind_fields}
    assert {"src", "dst", "rows", "paths", "gate_act"} <= fields


@needs_gpu
def test_digits_model_on_gpu():
    z = np.load(GOLDEN / "digits_test.npz")
    model = vmamba_rt.load(device="cuda")
    want = np.load(GOLDEN / "digits_test_logits.npy")
    got = model(model.preprocess.batch(list(z["images"])))
    assert rel_err(got, want) < 1e-4 and np.array_equal(got.argmax(1), want.argmax(1))


def test_a_model_loaded_for_another_engine_plans_but_does_not_run_on_the_cpu(converted):
    """weights="dense" (what the CUDA engine loads): the linear weights stay as
    the file has them, for the engine to upload; the plans and every parameter
    are the CPU model's; a CPU run is a typed error."""
    path = str(converted("v2_s1_small"))
    cpu, dense = _native.Model(path), _native.Model(path, None, False, "dense")
    assert dense.plan_json((1, 3, 32, 32), "logits") == cpu.plan_json((1, 3, 32, 32), "logits")
    for i in range(len(cpu.param_table())):
        assert np.array_equal(dense.param(i), cpu.param(i))
    with pytest.raises(vmamba_rt.VMambaError, match="loaded for another engine"):
        dense.forward(np.zeros((1, 3, 32, 32), np.float32))
