"""ONNX export (docs/onnx.md): every op kind against the CPU engine, every golden
case and shipped variant in ONNX Runtime against the engine and the official
outputs, the digits labels, fp16, dynamic batch, OpenVINO, and bad arguments.
Needs the onnx extra (installed by the test command); skips, saying so, without it."""

import json
import os

import numpy as np
import pytest

import vmamba_rt
from opcases import op_cases, random_inputs, run_cpu
from test_variants import ALL, SHIPPED, _cases
from vmamba_rt import _native

from conftest import GOLDEN, golden_cases, golden_meta, rel_err

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'vmamba-rt[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'vmamba-rt[onnx]')")

from vmamba_rt.onnx_export import SCAN_FORMS, ExportError, _Exporter, export_onnx, op_model  # noqa: E402

TOL = 1e-4


def session(path_or_proto):
    """An ONNX Runtime session on the CPU for a file or a model proto."""
    source = os.fspath(path_or_proto) if isinstance(path_or_proto, (str, os.PathLike)) \
        else path_or_proto.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run(path, x) -> list:
    return session(path).run(None, {"input": np.ascontiguousarray(x, np.float32)})


def test_every_op_kind_of_the_schema_has_an_exporter_method():
    assert set(_Exporter.OPS) == set(_native.OP_KINDS)


@pytest.mark.parametrize("scan", SCAN_FORMS)
@pytest.mark.parametrize("seed", range(3))
def test_every_op_matches_the_cpu_engine(seed, scan):
    """Each op kind alone on random shapes, written as ONNX and run in ONNX
    Runtime, against the Rust CPU engine (as tests/test_cuda.py for CUDA)."""
    rng = np.random.default_rng(seed)
    kinds = set()
    for op, lens, plens, f32 in op_cases(rng, rowwise=True):
        if scan != "chunked" and op["op"] != "cross_scan":
            continue
        bufs, params = random_inputs(rng, op, lens, plens)
        want = run_cpu(op, bufs, params)
        got = session(op_model([op], lens, params, f32, scan=scan)).run(
            None, {f"buf{i}": b for i, b in enumerate(bufs)})
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert rel_err(g, w) < 1e-5, (op, i)
        kinds.add(op["op"])
    assert kinds == (set(_native.OP_KINDS) if scan == "chunked" else {"cross_scan"}), kinds


@pytest.mark.parametrize("case,ema", golden_cases(), ids=lambda v: str(v))
def test_golden_case_exports_exactly(case, ema, converted, tmp_path):
    meta = golden_meta(case)
    model = vmamba_rt.load(converted(case, ema))
    x = np.load(GOLDEN / f"{case}.input.npy")
    info = export_onnx(model, tmp_path / "m.onnx", input_size=x.shape[2:])
    got = run(info.path, x)
    if meta["backbone"]:
        wants = [np.load(GOLDEN / name) for name in meta["expected"]]
        ours = model.features(x)
    else:
        wants = [np.load(GOLDEN / (meta["expected_ema"] if ema else meta["expected"]))]
        ours = [model(x)]
    assert len(got) == len(wants)
    for g, w, o in zip(got, wants, ours):
        assert rel_err(g, w) < TOL and rel_err(g, o) < TOL


@pytest.mark.parametrize("case", _cases(SHIPPED))
def test_shipped_variant_exports_exactly(case, tmp_path):
    path = vmamba_rt.convert(SHIPPED / f"{case}.pth", tmp_path / f"{case}.safetensors")
    model = vmamba_rt.load(path)
    x = np.load(SHIPPED / f"{case}.input.npy")
    info = export_onnx(model, tmp_path / "m.onnx", input_size=x.shape[2:])
    got = run(info.path, x)[0]
    assert rel_err(got, np.load(SHIPPED / f"{case}.expected.npy")) < TOL
    assert rel_err(got, model(x)) < TOL


