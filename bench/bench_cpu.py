"""CPU benchmark: prints a table of latency, throughput and efficiency.

Each row runs in a fresh process so its peak RSS is its own. The machine's
sgemm rate (best of several float32 2048x2048 numpy matmuls) is measured in the
same run, and every row reports its FLOP rate as a fraction of it.

    python bench/bench_cpu.py                 # the full table
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


def run_one(preset, res, batch, reps):
    """Child process: time one configuration, print a JSON line."""
    import resource

    import numpy as np

    import vmamba_rt

    model = vmamba_rt.Model.random(preset)
    x = np.random.default_rng(0).standard_normal((batch, 3, res, res)).astype(np.float32)
    model(x)  # warm-up (page in weights, grow buffers)
    times = [_timed(lambda: model(x)) for _ in range(reps)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"best": min(times), "median": sorted(times)[len(times) // 2], "rss_mb": rss}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        preset, res, batch = args.child
        return run_one(preset, int(res), int(batch), args.reps)

    rows = []
    for preset in ["vmamba-tiny-s1l8", "vanilla-vmamba-tiny"]:
        for res in [224] if args.quick else [224, 384, 512]:
            for batch in [1, 8] if res == 224 else [1]:
                rows.append((preset, res, batch))
    peak = sgemm_gflops()
    print(f"machine sgemm (numpy, 2048^3 fp32, best of 5): {peak:.1f} GFLOP/s; threads: {os.cpu_count()}")
    hdr = f"| {'model':<20} | res | batch | ms/img | img/s | GFLOP/s | of sgemm | peak RSS MB |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for preset, res, batch in rows:
        # numpy's OpenBLAS threads would spin beside ours in the child; it needs no BLAS.
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, __file__, "--reps", str(args.reps), "--child", preset, str(res), str(batch)],
                             capture_output=True, text=True, check=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per_img = r["best"] / batch
        gflop = GFLOP_224[preset] * (res / 224) ** 2
        rate = gflop / per_img
        print(f"| {preset:<20} | {res:>3} | {batch:>5} | {per_img * 1e3:>6.1f} | {1 / per_img:>5.1f} | {rate:>7.1f} |"
              f" {rate / peak:>8.0%} | {r['rss_mb']:>11.0f} |", flush=True)


if __name__ == "__main__":
    main()
