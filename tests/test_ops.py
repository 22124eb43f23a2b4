"""Kernel-level checks against the official op vectors."""

import numpy as np
import pytest
from conftest import GOLDEN, rel_err

from vmamba_rt import _native


@pytest.mark.parametrize("name", ["op_selective_scan_n1", "op_selective_scan_n16"])
def test_selective_scan_matches_official(name):
    z = np.load(GOLDEN / f"{name}.npz")
    y = _native.selective_scan_ref(z["u"], z["delta"], z["A"], z["B"], z["C"], z["D"], z["delta_bias"])
    assert rel_err(y, z["y"]) < 1e-4


def test_cross_scan_and_merge_match_official():
    z = np.load(GOLDEN / "op_cross_scan.npz")
    assert rel_err(_native.cross_scan_ref(z["x"]), z["scanned"]) < 1e-6
    assert rel_err(_native.cross_merge_ref(z["ys"]), z["merged"]) < 1e-6
