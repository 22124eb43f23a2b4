"""Everyday use: the command line and the API as users of timm and onnxruntime expect them.

CLI tests run the real command in a subprocess.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vmamba_rt
from vmamba_rt import VMambaError

from conftest import GOLDEN, same

ROOT = Path(__file__).parent.parent
IMAGES = ROOT / "examples" / "images"


def run(*args, env=None, module="vmamba_rt"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, **(env or {})))


def _folder_with_a_bad_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in IMAGES.glob("*.png"):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image at all")
    return folder


# The command line -----------------------------------------------------------------------

def test_version_and_python_dash_m():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"vmamba-rt {vmamba_rt.__version__}"
    r = run("classify", IMAGES / "digit_3.png", "--topk", "1")
    assert r.returncode == 0 and r.stdout.splitlines()[1].strip().endswith("3")


def test_help_shows_every_option_with_its_default():
    r = run("classify", "--help")
    for text in ["--topk", "(default: 5)", "--batch", "(default: 8)", "--threads", "--device", "--dtype",
                 "--multi-label", "--json"]:
        assert text in r.stdout, text
    assert "--prefix" in run("convert", "--help").stdout


def test_classify_goes_on_past_bad_files_and_fails_at_the_end(tmp_path):
    folder = _folder_with_a_bad_file(tmp_path)
    r = run("classify", folder, "--json")
    assert r.returncode == 1
    rows = {Path(row["image"]).name: row for row in map(json.loads, r.stdout.splitlines())}
    assert set(rows) == {"broken.png", "digit_3.png", "digit_7.png"}
    assert "error" in rows["broken.png"] and "top" not in rows["broken.png"]
    assert rows["digit_3.png"]["top"][0]["label"] == "3" and rows["digit_7.png"]["top"][0]["label"] == "7"
    assert "broken.png" in r.stderr and "1 of 3 images could not be classified" in r.stderr
    text = run("classify", folder)
    assert text.returncode == 1 and "digit_7.png" in text.stdout and "broken.png" in text.stderr


def test_empty_folder_is_a_warning(tmp_path):
    r = run("classify", tmp_path)
    assert r.returncode == 0 and "warning: no images in" in r.stderr


def test_threads_device_and_dtype_options():
    r = run("classify", IMAGES / "digit_7.png", "--threads", "1", "--topk", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["top"][0]["label"] == "7"
    bad = run("classify", IMAGES / "digit_7.png", "--threads", "-2")
    assert bad.returncode == 2 and "--threads" in bad.stderr
    cpu16 = run("classify", IMAGES / "digit_7.png", "--dtype", "float16")
    assert cpu16.returncode == 1 and "CPU engine runs float32 or bfloat16" in cpu16.stderr
    bf16 = run("classify", IMAGES / "digit_7.png", "--dtype", "bfloat16", "--topk", "1", "--json")
    assert bf16.returncode == 0 and json.loads(bf16.stdout)["top"][0]["label"] == "7"
    assert "vmamba-rt: warning: dtype='bfloat16' on the CPU" in bf16.stderr, bf16.stderr


def test_progress_bar_keeps_results_whole_on_a_terminal(tmp_path):
    """Under a pseudo-terminal: the bar (tqdm, with a rate) on stderr, every result line intact."""
    import fcntl
    import pty
    import struct
    import termios

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        (folder / f"im{i:02d}.png").write_bytes((IMAGES / "digit_3.png").read_bytes())
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    proc = subprocess.Popen([sys.executable, "-m", "vmamba_rt", "classify", str(folder), "--batch", "4",
                             "--topk", "1"], stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)  # the child holds its own copy
    chunks = []

    def drain():
        while True:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO once the child has closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = proc.communicate(timeout=120)
    reader.join(timeout=30)
    os.close(master)
    err = b"".join(chunks)
    assert proc.returncode == 0
    lines = out.splitlines()
    assert [line for line in lines if not line.startswith(" ")] == [str(folder / f"im{i:02d}.png") for i in range(12)]
    assert b"img/s" in err and b"/12 " in err  # tqdm: count, rate, ETA


def test_models_lists_the_bundled_default_and_has_json():
    r = run("models")
    assert r.returncode == 0 and r.stdout.splitlines()[1].startswith("digits (default)")
    rows = [json.loads(line) for line in run("models", "--json").stdout.splitlines()]
    assert rows[0]["path"] == vmamba_rt.DEFAULT_MODEL and rows[0]["downloaded"] is True
    assert {r["name"] for r in rows[1:]} >= {"vmamba-tiny-s1l8", "vanilla-vmamba-tiny"}


def test_convert_with_a_prefix(tmp_path):
    from vmamba_rt.checkpoint import load_pth

    from torchfmt import write_pth

    sd = {k: v.numpy() for k, v in load_pth(GOLDEN / "v2_s1_small.pth").items()}
    nested = {f"visual_encoder.{k}": v for k, v in sd.items()}
    nested["text_encoder.w"] = np.zeros(2, np.float32)
    write_pth(tmp_path / "ft.pth", {"model": nested})
    r = run("convert", tmp_path / "ft.pth", "--prefix", "visual_encoder.", "-o", tmp_path / "ft.safetensors")
    assert r.returncode == 0, r.stderr
    x = np.load(GOLDEN / "v2_s1_small.input.npy")
    ref = vmamba_rt.load(vmamba_rt.convert(GOLDEN / "v2_s1_small.pth", tmp_path / "ref.safetensors"))
    assert np.array_equal(vmamba_rt.load(tmp_path / "ft.safetensors")(x), ref(x))
    r = run("convert", tmp_path / "ft.pth", "--prefix", "nope.")
    assert r.returncode == 1 and "no weight names start with prefix 'nope.'" in r.stderr


# The API --------------------------------------------------------------------------------

def test_loading_a_pth_says_how_to_convert_or_converts_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VMAMBA_RT_HOME", str(tmp_path / "cache"))
    with pytest.raises(VMambaError, match="PyTorch checkpoint.*vmamba-rt convert.*convert=True"):
        vmamba_rt.load(GOLDEN / "v2_s1_small.pth")
    model = vmamba_rt.load(GOLDEN / "v2_s1_small.pth", convert=True)
    assert model.path.startswith(str(tmp_path / "cache" / "converted"))
    x = np.load(GOLDEN / "v2_s1_small.input.npy")
    assert np.abs(model(x) - np.load(GOLDEN / "v2_s1_small.expected.npy")).max() < 1e-3
    again = vmamba_rt.load(GOLDEN / "v2_s1_small.pth", convert=True)
    assert again.path == model.path  # converted once


def test_cache_follows_xdg_and_hub_is_reachable(monkeypatch, tmp_path):
    monkeypatch.delenv("VMAMBA_RT_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert vmamba_rt.hub.home() == str(tmp_path / "vmamba-rt")
    assert vmamba_rt.download is vmamba_rt.hub.download


def test_unknown_names_and_api_words():
    with pytest.raises(VMambaError, match="unknown model 'vmamba-huge'"):
        vmamba_rt.load("vmamba-huge")
    with pytest.raises(VMambaError, match="download=True"):
        vmamba_rt.load("vmamba-tiny-s1l8")
    with pytest.raises(vmamba_rt.ConversionError, match=r"ema=True") as e:
        vmamba_rt.convert(GOLDEN / "v2_s1_small.pth", "/tmp/x.safetensors", ema=True)
    assert "--ema" not in str(e.value)


def test_feature_info_and_out_indices(device):
    model = vmamba_rt.load(device=device)
    assert [f["num_chs"] for f in model.feature_info] == [32, 64, 128, 256]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    x = np.zeros((2, 3, 64, 64), np.float32)
    maps = model.features(x, out_indices=[1, 3])
    assert [m.shape for m in maps] == [(2, 64, 8, 8), (2, 256, 2, 2)]
    all_maps = model.features(x)
    assert same(maps[1], all_maps[3], device)
    picked = vmamba_rt.load(out_indices=[2], device=device)
    assert [m.shape[1] for m in picked.features(x)] == [128] and picked.feature_info[0]["reduction"] == 16
    with pytest.raises(VMambaError, match="out_indices"):
        model.features(x, out_indices=[7])


def test_backbone_feature_info_lists_its_outputs(converted, device):
    model = vmamba_rt.load(converted("v2_backbone"), device=device)
    assert [f["index"] for f in model.feature_info] == model.config["out_indices"]
    with pytest.raises(VMambaError, match="backbone"):
        model.embeddings(np.zeros((1, 3, 64, 64), np.float32))


def test_embeddings_are_the_pooled_pre_logits(device):
    model = vmamba_rt.load(device=device)
    x = model.preprocess.batch([str(IMAGES / "digit_3.png"), str(IMAGES / "digit_7.png")])
    emb = model.embeddings(x)
    assert emb.shape == (2, model.num_features) == (2, 256)
    from safetensors.numpy import load_file

    sd = load_file(vmamba_rt.DEFAULT_MODEL)
    logits = emb @ sd["classifier.head.weight"].T + sd["classifier.head.bias"]
    assert np.allclose(logits, model(x), atol=1e-4)


def test_multi_label_probabilities_are_independent_sigmoids():
    model = vmamba_rt.load()
    x = model.preprocess.batch([str(IMAGES / "digit_3.png")])
    logits = model(x)[0].astype(np.float64)
    top = model.classify(x, topk=10, multi_label=True)[0]
    want = 1 / (1 + np.exp(-logits))
    assert np.allclose(sorted(p for _, p in top), sorted(want))
    assert abs(sum(p for _, p in model.classify(x, topk=10)[0]) - 1) < 1e-9
    assert model.predict(str(IMAGES / "digit_3.png"), topk=1, multi_label=True)[0][0][0] == "3"


def test_readme_snippets_run(tmp_path):
    """The README's Python API block, with its placeholders filled in, runs as written."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "features(x)" not in block or "x = " in block
    ckpt = tmp_path / "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    ckpt.write_bytes((GOLDEN / "v2_s2_small.pth").read_bytes())
    Image.new("RGB", (32, 32)).save(tmp_path / "cat.jpg")
    code = block.replace('np.zeros((2, 3, 224, 224), np.float32)', 'np.zeros((2, 3, 64, 64), np.float32)')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README", "exec"), {})
    finally:
        os.chdir(cwd)


