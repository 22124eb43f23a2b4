"""Kernel-level checks against the official op vectors."""

import numpy as np
import pytest

from vmamba_rt import _native

from conftest import GOLDEN, rel_err


@pytest.mark.parametrize("name", ["op_selective_scan_n1", "op_selective_scan_n16"])
def test_selective_scan_matches_official(name):
    z = np.load(GOLDEN / f"{name}.npz")
    y = _native.selective_scan_ref(z["u"], z["delta"], z["A"], z["B"], z["C"], z["D"], z["delta_bias"])
    assert rel_err(y, z["y"]) < 1e-4


def test_cross_scan_and_merge_match_official():
    z = np.load(GOLDEN / "op_cross_scan.npz")
    assert rel_err(_native.cross_scan_ref(z["x"]), z["scanned"]) < 1e-6
    assert rel_err(_native.cross_merge_ref(z["ys"]), z["merged"]) < 1e-6


def test_gemm_timer_runs_and_refuses_absurd_shapes():
    assert _native.gemm_gflops(32, 16, 8, 1, 2) > 0
    # (2^32, 2^32, 2^32): every operand's element count wraps around to 0 unless checked.
    for bad in [(1 << 20, 1 << 20, 1, 1, 1), (0, 4, 4, 1, 1), (4, 4, 4, 5000, 1), (1 << 32, 1 << 32, 1 << 32, 1, 1),
                (4, 4, 4, 1, 10**9)]:
        with pytest.raises(_native.VMambaError, match="out of range"):
            _native.gemm_gflops(*bad)
