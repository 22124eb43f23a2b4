"""End to end: the bundled digits model, predict(), and the classify command."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vmamba_rt

from conftest import GOLDEN, rel_err

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def digits():
    return vmamba_rt.load()


def test_default_model_is_the_digits_model(digits):
    assert digits.labels == [str(i) for i in range(10)]
    assert digits.preprocess.input_size == 64 and digits.preprocess.resize == "squash"


def test_digits_match_the_official_model_on_every_test_image(digits):
    z = np.load(GOLDEN / "digits_test.npz")
    want = np.load(GOLDEN / "digits_test_logits.npy")
    got = digits(digits.preprocess.batch(list(z["images"])))
    assert rel_err(got, want) < 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert (got.argmax(1) == z["labels"]).mean() > 0.95


def test_predict_accepts_paths_pil_and_arrays(digits):
    path = ROOT / "examples/images/digit_3.png"
    arr = np.asarray(Image.open(path))
    a, b, c = digits.predict([path, Image.open(path), arr], topk=3)
    assert a == b == c
    assert [label for label, _ in a][0] == "3"
    probs = [p for _, p in a]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    assert len(digits.predict(str(path), topk=10)[0]) == 10


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vmamba_rt.cli", *map(str, args)], capture_output=True, text=True)


def test_classify_command_on_a_folder_with_json():
    out = _cli("classify", ROOT / "examples/images", "--json", "--topk", "2")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["digit_3.png", "digit_7.png"]
    assert [r["top"][0]["label"] for r in rows] == ["3", "7"]
    assert out.stderr == ""  # no progress bar when not on a terminal


def test_classify_command_text_and_errors():
    out = _cli("classify", ROOT / "examples/images/digit_7.png", "--topk", "1")
    assert out.returncode == 0 and out.stdout.splitlines()[1].strip().endswith("7")
    bad = _cli("classify", "no/such/file.png")
    assert bad.returncode == 1 and "no such image" in bad.stderr
    unknown = _cli("classify", ROOT / "examples/images", "--model", "vmamba-huge")
    assert unknown.returncode == 1 and "unknown model 'vmamba-huge'" in unknown.stderr


def test_converted_imagenet_classifier_carries_labels_and_preprocessing(tmp_path):
    from torchfmt import write_pth

    cfg = json.loads(vmamba_rt._native.Model.preset_json("vmamba-tiny-s1l8"))
    cfg.update(dims=8, depths=[1, 1, 1, 1])  # small, but 1000 classes
    shapes = vmamba_rt._native.parameter_shapes(json.dumps(cfg))
    rng = np.random.default_rng(0)
    write_pth(tmp_path / "in1k.pth", {k: rng.standard_normal(s).astype(np.float32) * 0.02 for k, s in shapes})
    model = vmamba_rt.load(vmamba_rt.convert(tmp_path / "in1k.pth", tmp_path / "in1k.safetensors"))
    assert len(model.labels) == 1000 and model.labels[0] == "tench" and model.labels[999] == "toilet tissue"
    assert model.preprocess.input_size == 224 and model.preprocess.resize == "crop"
