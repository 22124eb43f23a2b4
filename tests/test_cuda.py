"""The CUDA path. Compilation to PTX runs everywhere (NVRTC from pip, no GPU);
the parity tests need CuPy and an NVIDIA GPU and skip, saying so, without them."""

import importlib.util

import numpy as np
import pytest
from conftest import GOLDEN, golden_cases, golden_meta, rel_err

import vmamba_rt
from vmamba_rt import gpu

HAS_NVRTC = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.cuda_nvrtc") is not None


def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAS_GPU = _gpu_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU with CuPy here: GPU parity tests skipped")

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
    with pytest.raises(vmamba_rt.VMambaError, match="float32 only"):
        vmamba_rt.load(converted("v2_s1_small"), dtype="float16")


@needs_gpu
@pytest.mark.parametrize("dtype", sorted(gpu.DTYPES))
@pytest.mark.parametrize("case,ema", golden_cases(), ids=lambda v: str(v))
def test_gpu_matches_cpu_engine_on_golden_cases(case, ema, dtype, converted):
    path = converted(case, ema)
    meta = golden_meta(case)
    cpu, cuda = vmamba_rt.load(path), vmamba_rt.load(path, device="cuda", dtype=dtype)
    x = np.load(GOLDEN / f"{case}.input.npy")
    if meta["backbone"]:
        pairs = zip(cuda.features(x), cpu.features(x))
    else:
        pairs = [(cuda(x), cpu(x))]
    for got, want in pairs:
        assert rel_err(got, want) < BOUNDS[dtype], dtype


@needs_gpu
def test_graph_replay_cupy_io_batches_and_odd_sizes(converted):
    import cupy

    path = converted("v0_small")
    cpu, cuda = vmamba_rt.load(path), vmamba_rt.load(path, device="cuda")
    rng = np.random.default_rng(0)
    for shape in [(3, 3, 37, 53), (1, 3, 64, 64), (5, 3, 20, 20)]:
        x = rng.standard_normal(shape).astype(np.float32)
        want = cpu(x)
        for _ in range(3):  # eager, then captured, then replayed
            assert rel_err(cuda(x), want) < 1e-4
        out = cuda(cupy.asarray(x))
        assert isinstance(out, cupy.ndarray) and rel_err(cupy.asnumpy(out), want) < 1e-4
    assert cuda._plans[(1, 3, 64, 64)].graphs, "no CUDA graph was captured"
    assert cuda.predict(str(GOLDEN.parent.parent / "examples/images/digit_3.png"), topk=2)


@needs_gpu
def test_digits_model_on_gpu():
    z = np.load(GOLDEN / "digits_test.npz")
    model = vmamba_rt.load(device="cuda")
    want = np.load(GOLDEN / "digits_test_logits.npy")
    got = model(model.preprocess.batch(list(z["images"])))
    assert rel_err(got, want) < 1e-4 and np.array_equal(got.argmax(1), want.argmax(1))
