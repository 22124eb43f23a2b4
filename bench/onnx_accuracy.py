"""The ONNX export against the official outputs and the vmamba-rt engine, in
ONNX Runtime: the figures the ONNX export issue asks for (every golden case and
variant within 1e-4 in fp32, fp16 within 2e-2, the digits labels), as the
worst relative error of each set (largest difference over the largest output).

    python bench/onnx_accuracy.py                                      # golden cases, shipped variants, digits
    python bench/onnx_accuracy.py --variants ../shared/golden/variants  # all 39 variants
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

import vmamba_rt
from vmamba_rt.onnx_export import export_onnx

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def run(path: str, x: np.ndarray) -> list:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})


def golden(tmp: Path) -> dict:
    worst = {"official": 0.0, "engine": 0.0, "fp16": 0.0}
    for js in sorted(GOLDEN.glob("*.json")):
        meta = json.loads(js.read_text())
        case = meta["case"]
        model = vmamba_rt.load(vmamba_rt.convert(GOLDEN / f"{case}.pth", tmp / f"{case}.safetensors"))
        x = np.load(GOLDEN / f"{case}.input.npy")
        if meta["backbone"]:
            wants, ours = [np.load(GOLDEN / n) for n in meta["expected"]], model.features(x)
        else:
            wants, ours = [np.load(GOLDEN / meta["expected"])], [model(x)]
        for dtype in ("float32", "float16"):
            got = run(export_onnx(model, tmp / f"{case}.onnx", input_size=x.shape[2:], dtype=dtype).path, x)
            for g, w, o in zip(got, wants, ours, strict=True):
                if dtype == "float32":
                    worst["official"] = max(worst["official"], rel_err(g, w))
                    worst["engine"] = max(worst["engine"], rel_err(g, o))
                else:
                    worst["fp16"] = max(worst["fp16"], rel_err(g, o))
    return worst


def variants(folder: Path, tmp: Path) -> tuple[int, dict]:
    worst = {"official": 0.0, "engine": 0.0}
    cases = sorted(p.stem for p in folder.glob("*.json"))
    for case in cases:
        model = vmamba_rt.load(vmamba_rt.convert(folder / f"{case}.pth", tmp / f"{case}.safetensors"))
        x = np.load(folder / f"{case}.input.npy")
        got = run(export_onnx(model, tmp / "v.onnx", input_size=x.shape[2:]).path, x)[0]
        worst["official"] = max(worst["official"], rel_err(got, np.load(folder / f"{case}.expected.npy")))
        worst["engine"] = max(worst["engine"], rel_err(got, model(x)))
    return len(cases), worst


def digits(tmp: Path) -> tuple[int, int, float]:
    model = vmamba_rt.load()
    z = np.load(GOLDEN / "digits_test.npz")
    x = model.preprocess.batch(list(z["images"]))
    want = model(x)
    same = int((run(export_onnx(model, tmp / "d.onnx").path, x)[0].argmax(1) == want.argmax(1)).sum())
    half = rel_err(run(export_onnx(model, tmp / "h.onnx", dtype="float16").path, x)[0], want)
    return same, len(x), half


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", type=Path, default=GOLDEN / "variants",
                    help="a folder of official variant goldens (default: the shipped ones)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print(f"onnxruntime {ort.__version__}, vmamba-rt {vmamba_rt.__version__}; worst relative error of each set\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        g = golden(tmp)
        n, v = variants(args.variants, tmp)
        same, total, half = digits(tmp)
    print("| set | vs official | vs vmamba-rt | fp16 export vs vmamba-rt |")
    print("|---|---|---|---|")
    print(f"| golden cases | {g['official']:.2e} | {g['engine']:.2e} | {g['fp16']:.2e} |")
    print(f"| {n} variants ({args.variants}) | {v['official']:.2e} | {v['engine']:.2e} | |")
    print(f"| digits, {total} images | | top-1 equal: {same}/{total} | {half:.2e} |")


if __name__ == "__main__":
    main()
