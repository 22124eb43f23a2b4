import json
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
sys.path.insert(0, str(HERE))


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
