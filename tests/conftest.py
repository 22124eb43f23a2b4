import json
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
sys.path.insert(0, str(HERE))


def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAS_GPU = _gpu_available()
NO_GPU = "no CUDA GPU with CuPy here: GPU parity tests skipped"


def use_fake_cupy(monkeypatch):
    """Run the CUDA engine on tests/fakecupy.py (numpy on the CPU) for this test."""
    from vmamba_rt import gpu

    import fakecupy

    monkeypatch.setattr(gpu, "_import_cupy", lambda: fakecupy)
    monkeypatch.setattr(gpu, "_Cublas", fakecupy.Blas)
    return fakecupy


@pytest.fixture(params=["cpu", "cuda-fake", "cuda"])
def device(request, monkeypatch):
    """Each engine in turn, as the ``device`` argument of ``vmamba_rt.load``: the
    CPU engine; the CUDA engine on a numpy stand-in for CuPy (its own logic, on
    any machine); the CUDA engine on a real GPU, where there is one."""
    if request.param == "cuda-fake":
        use_fake_cupy(monkeypatch)
        return "cuda"
    if request.param == "cuda" and not HAS_GPU:
        pytest.skip(NO_GPU)
    return request.param


def same(a, b, device) -> bool:
    """Bit-identical on the CPU; on the GPU, where the scan adds its four
    directions with atomics in no fixed order, within 1e-6 of the largest value."""
    return np.array_equal(a, b) if device == "cpu" else rel_err(a, b) < 1e-6


def plain(obj):
    """Config records (yacs nodes, tuples) as plain dicts and lists, to write again."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def golden_cases():
    """(case name, use_ema) for every golden case and weight set."""
    out = []
    for js in sorted(GOLDEN.glob("*.json")):
        meta = json.loads(js.read_text())
        out.append((meta["case"], False))
        if "expected_ema" in meta:
            out.append((meta["case"], True))
    return out


def golden_meta(case):
    return json.loads((GOLDEN / f"{case}.json").read_text())


def rel_err(got, want):
    """max |got - want| over the largest |want| (the acceptance measure)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """Convert golden checkpoints once per session: converted(case, ema) -> path."""
    import vmamba_rt

    cache = {}
    root = tmp_path_factory.mktemp("converted")

    def get(case, ema=False):
        key = (case, ema)
        if key not in cache:
            dst = root / f"{case}{'_ema' if ema else ''}.safetensors"
            cache[key] = vmamba_rt.convert(GOLDEN / f"{case}.pth", dst, ema=ema)
        return cache[key]

    return get
