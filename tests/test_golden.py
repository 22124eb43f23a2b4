"""Every golden case converts and matches the official implementation's output."""

import numpy as np
import pytest

import vmamba_rt

from conftest import GOLDEN, golden_cases, golden_meta, rel_err

TOL = 1e-4  # of the expected output's largest magnitude (fp32)


@pytest.mark.parametrize("case,ema", golden_cases(), ids=lambda v: str(v))
def test_golden_case_matches_official_output(case, ema, converted, device):
    meta = golden_meta(case)
    model = vmamba_rt.load(converted(case, ema), device=device)
    x = np.load(GOLDEN / f"{case}.input.npy")
    assert list(x.shape) == meta["input_shape"]
    if meta["backbone"]:
        feats = model.features(x)
        assert len(feats) == len(meta["expected"])
        for got, name in zip(feats, meta["expected"]):
            assert rel_err(got, np.load(GOLDEN / name)) < TOL
    else:
        want = np.load(GOLDEN / (meta["expected_ema"] if ema else meta["expected"]))
        assert rel_err(model(x), want) < TOL


@pytest.mark.parametrize("case", sorted({c for c, _ in golden_cases()}))
def test_converted_config_matches_constructor_arguments(case, converted):
    meta = golden_meta(case)
    cfg = vmamba_rt.load(converted(case)).config
    for key in ("dims", "depths", "ssm_d_state", "ssm_ratio", "ssm_conv_bias", "forward_type", "mlp_ratio",
                "patchembed_version", "downsample_version"):
        assert cfg[key] == meta["vssm_kwargs"][key], key
    assert cfg["out_indices"] == meta["out_indices"]


def test_ema_weights_differ_from_model_weights(converted):
    x = np.load(GOLDEN / "v2_s2_small.input.npy")
    a = vmamba_rt.load(converted("v2_s2_small"))(x)
    b = vmamba_rt.load(converted("v2_s2_small", True))(x)
    assert np.abs(a - b).max() > 1e-3


def test_batch_elements_are_independent(converted, device):
    model = vmamba_rt.load(converted("v0_small"), device=device)
    x = np.load(GOLDEN / "v0_small.input.npy")
    both = model(x)
    for i in range(x.shape[0]):
        assert rel_err(model(x[i : i + 1]), both[i : i + 1]) < 1e-5


def test_classifier_features_are_the_four_stage_outputs(converted, device):
    model = vmamba_rt.load(converted("v2_s1_small"), device=device)
    feats = model.features(np.load(GOLDEN / "v2_s1_small.input.npy"))
    dims = model.config["dims"]
    # 72x56 input: stride 4, 8, 16, 32 with the v2 stem and v3 downsampling (ceil division)
    assert [f.shape for f in feats] == [(1, dims, 18, 14), (1, 2 * dims, 9, 7), (1, 4 * dims, 5, 4), (1, 8 * dims, 3, 2)]


def test_threads_setting_gives_identical_results(converted):
    x = np.load(GOLDEN / "v2_s1_small.input.npy")
    one = vmamba_rt.load(converted("v2_s1_small"), num_threads=1)(x)
    two = vmamba_rt.load(converted("v2_s1_small"), num_threads=2)(x)
    assert rel_err(one, two) < 1e-5
