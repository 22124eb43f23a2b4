"""CUDA benchmark for vmamba-tiny-s1l8 (random weights in the released shapes).

Batch 1 latency and batch 128 throughput at 224 in fp32, fp16 and bf16, and
batch 32 at 512 and 1024. Inputs live on the GPU (CuPy arrays); times are CUDA
events around replays of the captured graph, median of the timed runs.

    python bench/bench_cuda.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np


def make_weights(preset: str, path: str) -> None:
    from safetensors.numpy import save_file

    import vmamba_rt

    cfg = vmamba_rt._native.Model.preset_json(preset)
    rng = np.random.default_rng(0)
    sd = {}
    for name, shape in vmamba_rt._native.parameter_shapes(cfg):
        if name.endswith("A_logs"):
            sd[name] = np.log(np.broadcast_to(np.arange(1, shape[1] + 1, dtype=np.float32), shape)).copy()
        elif "norm" in name:
            sd[name] = (np.ones if name.endswith("weight") else np.zeros)(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            sd[name] = (rng.standard_normal(shape) * (1 / np.sqrt(fan_in))).astype(np.float32)
    save_file(sd, path, metadata={"vmamba_rt.config": cfg})


def bench(model, batch: int, res: int, reps: int):
    import cupy as cp

    x = cp.asarray(np.random.default_rng(0).standard_normal((batch, 3, res, res)).astype(np.float32))
    for _ in range(3):  # eager, capture, replay
        model(x)
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        model(x)
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    import cupy as cp

    import vmamba_rt

    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"device: {props['name'].decode()}, CuPy {cp.__version__}")
    path = os.path.join(tempfile.mkdtemp(), "s1l8.safetensors")
    make_weights("vmamba-tiny-s1l8", path)
    rows = []
    cases = [(1, 224, 50), (128, 224, 10)] + ([] if args.quick else [(32, 512, 5), (32, 1024, 3)])
    print(f"| {'dtype':<8} | batch | res  | ms/batch | img/s   | graphs |")
    print("|----------|-------|------|----------|---------|--------|")
    for dtype in ["float32", "float16", "bfloat16"]:
        model = vmamba_rt.load(path, device="cuda", dtype=dtype)
        for batch, res, reps in cases:
            if res > 224 and dtype == "float32" and args.quick:
                continue
            t = bench(model, batch, res, reps)
            graphs = "yes" if model.engine.uses_graphs else f"no ({model.engine.graph_error or 'libcublas not found'})"
            rows.append({"dtype": dtype, "batch": batch, "res": res, "ms": t * 1e3, "img_s": batch / t, "graphs": graphs})
            print(f"| {dtype:<8} | {batch:>5} | {res:>4} | {t * 1e3:>8.2f} | {batch / t:>7.0f} | {graphs} |", flush=True)
        del model
        cp.get_default_memory_pool().free_all_blocks()
    # What the graphs buy at batch 1: the same pass launched kernel by kernel.
    eager = vmamba_rt.load(path, device="cuda", dtype="float16")
    eager.engine.graphs = False
    t = bench(eager, 1, 224, 50)
    rows.append({"dtype": "float16", "batch": 1, "res": 224, "ms": t * 1e3, "img_s": 1 / t, "graphs": "no (eager)"})
    print(f"| float16  |     1 |  224 | {t * 1e3:>8.2f} | {1 / t:>7.0f} | no (eager, for comparison) |")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
