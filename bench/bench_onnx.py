"""ONNX benchmark: our export of VMamba-T s1l8 (random weights, 224) in ONNX
Runtime and OpenVINO beside the vmamba-rt engine, batch 1 and 8, in one run,
with this machine's sgemm rate (numpy, OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset
in that child alone, as bench_cpu.py does).

    pip install '.[onnx,bench]' openvino
    python bench/bench_onnx.py                 # every runtime, precision and scan form
    python bench/bench_onnx.py --quick         # the default scan form only
    python bench/bench_onnx.py --preset vanilla-vmamba-tiny
    python bench/bench_onnx.py --rounds 2     # every row twice, rounds one after the other, best kept

Each row runs in a fresh process on all cores. "error" is the largest
difference from the vmamba-rt float32 logits, relative to their largest
magnitude. OpenVINO's default precision on a CPU with AVX512_BF16 or AMX is
bf16 (its "default" rows say which it picked).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import GFLOP_224, host, print_header, sgemm_child  # noqa: E402

RES = 224


def _time(f, reps: int) -> float:
    f()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def run_child(runtime: str, precision: str, path: str, ref: str, batch: int, reps: int) -> None:
    """Child process: time one runtime on one batch, print a JSON line."""
    import numpy as np

    z = np.load(ref)
    x, want = z["x"][:batch], z["logits"][:batch]
    picked = precision
    if runtime == "vmamba-rt":
        import vmamba_rt

        model = vmamba_rt.Model.random(path, seed=0, dtype=precision)

        def f():
            return model(x)
    elif runtime == "onnxruntime":
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        def f():
            return sess.run(None, {"input": x})[0]
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {} if precision == "default" else
                                           {"INFERENCE_PRECISION_HINT": precision})
        if precision == "default":
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            picked = f"default ({getattr(hint, 'get_type_name', lambda: str(hint))()})"
        request = compiled.create_infer_request()

        def f():
            return request.infer({0: x})[0]
    best = _time(f, reps)
    err = float(np.abs(np.asarray(f()) - want).max() / np.abs(want).max())
    print(json.dumps({"best": best, "error": err, "precision": picked}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="vmamba-tiny-s1l8")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", nargs=6)
    args = ap.parse_args()
    if args.child:
        runtime, precision, path, ref, batch, reps = args.child
        run_child(runtime, precision, path, ref, int(batch), int(reps))
        return

    import subprocess

    import numpy as np

    import vmamba_rt
    from vmamba_rt.onnx_export import SCAN_FORMS, export_onnx

    print(f"host: {host()}")
    rate, kernel = sgemm_child(os.cpu_count())
    print(f"sgemm (numpy 2048^3, {os.cpu_count()} threads, {kernel}): {rate:.1f} GFLOP/s")
    import onnxruntime

    try:
        import openvino

        ov_version = openvino.__version__
    except ImportError:
        ov_version = None
    print(f"onnxruntime {onnxruntime.__version__}, openvino {ov_version or 'not installed'}, "
          f"vmamba-rt {vmamba_rt.__version__}\n")

    work = tempfile.mkdtemp(prefix="bench_onnx.")
    model = vmamba_rt.Model.random(args.preset, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 3, RES, RES)).astype(np.float32)
    ref = os.path.join(work, "ref.npz")
    np.savez(ref, x=x, logits=model(x))
    forms = ["chunked"] if args.quick else list(SCAN_FORMS)
    print_header("| export | scan | file MB | export s | nodes |")
    files = {}
    for scan in forms:
        for dtype in ("float32", "float16") if scan == "chunked" else ("float32",):
            info = export_onnx(model, os.path.join(work, f"{scan}-{dtype}.onnx"), input_size=RES, scan=scan,
                               dtype=dtype)
            files[scan, dtype] = info.path
            print(f"| {dtype} | {scan} | {info.bytes / 1e6:.1f} | {info.seconds:.2f} | {info.nodes} |")
    print()

    rows = [("vmamba-rt", "float32", args.preset, "-"), ("vmamba-rt", "bfloat16", args.preset, "-")]
    for scan in forms:
        rows.append(("onnxruntime", "float32", files[scan, "float32"], scan))
        if ov_version:
            rows += [("openvino", "f32", files[scan, "float32"], scan),
                     ("openvino", "default", files[scan, "float32"], scan)]
    gflop = GFLOP_224[args.preset]
    todo = [(row, batch) for row in rows for batch in (1, 8)
            if row[0] == "vmamba-rt" or row[3] == "chunked" or batch == 1]  # the scan forms compared at batch 1
    best: dict = {}
    for _ in range(args.rounds):  # on a shared host a burst of load spoils a row, not all its rounds
        for (runtime, precision, path, scan), batch in todo:
            out = subprocess.run([sys.executable, __file__, "--child", runtime, precision, path, ref, str(batch),
                                  str(args.reps)], capture_output=True, text=True)
            key = (runtime, precision, scan, batch)
            if out.returncode != 0:
                best.setdefault(key, {"failed": out.stderr.strip().splitlines()[-1][:80]})
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if "best" not in best.get(key, {}) or r["best"] < best[key]["best"]:
                best[key] = r
    gflop = GFLOP_224[args.preset]
    print_header("| runtime | precision | scan | batch | ms/img | img/s | of sgemm | error |")
    for (runtime, precision, scan, batch), r in best.items():
        if "failed" in r:
            print(f"| {runtime} | {precision} | {scan} | {batch} | failed: {r['failed']} | | | |")
            continue
        per = r["best"] / batch
        print(f"| {runtime} | {r['precision']} | {scan} | {batch} | {per * 1e3:.1f} | {1 / per:.1f} | "
              f"{gflop / per / rate:.2f} | {r['error']:.1e} |")

if __name__ == "__main__":
    main()
