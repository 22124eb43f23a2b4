"""GPU parity table: every golden case and shipped variant, each dtype, the CUDA
engine against the CPU engine and against the official outputs (max |diff| over
the largest |expected|, the tests' measure).

    python bench/parity_cuda.py
"""

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

import vmamba_rt

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def rel(got, want):
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def cases():
    for js in sorted(GOLDEN.glob("*.json")):
        meta = json.loads(js.read_text())
        for ema in ([False, True] if "expected_ema" in meta else [False]):
            names = meta["expected_ema"] if ema else meta["expected"]
            names = names if isinstance(names, list) else [names]
            yield meta["case"], GOLDEN / f"{meta['case']}.pth", ema, GOLDEN / f"{meta['case']}.input.npy", \
                [GOLDEN / n for n in names]
    for js in sorted((GOLDEN / "variants").glob("*.json")):
        v = GOLDEN / "variants" / js.stem
        yield js.stem, v.with_suffix(".pth"), False, Path(f"{v}.input.npy"), [Path(f"{v}.expected.npy")]


def main():
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp())
    print("| case | dtype | vs CPU engine | vs official |")
    print("|---|---|---|---|")
    for case, pth, ema, inp, expected in cases():
        path = vmamba_rt.convert(pth, tmp / f"{case}{ema}.safetensors", ema=ema)
        x = np.load(inp)
        cpu = vmamba_rt.load(path)
        run = (lambda m, x=x: m.features(x)) if cpu.is_backbone else (lambda m, x=x: [m(x)])
        want_cpu = run(cpu)
        want = [np.load(e) for e in expected]
        for dtype in ("float32", "float16", "bfloat16"):
            try:
                got = run(vmamba_rt.load(path, device="cuda", dtype=dtype))
            except vmamba_rt.VMambaError as e:
                print(f"| {case}{' (EMA)' if ema else ''} | {dtype} | refused: {str(e)[:60]} | |")
                break
            a = max(rel(g, w) for g, w in zip(got, want_cpu))
            b = max(rel(g, w) for g, w in zip(got, want))
            print(f"| {case}{' (EMA)' if ema else ''} | {dtype} | {a:.1e} | {b:.1e} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
