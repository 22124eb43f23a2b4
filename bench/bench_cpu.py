"""CPU benchmark: prints tables of latency, throughput and efficiency.

Each row runs in a fresh process so its peak RSS is its own. The machine's
sgemm rate (best of several float32 2048x2048 numpy matmuls) is measured in the
same run on 1 and on all threads, with numpy free to pick its best kernel
(OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which some hosts set to pin an older
one, are unset in the children that measure numpy alone), and every row reports
its FLOP rate as a fraction of the rate for its thread count. Beside it, the
limit of the multiply-add instructions the GEMMs are made of (`vfmadd231ps`,
and `vdpbf16ps` where the CPU has it), timed on independent chains in
registers: the ceiling of any GEMM on this machine. Rows come with
float32 and with bfloat16 (bf16 arithmetic where the CPU has AVX512_BF16). Then, for vmamba-tiny-s1l8 at 224: the time of each kind of
op in one forward pass (`VMamba::profile`), on 1 and on all threads, with the
floor it sets for bfloat16 (the pass with its GEMMs at half the float32 time, the
most the bf16 instructions give, and the other ops as they are), and the
model's own GEMM shapes (read from its execution plan): numpy's GEMM against
ours, float32 and bfloat16 weights, on 1 and on all threads.

    python bench/bench_cpu.py                 # the full tables
    python bench/bench_cpu.py --quick         # 224 only
    python bench/bench_cpu.py --rounds 3      # the model table 3 times over, best of each row

On a shared host, load comes in bursts that can spoil one row's whole run;
with --rounds N every row (and the sgemm rate) is measured once per round,
the rounds one after the other, and the best of each is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# How the linear weights are stored (vmamba_rt.load(..., dtype=)).
DTYPES = ("float32", "bfloat16")

# The bf16 pass's target, as a fraction of the float32 time (issue #26).
BF16_TARGET = 0.55

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


def blas_env(threads: int) -> dict:
    """The environment with numpy's BLAS limited to `threads` threads."""
    return dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                MKL_NUM_THREADS=str(threads))


def child(args: list, threads: int = 1, python: str = sys.executable, env=None):
    """Run this script's child mode `args` in a fresh process (numpy's BLAS on
    `threads` threads, or the environment `env`) and return the JSON of its last line."""
    out = subprocess.run([python, __file__, *map(str, args)], capture_output=True, text=True, check=True,
                         env=env or blas_env(threads))
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_header(hdr: str) -> None:
    """A markdown table's header line and the rule under it."""
    print(hdr)
    print("|" + "|".join("-" * len(c) for c in hdr.split("|")[1:-1]) + "|")


# Set by some workplaces for old OpenBLAS builds: they pin numpy to an older,
# slower kernel (Haswell's on an AVX-512 CPU), which would make the reference a
# low bar. Unset in the children that measure numpy's GEMM, and nowhere else.
PINNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def reference_env(threads: int) -> dict:
    """``blas_env`` without the variables that pin OpenBLAS to an older kernel."""
    return {k: v for k, v in blas_env(threads).items() if k not in PINNING}


def blas_kernel() -> str:
    """Which BLAS numpy runs and the kernel it picked (threadpoolctl), as one line."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl to name it)"
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl inspects)

    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')}".strip()
                     for i in threadpool_info() if i.get("user_api") == "blas") or "none found"


def sgemm_child(threads: int) -> tuple[float, str]:
    """numpy's sgemm rate with its BLAS on `threads` threads (set before numpy
    loads) and free to pick its best kernel, with the kernel it ran."""
    code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(__file__)!r}); import bench_cpu;"
            "print(json.dumps([bench_cpu.sgemm_gflops(), bench_cpu.blas_kernel()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=reference_env(threads)).stdout.strip().splitlines()[-1]
    rate, kernel = json.loads(out)
    return rate, kernel


def instruction_limits(threads: int) -> dict:
    """The limit of each multiply-add instruction the GEMMs use, on `threads`
    threads at once: {"fma": (name, GFLOP/s), "bf16dot": ...}, None where the
    CPU lacks it. Timed in this process, whose numpy BLAS is idle."""
    from vmamba_rt import _native

    return {unit: _native.instruction_gflops(unit, threads) for unit in ("fma", "bf16dot")}


def host() -> str:
    """The CPU's model name and the flags that decide which kernels run."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    family = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cpu family")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16")
    return f"{name} (family {family}), {os.cpu_count()} cores; {' '.join(f for f in wanted if f in flags)}"


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


