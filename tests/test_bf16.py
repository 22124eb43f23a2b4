"""The CPU's bf16 mode (`dtype="bfloat16"`: linear weights stored in bf16, f32
arithmetic) against fp32 and the official outputs, within the bounds of the
"CPU speed II" issue: the digits split's top-1 labels equal fp32's on at least
448 of 450 images, and every golden case within 2e-2 of its largest output."""

import warnings

import numpy as np
import pytest
from conftest import GOLDEN, golden_cases, golden_meta, rel_err

import vmamba_rt
from vmamba_rt import VMambaError

TOL = 2e-2


def test_digits_labels_match_fp32():
    z = np.load(GOLDEN / "digits_test.npz")
    fp32 = vmamba_rt.load()
    bf16 = vmamba_rt.load(dtype="bfloat16")
    x = fp32.preprocess.batch(list(z["images"]))
    a, b = fp32(x), bf16(x)
    assert (a.argmax(1) == b.argmax(1)).sum() >= 448
    assert 0 < rel_err(b, a) < TOL  # bf16 is not fp32 in disguise


@pytest.mark.parametrize("case,ema", [c for c in golden_cases() if not c[1]], ids=lambda v: str(v))
def test_golden_case_within_bf16_bound(case, ema, converted):
    meta = golden_meta(case)
    model = vmamba_rt.load(converted(case, ema), dtype="bfloat16")
    x = np.load(GOLDEN / f"{case}.input.npy")
    if meta["backbone"]:
        for got, name in zip(model.features(x), meta["expected"]):
            assert rel_err(got, np.load(GOLDEN / name)) < TOL
    else:
        assert rel_err(model(x), np.load(GOLDEN / meta["expected"])) < TOL


def test_bf16_random_model_in_released_shapes_stays_close():
    """A released architecture (small input), bf16 against fp32 with the same weights."""
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    a = vmamba_rt.Model.random("vmamba-tiny-s1l8")(x)
    b = vmamba_rt.Model.random("vmamba-tiny-s1l8", dtype="bfloat16")(x)
    assert 0 < rel_err(b, a) < TOL


def test_bf16_says_what_it_does_on_this_cpu():
    """A bf16 load says that the weights are bf16 and the arithmetic float32, with
    which kernels, and which bf16 instructions the CPU has (no kernel uses them
    yet); a float32 load says nothing."""
    info = vmamba_rt.cpu_info()
    assert info["kernels"] in ("avx512", "avx2+fma", "x86-64", "neon", "portable")
    with pytest.warns(vmamba_rt.BFloat16Warning) as said:
        vmamba_rt.load(dtype="bfloat16")
    msg = str(said[0].message)
    assert f"({info['kernels']} kernels)" in msg and "widened to float32" in msg
    if info["bf16_instructions"]:
        assert all(name in msg for name in info["bf16_instructions"]), msg
    else:
        assert "no bf16 instructions" in msg, msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vmamba_rt.load()


def test_cpu_refuses_float16_and_unknown_dtypes():
    for dtype in ("float16", "int8", "bf16"):
        with pytest.raises(VMambaError, match="float32 or bfloat16"):
            vmamba_rt.load(dtype=dtype)
    with pytest.raises(VMambaError, match="bfloat16"):
        vmamba_rt._native.Model.random(vmamba_rt._native.Model.preset_json("vmamba-tiny-s1l8"), 0, None, "half")
