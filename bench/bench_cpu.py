"""CPU benchmark: prints tables of latency, throughput and efficiency.

Each row runs in a fresh process so its peak RSS is its own. The machine's
sgemm rate (best of several float32 2048x2048 numpy matmuls) is measured in the
same run on 1 and on all threads, and every row reports its FLOP rate as a
fraction of the rate for its thread count. A second table holds the model's own
GEMM shapes (read from its execution plan): our GEMM against numpy's on each,
on 1 and on all threads.

    python bench/bench_cpu.py                 # the full tables
    python bench/bench_cpu.py --quick         # 224 only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# Model FLOPs (2 x MACs) per 224x224 image, from the issue / paper, scaled by pixels.
GFLOP_224 = {"vmamba-tiny-s1l8": 9.75, "vanilla-vmamba-tiny": 11.2}


def sgemm_gflops(n=2048, reps=5):
    import numpy as np

    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def sgemm_child(threads: int) -> float:
    """numpy's sgemm rate with its BLAS on `threads` threads (set before numpy loads)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import bench_cpu; print(bench_cpu.sgemm_gflops())"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env=env).stdout.strip().splitlines()[-1])


def gemm_shapes(preset: str, res: int) -> list[tuple[tuple[int, int, int], int]]:
    """The (M, K, N) shapes of the model's GEMMs at batch 1, with how often each runs."""
    import json as js

    import vmamba_rt

    model = vmamba_rt.Model.random(preset)
    plan = js.loads(model._native.plan_json((1, 3, res, res), "logits"))
    count: dict = {}
    for op in plan["ops"]:
        if op["op"] == "linear":
            key = (op["rows"], op["inp"], op["out"])
            count[key] = count.get(key, 0) + 1
    return sorted(count.items(), key=lambda kv: -kv[0][0] * kv[0][1] * kv[0][2] * kv[1])


def gemm_child(shapes, threads: int, reps: int) -> list:
    """Child process (BLAS threads set by the parent): our GEMM and numpy's per shape."""
    import numpy as np

    from vmamba_rt import _native

    out = []
    for (m, k, n), _ in shapes:
        x = np.random.rand(m, k).astype(np.float32)
        w = np.random.rand(n, k).astype(np.float32)
        x @ w.T
        best = min(_timed(lambda: x @ w.T) for _ in range(reps))
        out.append((_native.gemm_gflops(m, k, n, threads, reps), 2 * m * k * n / best / 1e9))
    return out


def run_one(preset, res, batch, reps, threads=0):
    """Child process: time one configuration, print a JSON line."""
    import resource

    import numpy as np

    import vmamba_rt

    model = vmamba_rt.Model.random(preset, num_threads=threads)
    x = np.random.default_rng(0).standard_normal((batch, 3, res, res)).astype(np.float32)
    model(x)  # warm-up (page in weights, grow buffers)
    times = [_timed(lambda: model(x)) for _ in range(reps)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"best": min(times), "median": sorted(times)[len(times) // 2], "rss_mb": rss}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", nargs=4)
    ap.add_argument("--gemm-child", nargs=3)
    args = ap.parse_args()
    if args.child:
        preset, res, batch, threads = args.child
        return run_one(preset, int(res), int(batch), args.reps, int(threads))
    if args.gemm_child:
        preset, res, threads = args.gemm_child
        print(json.dumps(gemm_child(gemm_shapes(preset, int(res)), int(threads), args.reps)))
        return None

    cores = os.cpu_count() or 1
    thread_counts = sorted({1, cores})
    rows = []
    for preset in ["vmamba-tiny-s1l8", "vanilla-vmamba-tiny"]:
        for res in [224] if args.quick else [224, 384, 512]:
            for batch in [1, 8] if res == 224 else [1]:
                for threads in thread_counts if (res, batch) == (224, 1) else [cores]:
                    rows.append((preset, res, batch, threads))
    peak = {t: sgemm_child(t) for t in thread_counts}
    print("machine sgemm (numpy, 2048^3 fp32, best of 5): "
          + ", ".join(f"{peak[t]:.1f} GFLOP/s on {t} thread{'s' * (t > 1)}" for t in thread_counts))
    hdr = f"| {'model':<20} | res | batch | threads | ms/img | img/s | GFLOP/s | of sgemm | peak RSS MB |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    times = {}
    for preset, res, batch, threads in rows:
        # numpy's OpenBLAS threads would spin beside ours in the child; it needs no BLAS.
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, __file__, "--reps", str(args.reps), "--child", preset, str(res),
                              str(batch), str(threads)], capture_output=True, text=True, check=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per_img = r["best"] / batch
        times[(preset, res, batch, threads)] = per_img
        gflop = GFLOP_224[preset] * (res / 224) ** 2
        rate = gflop / per_img
        print(f"| {preset:<20} | {res:>3} | {batch:>5} | {threads:>7} | {per_img * 1e3:>6.1f} | {1 / per_img:>5.1f} |"
              f" {rate:>7.1f} | {rate / peak[threads]:>8.0%} | {r['rss_mb']:>11.0f} |", flush=True)
    for preset in ["vmamba-tiny-s1l8", "vanilla-vmamba-tiny"]:
        if cores > 1:
            one, all_ = times[(preset, 224, 1, 1)], times[(preset, 224, 1, cores)]
            print(f"{preset} 224 batch 1: {cores} threads take {all_ / one:.2f}x the 1-thread time")

    # The model's GEMM shapes, ours against numpy's, on each thread count.
    preset = "vmamba-tiny-s1l8"
    shapes = gemm_shapes(preset, 224)
    rates = {}
    for t in thread_counts:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        out = subprocess.run([sys.executable, __file__, "--reps", str(args.reps), "--gemm-child", preset, "224", str(t)],
                             capture_output=True, text=True, check=True, env=env)
        rates[t] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{preset} at 224, batch 1: its GEMM shapes (M, K, N), ours and numpy's GFLOP/s")
    cols = "".join(f" ours {t}t | numpy {t}t | ratio {t}t |" for t in thread_counts)
    hdr = f"| M x K x N          | runs |{cols}"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for i, ((m, k, n), runs) in enumerate(shapes):
        cells = "".join(f" {rates[t][i][0]:>7.1f} | {rates[t][i][1]:>8.1f} | {rates[t][i][0] / rates[t][i][1]:>8.2f} |"
                        for t in thread_counts)
        print(f"| {m:>5} x {k:>4} x {n:>4} | {runs:>4} |{cells}", flush=True)
    return None


if __name__ == "__main__":
    main()
