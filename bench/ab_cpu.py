"""Two builds of vmamba-rt on the CPU, side by side in one run: each row is timed
with one build then the other, in fresh processes (bench_cpu.py's child mode),
for several rounds, and the best of each is kept, so that both see the same load
on a shared host. The machine's numpy sgemm rate is measured in the same rounds,
and so is the time of each kind of op of one vmamba-tiny-s1l8 224 pass on one
and on two threads (`VMamba::profile`), which shows a kernel's change where the
whole pass would hide it in the noise.

    python bench/ab_cpu.py BASE_PYTHON NEW_PYTHON [--rounds 3]

BASE_PYTHON and NEW_PYTHON are interpreters with the two builds installed (for
example two virtual environments, one with a wheel of the older commit).
"""

from __future__ import annotations

import argparse

from bench_cpu import GFLOP_224, child, print_header, sgemm_child

PROFILED = ("vmamba-tiny-s1l8", 224)  # preset, resolution; on 1 and on 2 threads

# preset, resolution, batch, threads, weights
ROWS = [("vmamba-tiny-s1l8", 224, 1, 1, "float32"), ("vmamba-tiny-s1l8", 224, 1, 2, "float32"),
        ("vmamba-tiny-s1l8", 224, 8, 2, "float32"), ("vanilla-vmamba-tiny", 224, 1, 2, "float32"),
        ("vmamba-tiny-s1l8", 224, 1, 1, "bfloat16"), ("vmamba-tiny-s1l8", 224, 1, 2, "bfloat16"),
        ("vmamba-tiny-s1l8", 224, 8, 2, "bfloat16")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pythons = {"before": args.base, "now": args.new}
    best: dict = {}
    ops: dict = {}
    peak = {1: 0.0, 2: 0.0}
    for _ in range(args.rounds):
        for t in peak:
            peak[t] = max(peak[t], sgemm_child(t)[0])
        for row in ROWS:
            preset, res, batch, threads, dtype = row
            for who, python in pythons.items():
                r = child(["--reps", 5, "--child", preset, res, batch, threads, dtype], python=python)
                best[row, who] = min(best.get((row, who), float("inf")), r["best"] / batch)
        for t in peak:
            for who, python in pythons.items():
                r = child(["--reps", 5, "--profile-child", *PROFILED, t, "float32"], python=python)
                for kind, seconds in r.items():
                    ops[kind, who, t] = min(ops.get((kind, who, t), float("inf")), seconds)
    print(f"sgemm (numpy 2048^3, best of {args.rounds} rounds): {peak[1]:.1f} GFLOP/s 1 thread, "
          f"{peak[2]:.1f} GFLOP/s 2 threads")
    print_header("| model               | weights  | batch | threads | before ms/img | of sgemm | now ms/img |"
                 " of sgemm | now/before |")
    for row in ROWS:
        preset, res, batch, threads, dtype = row
        gflop = GFLOP_224[preset] * (res / 224) ** 2
        b, n = best[row, "before"], best[row, "now"]
        print(f"| {preset:<19} | {dtype:<8} | {batch:>5} | {threads:>7} | {b * 1e3:>13.1f} | {gflop / b / peak[threads]:>8.2f} |"
              f" {n * 1e3:>10.1f} | {gflop / n / peak[threads]:>8.2f} | {n / b:>10.2f} |")

    preset, res = PROFILED
    print(f"\n{preset} at {res}, batch 1: time per kind of op (ms, best of 5 per round)")
    print_header("| op                | 1t before |  1t now | now/before | 2t before |  2t now | now/before |")
    for kind in sorted({k for k, _, _ in ops}, key=lambda k: -ops[k, "before", 1]):
        cells = []
        for t in peak:
            b, n = ops[kind, "before", t], ops[kind, "now", t]
            cells.append(f" {b * 1e3:>9.2f} | {n * 1e3:>7.2f} | {n / b if b else float('nan'):>10.2f} |")
        print(f"| {kind:<17} |" + "".join(cells))


if __name__ == "__main__":
    main()