def test_file_format_is_one_definition_and_its_version_is_checked(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    fmt = vmamba_rt._native.FORMAT
    assert fmt["version"] == 1 and fmt["config"] == "vmamba_rt.config"
    import importlib

    from vmamba_rt import labels, preprocess

    conv_mod = importlib.import_module("vmamba_rt.convert")  # the package's `convert` is the function
    assert (conv_mod.META_CONFIG, labels.META_LABELS, preprocess.META_PREPROCESS) == (
        fmt["config"], fmt["labels"], fmt["preprocess"])
    with safe_open(vmamba_rt.DEFAULT_MODEL, "numpy") as f:
        meta = f.metadata()
    meta[fmt["format"]] = "7"
    save_file(load_file(vmamba_rt.DEFAULT_MODEL), tmp_path / "future.safetensors", metadata=meta)
    with pytest.raises(VMambaError, match="future.safetensors.*format 7 by a newer vmamba-rt"):
        vmamba_rt.load(tmp_path / "future.safetensors")


def test_profile_times_every_kind_of_op_the_plan_holds():
    model = vmamba_rt.load()
    x = np.zeros((1, 3, 64, 64), np.float32)
    times = dict(model._native.profile(x))
    kinds = {op["op"] for op in json.loads(model._native.plan_json((1, 3, 64, 64), "logits"))["ops"]}
    # An activation right after a linear op runs inside the GEMM and counts as "linear".
    assert set(times) <= kinds and {"linear", "cross_scan", "layer_norm"} <= set(times)
    assert times["linear"] > 0 and all(v >= 0 for v in times.values())
    with pytest.raises(vmamba_rt.VMambaError, match="channels"):
        model._native.profile(np.zeros((1, 2, 64, 64), np.float32))
