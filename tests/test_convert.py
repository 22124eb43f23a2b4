"""The converter: containers, key names, dtypes, and errors that name the problem."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import vmamba_rt
from vmamba_rt import ConversionError, VMambaError

from conftest import GOLDEN, rel_err
from torchfmt import BF16, write_pth

CASE = "v2_s1_small"


@pytest.fixture(scope="module")
def ref(converted):
    """(state dict, input, official logits) of a small v2 classifier."""
    sd = load_file(converted(CASE))
    x = np.load(GOLDEN / f"{CASE}.input.npy")
    return sd, x, np.load(GOLDEN / f"{CASE}.expected.npy")


def _convert_and_run(tmp_path, obj, x, **kw):
    src = tmp_path / "ckpt.pth"
    write_pth(src, obj)
    dst = vmamba_rt.convert(src, tmp_path / "out.safetensors", **kw)
    return vmamba_rt.load(dst)(x)


def test_converted_file_describes_itself(converted):
    with safe_open(converted(CASE), "numpy") as f:
        meta = f.metadata()
    cfg = json.loads(meta["vmamba_rt.config"])
    assert cfg["dims"] == 24 and cfg["forward_type"] == "v05_noz"
    assert meta["vmamba_rt.source"].endswith(":state dict")


def test_plain_state_dict_with_ddp_prefix(tmp_path, ref):
    sd, x, want = ref
    out = _convert_and_run(tmp_path, {f"module.{k}": v for k, v in sd.items()}, x)
    assert rel_err(out, want) < 1e-4


def test_training_checkpoint_without_config_is_inferred(tmp_path, ref):
    sd, x, want = ref
    out = _convert_and_run(tmp_path, {"model": sd, "epoch": 3, "max_accuracy": 0.5}, x)
    assert rel_err(out, want) < 1e-4


def test_mmseg_checkpoint_keeps_only_the_backbone(tmp_path, converted):
    sd = load_file(converted("v2_backbone"))
    obj = {"meta": {"mmseg_version": "1.2"}, "state_dict": {
        **{f"backbone.{k}": v for k, v in sd.items()},
        "decode_head.conv_seg.weight": np.zeros((4, 8, 1, 1), np.float32)}}
    src = tmp_path / "seg.pth"
    write_pth(src, obj)
    model = vmamba_rt.load(vmamba_rt.convert(src, tmp_path / "seg.safetensors"))
    assert model.is_backbone and model.config["out_indices"] == [0, 1, 2, 3]
    x = np.load(GOLDEN / "v2_backbone.input.npy")
    for got, i in zip(model.features(x), range(4)):
        assert rel_err(got, np.load(GOLDEN / f"v2_backbone.expected.{i}.npy")) < 1e-4


def test_bfloat16_and_float16_weights_are_widened(tmp_path, ref):
    sd, x, want = ref
    half = _convert_and_run(tmp_path, {k: v.astype(np.float16) for k, v in sd.items()}, x)
    bf16 = _convert_and_run(tmp_path, {k: BF16(v) for k, v in sd.items()}, x)
    # Rounding the weights moves the logits a little, not a lot.
    assert rel_err(half, want) < 2e-2
    assert rel_err(bf16, want) < 1e-1
    # bf16 truncation is exact when the weights already fit in bf16.
    trunc = {k: ((v.view(np.uint32) >> 16) << 16).view(np.float32) for k, v in sd.items()}
    a = _convert_and_run(tmp_path, {k: BF16(v) for k, v in trunc.items()}, x)
    b = _convert_and_run(tmp_path, trunc, x)
    assert np.array_equal(a, b)


def test_ema_requested_but_absent(tmp_path, ref):
    src = tmp_path / "c.pth"
    write_pth(src, {"model": ref[0]})
    with pytest.raises(ConversionError, match="no 'model_ema'"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors", ema=True)


def test_not_a_checkpoint(tmp_path):
    txt = tmp_path / "notes.pth"
    txt.write_text("hello")
    with pytest.raises(ConversionError, match="not a torch checkpoint"):
        vmamba_rt.convert(txt, tmp_path / "o.safetensors")
    import zipfile

    z = tmp_path / "other.pth"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "x")
    with pytest.raises(ConversionError, match="without a data.pkl"):
        vmamba_rt.convert(z, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_architecture_that_cannot_be_determined(tmp_path):
    src = tmp_path / "mystery.pth"
    write_pth(src, {"encoder.weight": np.zeros((4, 4), np.float32)})
    with pytest.raises(ConversionError, match="cannot determine the architecture.*patch_embed"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")
    # A tensor the inference reads with too few dimensions is named (it was an IndexError).
    write_pth(src, {"patch_embed.0.weight": np.zeros((8, 3, 4, 4), np.float32),
                    "layers.0.blocks.0.op.A_logs": np.zeros(8, np.float32),
                    "classifier.head.weight": np.zeros((10, 8), np.float32)})
    with pytest.raises(ConversionError, match="'layers.0.blocks.0.op.A_logs' has shape \\[8\\], too few dimensions"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")


def test_inconsistent_weights_name_the_tensor_and_write_nothing(tmp_path, ref):
    sd = dict(ref[0])
    sd["layers.2.blocks.1.op.Ds"] = np.zeros(7, np.float32)
    src = tmp_path / "bad.pth"
    write_pth(src, sd)
    with pytest.raises(ConversionError, match=r"layers\.2\.blocks\.1\.op\.Ds.*\[7\]"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")
    assert os.listdir(tmp_path) == ["bad.pth"]


def test_hostile_global_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    pkl = b"\x80\x02cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode() + b"\x85R."
    src = tmp_path / "evil.pth"
    write_pth(src, None, raw_pickle=pkl)
    with pytest.raises(ConversionError, match="refusing to load global 'os.system'"):
        vmamba_rt.convert(src, tmp_path / "o.safetensors")
    assert not marker.exists()


def _load_error(tmp_path, sd, converted):
    with safe_open(converted(CASE), "numpy") as f:
        meta = f.metadata()
    path = tmp_path / "w.safetensors"
    save_file(sd, path, metadata=meta)
    with pytest.raises(VMambaError) as e:
        vmamba_rt.load(path)
    return str(e.value)


def test_loading_names_missing_unexpected_and_misshapen_tensors(tmp_path, ref, converted):
    sd = dict(ref[0])
    del sd["layers.1.blocks.0.mlp.fc1.bias"]
    assert "missing tensor 'layers.1.blocks.0.mlp.fc1.bias'" in _load_error(tmp_path, sd, converted)
    sd = dict(ref[0], **{"extra.weight": np.zeros(3, np.float32)})
    assert "unexpected tensor 'extra.weight'" in _load_error(tmp_path, sd, converted)
    sd = dict(ref[0], **{"classifier.head.weight": np.zeros((10, 5), np.float32)})
    msg = _load_error(tmp_path, sd, converted)
    assert "'classifier.head.weight' has shape [10, 5], expected [10, 192]" in msg


def test_loading_a_file_without_config(tmp_path, ref):
    path = tmp_path / "plain.safetensors"
    save_file(ref[0], path)
    with pytest.raises(VMambaError, match="no 'vmamba_rt.config'"):
        vmamba_rt.load(path)


def test_command_line_convert(tmp_path):
    dst = tmp_path / "cli.safetensors"
    run = [sys.executable, "-m", "vmamba_rt.cli", "convert"]
    ok = subprocess.run(run + [str(GOLDEN / "v0_small.pth"), "-o", str(dst), "--ema"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    x = np.load(GOLDEN / "v0_small.input.npy")
    assert rel_err(vmamba_rt.load(dst)(x), np.load(GOLDEN / "v0_small.expected_ema.npy")) < 1e-4
    bad = subprocess.run(run + [str(GOLDEN / "v0_small.json"), "-o", str(tmp_path / "x.safetensors")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "not a torch checkpoint" in bad.stderr
    assert not (tmp_path / "x.safetensors").exists()