def gemm_child(shapes, threads: int, reps: int, rounds: int = 3) -> dict:
    """Child process (numpy's BLAS threads set by the parent): GFLOP/s per shape
    of numpy's GEMM and of ours with float32 and bfloat16 weights. The three are
    timed one after the other per shape, in `rounds` rounds, best of each kept:
    on a shared host the load changes by the minute, and measuring each side in
    a block of its own would compare different minutes. After numpy's turn the
    child sleeps: OpenBLAS's threads spin for a while after each call and would
    take the cores from ours."""
    import numpy as np

    from vmamba_rt import _native

    best = {who: [0.0] * len(shapes) for who in ("numpy", *DTYPES)}
    for _ in range(rounds):
        for i, ((m, k, n), _) in enumerate(shapes):
            # Calls enough for some 10 ms of work (at 250 GFLOP/s a thread), at least `reps`:
            # the best of 5 calls of a 0.1 ms GEMM on 2 threads read 380-790 GFLOP/s from one
            # call of this script to the next, the best of 50 720-880 (bf16, 196 x 384 x 384, Zen 5).
            calls = min(1000, max(reps, int(0.01 * 250e9 * threads / (2 * m * k * n))))
            for dtype in DTYPES:
                best[dtype][i] = max(best[dtype][i], _native.gemm_gflops(m, k, n, threads, calls, dtype))
            x = np.random.rand(m, k).astype(np.float32)
            w = np.random.rand(n, k).astype(np.float32)
            x @ w.T
            t = min(_timed(lambda x=x, w=w: x @ w.T) for _ in range(calls))
            best["numpy"][i] = max(best["numpy"][i], 2 * m * k * n / t / 1e9)
            time.sleep(0.3)
    return best


