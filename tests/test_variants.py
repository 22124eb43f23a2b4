"""Every architecture the official code builds (docs/model.md §9): each ablation
configuration converts from its checkpoint and matches the official logits."""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import vmamba_rt
from vmamba_rt.checkpoint import load_pth

from conftest import HERE, plain, rel_err
from torchfmt import write_pth

SHIPPED = HERE / "golden" / "variants"
ALL = os.environ.get("VMAMBA_RT_VARIANTS")  # a folder with all 39 (../shared/golden/variants here)


def _cases(folder) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.json")) if folder and Path(folder).is_dir() else []


def _check(folder: Path, case: str, tmp_path, device: str = "cpu"):
    path = vmamba_rt.convert(folder / f"{case}.pth", tmp_path / f"{case}.safetensors")
    settings = json.loads((folder / f"{case}.json").read_text())
    x = np.load(folder / f"{case}.input.npy")
    want = np.load(folder / f"{case}.expected.npy")
    assert vmamba_rt.load(path).config["forward_type"] == settings["SSM_FORWARDTYPE"]
    assert rel_err(vmamba_rt.load(path, device=device)(x), want) < 1e-4


@pytest.mark.parametrize("case", _cases(SHIPPED))
def test_shipped_variant_matches_official(case, tmp_path, device):
    _check(SHIPPED, case, tmp_path, device)


@pytest.mark.skipif(not _cases(ALL), reason="set VMAMBA_RT_VARIANTS to a folder of all 39 official variant goldens")
@pytest.mark.parametrize("case", _cases(ALL) or ["none"])
def test_every_official_variant_matches(case, tmp_path):
    _check(Path(ALL), case, tmp_path)


def test_position_embedding_takes_only_its_size(tmp_path, device):
    path = vmamba_rt.convert(SHIPPED / "x_posembed_conv3.pth", tmp_path / "pe.safetensors")
    model = vmamba_rt.load(path, device=device)
    assert model.min_size == model.config["imgsize"] == 64
    for side in (48, 68):  # smaller, and larger with a stem output of another size
        with pytest.raises(vmamba_rt.VMambaError, match="position embedding made for 64x64 inputs; got"):
            model(np.zeros((1, 3, side, side), np.float32))


def test_shipped_cases_cover_every_new_setting():
    settings = [json.loads(p.read_text()) for p in SHIPPED.glob("*.json")]
    types = {s["SSM_FORWARDTYPE"] for s in settings}
    assert {"v01", "v05", "v052d_noz", "v052dc_noz", "v05_ondwconv3_noz", "v05_onsoftmax_noz"} <= types
    assert any(s["SSM_CONV"] < 2 for s in settings) and any(s["POSEMBED"] for s in settings)
    assert any(s["GMLP"] for s in settings) and any(not s["PATCH_NORM"] for s in settings)


def test_bare_state_dict_builds_the_variant_its_config_names(tmp_path):
    """Names and shapes cannot tell the bidirectional scan from the cross scan: a
    bare state dict converts as a guess (with a warning), and with the official
    yaml as exactly the variant asked for."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read official yaml configs")
    case = "vmambav2_tiny_224_bidi_ndw"
    ckpt = load_pth(SHIPPED / f"{case}.pth")
    write_pth(tmp_path / "bare.pth", {k: t.numpy() for k, t in ckpt["model"].items()})
    x, want = np.load(SHIPPED / f"{case}.input.npy"), np.load(SHIPPED / f"{case}.expected.npy")
    with pytest.warns(vmamba_rt.ArchitectureGuessWarning):
        guessed = vmamba_rt.load(vmamba_rt.convert(tmp_path / "bare.pth", tmp_path / "guess.safetensors"))
    assert guessed.config["forward_type"] == "v05_noz" and rel_err(guessed(x), want) > 1e-3
    (tmp_path / "bidi.yaml").write_text(yaml.safe_dump(plain(ckpt["config"])))
    with warnings.catch_warnings():
        warnings.simplefilter("error", vmamba_rt.ArchitectureGuessWarning)
        path = vmamba_rt.convert(tmp_path / "bare.pth", tmp_path / "bidi.safetensors", config=tmp_path / "bidi.yaml")
    model = vmamba_rt.load(path)
    assert model.config["forward_type"] == "v052d_noz" and model.config["ssm_conv"] == -1
    assert rel_err(model(x), want) < 1e-4

