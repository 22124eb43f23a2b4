"""Two builds of vmamba-rt on the CPU, side by side in one run: each row is timed
with one build then the other, in fresh processes, for several rounds, and the
best of each is kept, so that both see the same load on a shared host. The
machine's numpy sgemm rate is measured in the same rounds.

    python bench/ab_cpu.py BASE_PYTHON NEW_PYTHON [--rounds 3]

BASE_PYTHON and NEW_PYTHON are interpreters with the two builds installed (for
example two virtual environments, one with a wheel of the older commit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess

CHILD = """
import json, sys, time
import numpy as np, vmamba_rt
preset, res, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = vmamba_rt.Model.random(preset, num_threads=threads)
x = np.random.default_rng(0).standard_normal((batch, 3, res, res)).astype(np.float32)
model(x)
times = []
for _ in range(5):
    t = time.perf_counter()
    model(x)
    times.append(time.perf_counter() - t)
print(json.dumps(min(times) / batch))
"""

SGEMM = """
import time, numpy as np
a = np.random.rand(2048, 2048).astype(np.float32)
a @ a
best = min((lambda t: (a @ a, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(2 * 2048**3 / best / 1e9)
"""

GFLOP_224 = {"vmamba-tiny-s1l8": 9.75, "vanilla-vmamba-tiny": 11.2}
ROWS = [("vmamba-tiny-s1l8", 224, 1, 1), ("vmamba-tiny-s1l8", 224, 1, 2), ("vmamba-tiny-s1l8", 224, 8, 2),
        ("vanilla-vmamba-tiny", 224, 1, 2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pythons = {"before": args.base, "now": args.new}
    best: dict = {}
    peak = {1: 0.0, 2: 0.0}
    for _ in range(args.rounds):
        for t in peak:
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(t))
            out = subprocess.run([args.new, "-c", SGEMM], capture_output=True, text=True, check=True, env=env)
            peak[t] = max(peak[t], float(out.stdout))
        for row in ROWS:
            for who, py in pythons.items():
                # numpy's BLAS threads would spin beside ours; the model needs none.
                env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
                out = subprocess.run([py, "-c", CHILD, *map(str, row)], capture_output=True, text=True, check=True,
                                     env=env, cwd=os.path.expanduser("~"))
                best[row, who] = min(best.get((row, who), float("inf")), json.loads(out.stdout.splitlines()[-1]))
    print(f"sgemm (numpy 2048^3, best of {args.rounds} rounds): {peak[1]:.1f} GFLOP/s 1 thread, "
          f"{peak[2]:.1f} GFLOP/s 2 threads")
    print("| model               | batch | threads | before ms/img | of sgemm | now ms/img | of sgemm | now/before |")
    print("|---------------------|-------|---------|---------------|----------|------------|----------|------------|")
    for row in ROWS:
        preset, res, batch, threads = row
        gflop = GFLOP_224[preset] * (res / 224) ** 2
        b, n = best[row, "before"], best[row, "now"]
        print(f"| {preset:<19} | {batch:>5} | {threads:>7} | {b * 1e3:>13.1f} | {gflop / b / peak[threads]:>8.2f} |"
              f" {n * 1e3:>10.1f} | {gflop / n / peak[threads]:>8.2f} | {n / b:>10.2f} |")


if __name__ == "__main__":
    main()
