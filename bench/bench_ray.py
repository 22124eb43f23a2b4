"""Throughput of the Ray batch job and latency of the Ray Serve deployment.

    python bench/bench_ray.py [--images 1800] [--requests 300]

Starts a local cluster (a head node and one worker node, one CPU each, on
127.0.0.1), runs the bundled digits model over the digits test images
(repeated) with 1 and 2 model actors, then serves it with 1 and 2 replicas
to concurrent HTTP clients on the loopback interface. The in-process API on
the same images is measured beside it. Prints a Markdown table.
"""

import argparse
import concurrent.futures
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np

os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_DATA_USAGE_DISABLED="1", RAY_AUTH_MODE="disabled")
import ray  # noqa: E402
from ray import serve  # noqa: E402

import vmamba_rt  # noqa: E402
from vmamba_rt import ray as vray  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
NODE = ["--num-cpus", "1", "--object-store-memory", str(200 << 20), "--disable-usage-stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster() -> str:
    port = free_port()
    subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--include-dashboard", "false", *NODE], check=True, capture_output=True)
    subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", *NODE],
                   check=True, capture_output=True)
    return f"127.0.0.1:{port}"


def encoded(images) -> list[bytes]:
    from PIL import Image

    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def post(url: str, body: bytes) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=60) as r:
        r.read()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1800)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    z = np.load(os.path.join(ROOT, "tests", "golden", "digits_test.npz"))
    base = list(z["images"])
    images = (base * (args.images // len(base) + 1))[: args.images]
    rows = []
    # The host's own matrix-multiply rate, measured in this run, so the figures below can be read against it.
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    rows.append(("numpy sgemm 1024^3 (this host, this run)",
                 f"{20 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9:,.0f} GFLOP/s", "", ""))

    for threads in (1, 2):
        model = vmamba_rt.load(num_threads=threads)
        model.predict(images[:32])
        start = time.perf_counter()
        model.predict(images, topk=1, batch_size=16)
        rows.append((f"in-process predict, {threads} thread(s)", f"{len(images) / (time.perf_counter() - start):,.0f} img/s", "", ""))

    address = start_cluster()
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        ds = ray.data.from_items([{"image": img} for img in images]).materialize()
        for workers in (1, 2):
            vray.classify_dataset(ds.limit(64), topk=1, concurrency=workers, num_threads=1).take_all()  # warm
            start = time.perf_counter()
            n = vray.classify_dataset(ds, topk=1, concurrency=workers, batch_size=64, num_threads=1).count()
            rows.append((f"Ray Data batch job, {workers} actor(s) on {workers} node(s)",
                         f"{n / (time.perf_counter() - start):,.0f} img/s", "", ""))

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        bodies = encoded(base[:50])
        url = f"http://127.0.0.1:{port}/"
        for replicas in (1, 2):
            serve.run(vray.deployment(topk=3, num_replicas=replicas, num_threads=1, max_batch_size=16),
                      name="bench", route_prefix="/")
            for b in bodies[:10]:
                post(url, b)
            work = [bodies[i % len(bodies)] for i in range(args.requests)]
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                lat = sorted(pool.map(lambda b: post(url, b), work))
            wall = time.perf_counter() - start
            rows.append((f"Ray Serve, {replicas} replica(s), {args.clients} clients", f"{len(work) / wall:,.0f} req/s",
                         f"{1e3 * lat[len(lat) // 2]:.1f} ms", f"{1e3 * lat[int(len(lat) * 0.99) - 1]:.1f} ms"))
        serve.shutdown()
    finally:
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True)

    print(f"{len(images)} digit images (64x64 after preprocessing), {args.requests} HTTP requests; "
          f"{os.cpu_count()} CPUs\n")
    print("| what | throughput | p50 | p99 |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