@pytest.mark.skipif(not _cases(ALL), reason="set VMAMBA_RT_VARIANTS to a folder of all 39 official variant goldens")
@pytest.mark.parametrize("case", _cases(ALL) or ["none"])
def test_every_official_variant_exports_exactly(case, tmp_path):
    from pathlib import Path

    folder = Path(ALL)
    model = vmamba_rt.load(vmamba_rt.convert(folder / f"{case}.pth", tmp_path / f"{case}.safetensors"))
    x = np.load(folder / f"{case}.input.npy")
    got = run(export_onnx(model, tmp_path / "m.onnx", input_size=x.shape[2:]).path, x)[0]
    assert rel_err(got, np.load(folder / f"{case}.expected.npy")) < TOL and rel_err(got, model(x)) < TOL


RELEASED = ["vanilla-vmamba-tiny", "vanilla-vmamba-small", "vanilla-vmamba-base", "vmamba-tiny-s2l5",
            "vmamba-small-s2l15", "vmamba-base-s2l15", "vmamba-tiny-s1l8", "vmamba-small-s1l20", "vmamba-base-s1l20"]


@pytest.mark.parametrize("preset", RELEASED)
def test_every_released_architecture_exports_exactly(preset, tmp_path):
    """The nine released classifiers (random weights, a small input to keep it quick)."""
    model = vmamba_rt.Model.random(preset, seed=1)
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert rel_err(run(export_onnx(model, tmp_path / "m.onnx", input_size=64).path, x)[0], model(x)) < TOL


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The bundled model, exported with a dynamic batch, and its test split."""
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    info = export_onnx(None, path)
    z = np.load(GOLDEN / "digits_test.npz")
    model = vmamba_rt.load()
    return info, model, model.preprocess.batch(list(z["images"]))


def test_digits_export_gives_the_same_450_labels(digits):
    info, model, x = digits
    got = run(info.path, x)[0]
    assert x.shape[0] == 450
    assert np.array_equal(got.argmax(1), model(x).argmax(1))
    assert rel_err(got, np.load(GOLDEN / "digits_test_logits.npy")) < TOL


def test_dynamic_batch_fixed_batch_and_a_clear_error_at_another_size(digits, tmp_path):
    info, model, x = digits
    assert info.input_shape == ("batch", 3, 64, 64)
    sess = session(info.path)
    for n in (1, 3, 8):
        assert rel_err(sess.run(None, {"input": x[:n]})[0], model(x[:n])) < TOL
    fixed = export_onnx(model, tmp_path / "b2.onnx", batch=2)
    graph_input = onnx.load(fixed.path).graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in graph_input.dim] == [2, 3, 64, 64]
    assert rel_err(run(fixed.path, x[:2])[0], model(x[:2])) < TOL
    with pytest.raises(Exception, match="(?i)dimension"):
        sess.run(None, {"input": np.zeros((1, 3, 72, 72), np.float32)})
    # Another size is another export.
    wide = export_onnx(model, tmp_path / "wide.onnx", input_size=(72, 88))
    y = np.random.default_rng(0).standard_normal((2, 3, 72, 88)).astype(np.float32)
    assert rel_err(run(wide.path, y)[0], model(y)) < TOL


@pytest.mark.parametrize("scan", SCAN_FORMS)
@pytest.mark.parametrize("arch", ["v2", "v0"])
def test_scan_forms_agree_with_the_engine(arch, scan, tmp_path):
    """Each form of the scan, on state sizes 1 and 16 and on maps whose length
    is no square (the chunked form pads its last chunk)."""
    cfg = json.loads(_native.Model.preset_json("vmamba-tiny-s1l8" if arch == "v2" else "vanilla-vmamba-tiny"))
    cfg.update(dims=16, depths=[1, 1, 1, 1], num_classes=7)
    model = vmamba_rt.Model.random(cfg, seed=3)
    x = np.random.default_rng(1).standard_normal((2, 3, 52, 44)).astype(np.float32)
    info = export_onnx(model, tmp_path / "m.onnx", input_size=(52, 44), scan=scan)
    assert rel_err(run(info.path, x)[0], model(x)) < TOL
    assert rel_err(run(export_onnx(model, tmp_path / "e.onnx", input_size=(52, 44), scan=scan,
                                   outputs="embeddings").path, x)[0], model.embeddings(x)) < TOL
    feats = run(export_onnx(model, tmp_path / "f.onnx", input_size=(52, 44), scan=scan, outputs="features").path, x)
    for g, w in zip(feats, model.features(x), strict=True):
        assert rel_err(g, w) < TOL


def test_float16_export_is_within_its_bound(digits, converted, tmp_path):
    info, model, x = digits
    half = export_onnx(model, tmp_path / "h.onnx", dtype="float16")
    assert half.bytes < 0.6 * info.bytes
    assert rel_err(run(half.path, x)[0], model(x)) < 2e-2
    for case in ("v2_s2_small", "v0_small"):
        m = vmamba_rt.load(converted(case))
        y = np.load(GOLDEN / f"{case}.input.npy")
        path = export_onnx(m, tmp_path / f"{case}.onnx", input_size=y.shape[2:], dtype="float16").path
        assert rel_err(run(path, y)[0], m(y)) < 2e-2


def test_file_passes_the_full_checker_and_carries_the_metadata(digits):
    info, model, _ = digits
    onnx.checker.check_model(info.path, full_check=True)
    proto = onnx.load(info.path)
    props = {p.key: p.value for p in proto.metadata_props}
    for key in ("vmamba_rt.labels", "vmamba_rt.preprocess", "vmamba_rt.config", "vmamba_rt.format"):
        assert props[key] == model.metadata[key]
    assert props["vmamba_rt.onnx.scan"] == "chunked" and props["vmamba_rt.onnx.input_size"] == "64x64"
    assert proto.producer_name == "vmamba-rt" and [o.name for o in proto.graph.output] == ["logits"]
    assert {i.name for i in proto.graph.initializer} >= {"patch_embed.0.weight", "classifier.head.weight"}


def test_backbone_exports_its_features_and_refuses_logits(converted, tmp_path):
    model = vmamba_rt.load(converted("v2_backbone"))
    x = np.load(GOLDEN / "v2_backbone.input.npy")
    info = export_onnx(model, tmp_path / "bb.onnx", input_size=x.shape[2:])
    assert info.outputs == [f"stage{i}" for i in model.out_indices]
    with pytest.raises(ExportError, match="backbone"):
        export_onnx(model, tmp_path / "x.onnx", outputs="logits")
    assert not (tmp_path / "x.onnx").exists()


def _leftovers(folder) -> list:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_bad_arguments_are_typed_errors_naming_them(tmp_path, monkeypatch):
    model = vmamba_rt.load()
    out = tmp_path / "m.onnx"
    bad = [
        (dict(model_or_path=tmp_path / "missing.safetensors"), "missing.safetensors"),
        (dict(outputs="probs"), "outputs must be one of"),
        (dict(input_size=(64, 0)), "input_size must be an integer"),
        (dict(input_size=(1 << 30, 64)), "input_size must be an integer"),
        (dict(input_size="big"), "input_size must be"),
        (dict(batch=0), "batch must be an integer"),
        (dict(batch=True), "batch must be an integer"),
        (dict(dtype="bfloat16"), "dtype must be one of"),
        (dict(scan="fast"), "scan must be one of"),
        (dict(opset=11), "opset must be an integer"),
        (dict(model_or_path=42), "model must be"),
    ]
    for kwargs, message in bad:
        kwargs = {"model_or_path": model, "out_path": out, **kwargs}
        with pytest.raises(vmamba_rt.VMambaError, match=message):
            export_onnx(**kwargs)
    vanilla = vmamba_rt.Model.random("vanilla-vmamba-tiny")  # its stem needs 4 pixels
    with pytest.raises(ExportError, match="input_size 3x8 is below this model's smallest input, 4 pixels"):
        export_onnx(vanilla, out, input_size=(3, 8))
    # Sizes whose plan would be far too large: the core's memory check, named.
    with pytest.raises(vmamba_rt.VMambaError, match="input_size"):
        export_onnx(model, out, input_size=16384, batch=65536)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(vmamba_rt.VMambaError, match="damaged.safetensors"):
        export_onnx(damaged, out)
    # The output path: not the weights themselves, not a folder or a FIFO, in a folder that exists.
    with pytest.raises(ExportError, match="model's own weights"):
        export_onnx(model, model.path)
    with pytest.raises(ExportError, match="not a regular file"):
        export_onnx(model, tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ExportError, match="not a regular file"):
        export_onnx(model, tmp_path / "fifo")
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(model, tmp_path / "no" / "m.onnx")
    cuda_like = vmamba_rt.load()
    cuda_like.dtype = "bfloat16"
    with pytest.raises(ExportError, match="float32 CPU model"):
        export_onnx(cuda_like, out)
    assert not out.exists() and not _leftovers(tmp_path)


def test_a_graph_over_the_one_file_limit_is_refused(tmp_path, monkeypatch):
    import vmamba_rt.onnx_export as export

    monkeypatch.setattr(export, "MAX_FILE", 1 << 20)  # the digits export is 7 MB
    with pytest.raises(ExportError, match="over ONNX's 2 GiB for one file"):
        export_onnx(None, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_an_op_the_exporter_lacks_is_refused_by_name_and_nothing_is_written(tmp_path, monkeypatch):
    model = vmamba_rt.load()
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous export")

    real = model._native

    class Native:  # the model's plans, with an op kind no exporter knows
        def __getattr__(self, name):
            return getattr(real, name)

        def plan_json(self, shape, outputs):
            plan = json.loads(real.plan_json(shape, outputs))
            plan["ops"].insert(3, {"op": "frobnicate", "buf": 2})
            return json.dumps(plan)

    native = Native()
    monkeypatch.setattr(model, "_native", native)
    monkeypatch.setattr(model, "engine", native)  # still the CPU model
    with pytest.raises(ExportError, match="cannot express plan op 'frobnicate'"):
        export_onnx(model, out)
    assert out.read_bytes() == b"the previous export" and not _leftovers(tmp_path)


def test_a_graph_the_checker_refuses_leaves_nothing(tmp_path, monkeypatch):
    model = vmamba_rt.load()
    out = tmp_path / "m.onnx"

    def broken(self, op):  # a node whose input nothing makes
        self.write(op["buf"], self.unary("Relu", type(self.values[op["buf"]])("nowhere", (-1,), "float32")))

    monkeypatch.setitem(_Exporter.OPS, "act", broken)
    with pytest.raises(ExportError, match="fails onnx.checker"):
        export_onnx(model, out)
    assert not out.exists() and not _leftovers(tmp_path)


def test_cli_export(tmp_path, capsys):
    from vmamba_rt.cli import main

    out = tmp_path / "d.onnx"
    assert main(["export", "-o", str(out), "--input-size", "64", "72", "--batch", "2", "--dtype", "float16"]) == 0
    assert "wrote" in capsys.readouterr().out
    shape = onnx.load(out).graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [2, 3, 64, 72]
    assert main(["export", "-o", str(tmp_path / "x.onnx"), "--outputs", "features", "--scan", "loop"]) == 0
    assert main(["export", "-o", str(tmp_path), "--outputs", "embeddings"]) == 1
    assert "not a regular file" in capsys.readouterr().err
    assert main(["export", "-o", str(tmp_path / "y.onnx"), "--input-size", "64", "64", "64"]) == 1
    assert "--input-size takes a side or a height and a width" in capsys.readouterr().err
    assert not (tmp_path / "y.onnx").exists()




@pytest.mark.parametrize("arch", ["vmamba-tiny-s1l8", "vanilla-vmamba-tiny"])
def test_openvino_runs_the_export(arch, tmp_path):
    ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    model = vmamba_rt.Model.random(arch, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    info = export_onnx(model, tmp_path / "m.onnx", input_size=64)
    compiled = ov.Core().compile_model(info.path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert rel_err(compiled(x)[0], model(x)) < TOL
