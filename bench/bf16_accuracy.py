"""bf16 on the CPU against fp32 and the official outputs: the figures the CPU
speed III issue bounds (every golden case within 2e-2 of its largest output,
the digits split at least 448/450 top-1 labels equal to fp32, the official
variants within 3e-2), printed as tables, with the kernel that ran.

    python bench/bf16_accuracy.py                                  # golden cases, shipped variants, digits
    python bench/bf16_accuracy.py --variants ../shared/golden/variants   # all 39 variants
    VMAMBA_RT_BF16_DOT=0 python bench/bf16_accuracy.py             # bf16 weights widened to f32, for comparison
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

import vmamba_rt

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vmamba_rt.BFloat16Warning)
        return vmamba_rt.load(path, **kw)


def convert(src: Path, dst: Path) -> str:
    with warnings.catch_warnings():  # bare golden checkpoints: their architecture is guessed, rightly
        warnings.simplefilter("ignore", vmamba_rt.ArchitectureGuessWarning)
        return vmamba_rt.convert(src, dst)


def golden_rows(tmp: Path):
    for js in sorted(GOLDEN.glob("*.json")):
        meta = json.loads(js.read_text())
        case = meta["case"]
        path = convert(GOLDEN / f"{case}.pth", tmp / f"{case}.safetensors")
        x = np.load(GOLDEN / f"{case}.input.npy")
        fp32, bf16 = load(path), load(path, dtype="bfloat16")
        if meta["backbone"]:
            want = [np.load(GOLDEN / name) for name in meta["expected"]]
            errs = [(rel_err(b, w), rel_err(f, w)) for b, f, w in zip(bf16.features(x), fp32.features(x), want)]
            yield case, max(e[0] for e in errs), max(e[1] for e in errs)
        else:
            want = np.load(GOLDEN / meta["expected"])
            yield case, rel_err(bf16(x), want), rel_err(fp32(x), want)


def variant_rows(folder: Path, tmp: Path):
    for js in sorted(folder.glob("*.json")):
        case = js.stem
        path = convert(folder / f"{case}.pth", tmp / f"{case}.safetensors")
        x, want = np.load(folder / f"{case}.input.npy"), np.load(folder / f"{case}.expected.npy")
        yield case, rel_err(load(path, dtype="bfloat16")(x), want), rel_err(load(path)(x), want)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=str(GOLDEN / "variants"), help="a folder of variant goldens")
    args = ap.parse_args()
    info = vmamba_rt.cpu_info()
    print(f"CPU engine: {info['kernels']} kernels; bf16 kernel: {info['bf16_kernel']}")
    with tempfile.TemporaryDirectory() as tmp:
        for title, rows, bound in (("golden case", golden_rows(Path(tmp)), 2e-2),
                                   ("variant", variant_rows(Path(args.variants), Path(tmp)), 3e-2)):
            print(f"\n| {title:<32} | bf16 err | fp32 err | within {bound:g} |")
            print(f"|{'-' * 34}|----------|----------|-------------|")
            worst = 0.0
            for case, bf16, fp32 in rows:
                worst = max(worst, bf16)
                print(f"| {case:<32} | {bf16:8.2e} | {fp32:8.1e} | {'yes' if bf16 < bound else 'NO':<11} |", flush=True)
            print(f"worst {title}: {worst:.2e} (bound {bound:g})")
    z = np.load(GOLDEN / "digits_test.npz")
    fp32 = load(None)
    x = fp32.preprocess.batch(list(z["images"]))
    a, b = fp32(x), load(None, dtype="bfloat16")(x)
    same = int((a.argmax(1) == b.argmax(1)).sum())
    print(f"\ndigits split: {same}/{len(x)} top-1 labels equal to fp32 (bound 448); logits within {rel_err(b, a):.2e}")


if __name__ == "__main__":
    main()
