"""Kernel-level checks against the official op vectors."""

import subprocess
import sys

import numpy as np
import pytest

import vmamba_rt
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


def test_instruction_limit_measured_where_the_cpu_has_it():
    info = vmamba_rt.cpu_info()
    fma, dot = _native.instruction_gflops("fma", 2), _native.instruction_gflops("bf16dot", 1)
    assert (fma is not None) == (info["kernels"] in ("avx512", "avx2+fma"))
    if info["bf16_kernel"] == "avx512_bf16":
        assert dot is not None and dot[0] == "vdpbf16ps zmm"
    if "avx512_bf16" not in info["bf16_instructions"]:
        assert dot is None
    for got in (fma, dot):
        if got is not None:
            # Above 1 GFLOP/s and below four 512-bit units a core at 10 GHz (2 threads).
            assert 1 < got[1] < 2 * 10 * 4 * 64, got
    for bad in [("fma", 0), ("fma", 1025), ("avx", 1), ("", 1)]:
        with pytest.raises(_native.VMambaError, match="instruction_gflops"):
            _native.instruction_gflops(*bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
@pytest.mark.skipif(vmamba_rt.cpu_info()["kernels"] not in ("avx512", "avx2+fma"),
                    reason="no FMA the kernels use on this CPU: nothing to measure, no threads started")
def test_instruction_limit_refuses_threads_it_cannot_start():
    """Threads that cannot all be started give a typed error, not a wait for
    ever on the ones that never came (in a child whose address space leaves no
    room for 1024 thread stacks)."""
    code = """if True:
        import resource
        from vmamba_rt import _native
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (200 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            _native.instruction_gflops("fma", 1024)
        except _native.VMambaError as e:
            print(e)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "instruction_gflops: could not start 1024 threads" in out.stdout, out.stdout + out.stderr
