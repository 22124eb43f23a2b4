"""What the model does with inputs it cannot run."""

import numpy as np
import pytest

import vmamba_rt
from vmamba_rt import VMambaError

from conftest import GOLDEN, same


@pytest.fixture
def model(converted, device):
    return vmamba_rt.load(converted("v2_s1_small"), device=device)


def test_backbone_has_no_logits(converted, device):
    bb = vmamba_rt.load(converted("v2_backbone"), device=device)
    with pytest.raises(VMambaError, match="backbone.*features"):
        bb(np.zeros((1, 3, 64, 64), np.float32))


@pytest.mark.parametrize("shape,match", [
    ((3, 64, 64), "4 dimensions"),
    ((1, 4, 64, 64), "expected 3 input channels, got 4"),
    ((0, 3, 64, 64), "empty batch"),
])
def test_bad_shapes(model, shape, match):
    with pytest.raises(ValueError, match=match):
        model(np.zeros(shape, np.float32))


def test_too_small_input_names_the_minimum(converted, device):
    v1_stem = vmamba_rt.load(converted("v0_small"), device=device)  # 4x4 patches, stride 4
    assert v1_stem.min_size == 4
    with pytest.raises(VMambaError, match="input of 3x9 pixels is too small.*at least 4x4"):
        v1_stem(np.zeros((1, 3, 3, 9), np.float32))
    assert v1_stem(np.zeros((1, 3, 4, 4), np.float32)).shape == (1, 10)


def test_integer_input_is_refused(model):
    with pytest.raises(TypeError, match="floating-point"):
        model(np.zeros((1, 3, 64, 64), np.uint8))


def test_float64_and_non_contiguous_inputs_are_converted(model, device):
    x = np.load(GOLDEN / "v2_s1_small.input.npy")
    want = model(x)
    assert same(model(x.astype(np.float64).astype(np.float32)), want, device)
    wide = np.zeros((1, 3, x.shape[2], 2 * x.shape[3]), np.float32)
    wide[..., ::2] = x
    assert same(model(wide[..., ::2]), want, device)
    assert np.allclose(model(x.astype(np.float64)), want, rtol=0, atol=1e-6)