def profile_child(preset: str, res: int, threads: int, reps: int, dtype: str = "float32") -> dict:
    """Child process: seconds per kind of op of one forward pass (best of `reps`)."""
    import numpy as np

    import vmamba_rt

    model = vmamba_rt.Model.random(preset, num_threads=threads, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((1, 3, res, res)).astype(np.float32)
    model(x)
    runs = [dict(model._native.profile(x)) for _ in range(reps)]
    return {kind: min(r[kind] for r in runs) for kind in runs[0]}


def run_one(preset, res, batch, reps, threads=0, dtype="float32"):
    """Child process: time one configuration, print a JSON line."""
    import resource

    import numpy as np

    import vmamba_rt

    model = vmamba_rt.Model.random(preset, num_threads=threads, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((batch, 3, res, res)).astype(np.float32)
    model(x)  # warm-up (page in weights, grow buffers)
    times = [_timed(lambda: model(x)) for _ in range(reps)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"best": min(times), "median": sorted(times)[len(times) // 2], "rss_mb": rss}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", nargs=5)
    ap.add_argument("--gemm-child", nargs=3)
    ap.add_argument("--profile-child", nargs=4)
    args = ap.parse_args()
    if args.child:
        preset, res, batch, threads, dtype = args.child
        return run_one(preset, int(res), int(batch), args.reps, int(threads), dtype)
    if args.gemm_child:
        preset, res, threads = args.gemm_child
        print(json.dumps(gemm_child(gemm_shapes(preset, int(res)), int(threads), args.reps)))
        return None
    if args.profile_child:
        preset, res, threads, dtype = args.profile_child
        print(json.dumps(profile_child(preset, int(res), int(threads), args.reps, dtype)))
        return None

    cores = os.cpu_count() or 1
    thread_counts = sorted({1, cores})
    rows = []
    for preset in ["vmamba-tiny-s1l8", "vanilla-vmamba-tiny"]:
        for dtype in DTYPES:
            for res in [224] if args.quick else [224, 384, 512]:
                for batch in [1, 8] if res == 224 else [1]:
                    for threads in thread_counts if (res, batch) == (224, 1) else [cores]:
                        rows.append((preset, dtype, res, batch, threads))
    peak = {t: 0.0 for t in thread_counts}
    limits = {}  # (unit, threads): (instruction, GFLOP/s), best of the rounds
    times, rss = {row: float("inf") for row in rows}, {row: 0.0 for row in rows}
    for rnd in range(args.rounds):
        if args.rounds > 1:
            print(f"round {rnd + 1} of {args.rounds}", file=sys.stderr, flush=True)
        for t in thread_counts:
            rate, kernel = sgemm_child(t)
            peak[t] = max(peak[t], rate)
            for unit, got in instruction_limits(t).items():
                if got and got[1] > limits.get((unit, t), ("", 0.0))[1]:
                    limits[unit, t] = got
        for row in rows:
            preset, dtype, res, batch, threads = row
            # numpy's OpenBLAS threads would spin beside ours in the child; it needs no BLAS (1 thread).
            r = child(["--reps", args.reps, "--child", preset, res, batch, threads, dtype])
            times[row] = min(times[row], r["best"] / batch)
            rss[row] = max(rss[row], r["rss_mb"])
    rounds = f", best of {args.rounds} rounds" if args.rounds > 1 else ""
    import vmamba_rt

    info = vmamba_rt.cpu_info()
    print(f"host: {host()}")
    bf16 = ("bf16 arithmetic (vdpbf16ps)" if info["bf16_kernel"] == "avx512_bf16"
            else "bf16 weights widened to f32 (no AVX512_BF16 kernel here)")
    print(f"CPU engine: {info['kernels']} kernels; bf16 instructions: {', '.join(info['bf16_instructions']) or 'none'};"
          f" dtype=bfloat16 runs {bf16}")
    pinned = ", ".join(f"{k}={os.environ[k]}" for k in PINNING if k in os.environ)
    print(f"machine sgemm (numpy, 2048^3 fp32, best of 5{rounds}; {kernel}"
          + (f"; {pinned} unset for it" if pinned else "") + "): "
          + ", ".join(f"{peak[t]:.1f} GFLOP/s on {t} thread{'s' * (t > 1)}" for t in thread_counts))
    for unit in ("fma", "bf16dot"):
        if (unit, 1) in limits:
            print(f"limit of {limits[unit, 1][0]} (independent multiply-adds in registers, best of 10{rounds}): "
                  + ", ".join(f"{limits[unit, t][1]:.1f} GFLOP/s on {t} thread{'s' * (t > 1)}" for t in thread_counts))
    hdr = f"| {'model':<20} | weights  | res | batch | threads | ms/img | img/s | GFLOP/s | of sgemm | peak RSS MB |"
    print_header(hdr)
    for row in rows:
        preset, dtype, res, batch, threads = row
        per_img = times[row]
        rate = GFLOP_224[preset] * (res / 224) ** 2 / per_img
        print(f"| {preset:<20} | {dtype:<8} | {res:>3} | {batch:>5} | {threads:>7} | {per_img * 1e3:>6.1f} |"
              f" {1 / per_img:>5.1f} | {rate:>7.1f} | {rate / peak[threads]:>8.0%} | {rss[row]:>11.0f} |",
              flush=True)
    if cores > 1:
        # The yardstick for the lines below: what the machine's own sgemm gains from its cores.
        print(f"numpy's sgemm: {cores} threads take {peak[1] / peak[cores]:.2f}x the 1-thread time")
    for preset in ["vmamba-tiny-s1l8", "vanilla-vmamba-tiny"]:
        for dtype in DTYPES:
            if cores > 1:
                one, all_ = times[(preset, dtype, 224, 1, 1)], times[(preset, dtype, 224, 1, cores)]
                print(f"{preset} {dtype} 224 batch 1: {cores} threads take {all_ / one:.2f}x the 1-thread time")
        for batch, threads in [(1, 1), (1, cores), (8, cores)] if cores > 1 else [(1, 1), (8, 1)]:
            bf16, fp32 = (times[(preset, d, 224, batch, threads)] for d in DTYPES[::-1])
            print(f"{preset} 224 batch {batch}, {threads} thread{'s' * (threads > 1)}: bfloat16 takes"
                  f" {bf16 / fp32:.2f}x the float32 time")

    # The model's GEMM shapes, ours against numpy's, on each thread count.
    preset = "vmamba-tiny-s1l8"
    shapes = gemm_shapes(preset, 224)
    # Where the time goes: seconds per kind of op, one forward pass at batch 1, each weight type.
    profiled = [(dtype, t) for dtype in DTYPES for t in thread_counts]
    prof = {}
    for _ in range(args.rounds):
        for run in profiled:
            dtype, t = run
            r = child(["--reps", args.reps, "--profile-child", preset, 224, t, dtype])
            prof[run] = {kind: min(v, prof.get(run, r)[kind]) for kind, v in r.items()}
    gemm_gflop = sum(2 * m * k * n * runs for (m, k, n), runs in shapes) / 1e9
    print(f"\n{preset} at 224, batch 1: time per kind of op (ms, best of {args.reps}{rounds};"
          " 'linear' is every GEMM with its bias, fused activation and fused norm)")
    cols = "".join(f" {'f32' if d == 'float32' else 'bf16':>4} {t}t |  share |" for d, t in profiled)
    print_header(f"| op                |{cols}")
    total = {run: sum(prof[run].values()) for run in profiled}
    for kind in sorted(prof[profiled[0]], key=lambda k: -prof[profiled[0]][k]):
        cells = "".join(f" {prof[run][kind] * 1e3:>7.1f} | {prof[run][kind] / total[run]:>6.0%} |" for run in profiled)
        print(f"| {kind:<17} |{cells}")
    # The instruction each weight type's GEMMs are made of (bf16 weights widened to f32 where
    # the CPU has no bf16 dot product).
    unit = {"float32": "fma", "bfloat16": "bf16dot" if info["bf16_kernel"] == "avx512_bf16" else "fma"}

    def of_limit(dtype, t, rate):
        name, limit = limits.get((unit[dtype], t), (None, None))
        return f", {rate / limit:.2f} of {name}'s limit" if limit else ""

    for dtype, t in profiled:
        rate = gemm_gflop / prof[dtype, t]["linear"]
        print(f"GEMMs inside the model, {dtype}, {t} thread{'s' * (t > 1)}: {gemm_gflop:.2f} GFLOP at"
              f" {rate:.1f} GFLOP/s = {rate / peak[t]:.2f} of sgemm{of_limit(dtype, t, rate)}")
    for t in thread_counts:
        # How low bf16 could go with the rest of the pass as it is: a bf16 multiply-add
        # instruction does twice the products of an f32 FMA on the same register, so its
        # GEMMs can at best take half the float32 ones' time, or run at twice the sgemm rate.
        f32, bf16 = prof["float32", t], prof["bfloat16", t]
        rest = total["bfloat16", t] - bf16["linear"]
        half, at_peak = (f32["linear"] / 2 + rest, gemm_gflop / (2 * peak[t]) + rest)
        print(f"bf16 floor, {t} thread{'s' * (t > 1)}: the other ops take {rest * 1e3:.1f} ms; with the GEMMs"
              f" at half the float32 time {half / total['float32', t]:.2f}x float32, at twice the sgemm rate"
              f" {at_peak / total['float32', t]:.2f}x (now {total['bfloat16', t] / total['float32', t]:.2f}x)")
        # What the target asks of the GEMMs, with the other ops as they are.
        left = BF16_TARGET * total["float32", t] - rest
        need = (f"the GEMMs at {gemm_gflop / left:.1f} GFLOP/s{of_limit('bfloat16', t, gemm_gflop / left)}"
                if left > 0 else "less time than the other ops take")
        print(f"bf16 at {BF16_TARGET}x float32, {t} thread{'s' * (t > 1)}: needs {need}")

    rates = {}
    for t in thread_counts:
        for who, r in child(["--reps", args.reps, "--gemm-child", preset, 224, t], env=reference_env(t)).items():
            rates[who, t] = r
    print(f"\n{preset} at 224, batch 1: its GEMM shapes (M, K, N); GFLOP/s of numpy's, of ours with float32"
          " weights and of ours with bfloat16 weights (best of some 10 ms of calls, best of 3 interleaved rounds), and ours over numpy's")
    cols = "".join(f" numpy {t}t | f32 {t}t | bf16 {t}t | f32/np | bf16/np |" for t in thread_counts)
    hdr = f"| M x K x N          | runs |{cols}"
    print_header(hdr)
    for i, ((m, k, n), runs) in enumerate(shapes):
        cells = ""
        for t in thread_counts:
            np_, f32, bf16 = (rates[who, t][i] for who in ("numpy", *DTYPES))
            cells += f" {np_:>8.1f} | {f32:>6.1f} | {bf16:>7.1f} | {f32 / np_:>6.2f} | {bf16 / np_:>7.2f} |"
        print(f"| {m:>5} x {k:>4} x {n:>4} | {runs:>4} |{cells}", flush=True)
    return None


if __name__ == "__main__":
    main()
