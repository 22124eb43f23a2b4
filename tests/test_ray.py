"""Batch and online inference on a real Ray cluster that the tests start on this
machine: a head node and one more worker node (``ray start`` on 127.0.0.1).
Requests stay on the loopback interface and are bounded in count and time."""

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import GOLDEN

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install '.[ray]' (scripts/test.sh installs it)")

import vmamba_rt  # noqa: E402
from vmamba_rt import ray as vray  # noqa: E402

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
# Nothing leaves this machine: no usage reports, no metrics queries.
os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_DATA_USAGE_DISABLED="1", RAY_AUTH_MODE="disabled")
NODE = ["--num-cpus", "1", "--object-store-memory", str(200 << 20), "--disable-usage-stats"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, RAY_DEDUP_LOGS="0")
    def ray_cli(*args):
        r = subprocess.run([RAY, *args], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, f"ray {' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-2000:]}"

    ray_cli("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard", "false",
            *NODE)
    try:
        ray_cli("start", "--address", address, "--node-ip-address", "127.0.0.1", *NODE)
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        deadline = time.monotonic() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the worker node did not join"
            time.sleep(0.5)
        yield address
    finally:
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def digits():
    z = np.load(GOLDEN / "digits_test.npz")
    return list(z["images"])


def test_ray_data_matches_the_local_api_across_two_nodes(cluster, digits):
    """The same labels as the local API, and the same probabilities up to float32 rounding:
    Ray cuts the data into other batches, and a batch's size changes the GEMMs' summation order."""
    local = vmamba_rt.load(num_threads=1).predict(digits, topk=3)
    ds = ray.data.from_items([{"image": img, "index": i} for i, img in enumerate(digits)])
    out = vray.classify_dataset(ds, topk=3, concurrency=2, batch_size=32, num_threads=1).take_all()
    rows = sorted(out, key=lambda r: r["index"])
    assert len(rows) == len(digits)
    for row, want in zip(rows, local):
        assert list(row["labels"]) == [label for label, _ in want]
        assert np.allclose(row["probs"], [p for _, p in want], rtol=0, atol=1e-6)
        assert row["error"] == ""
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2


def test_paths_bytes_and_bad_images_in_one_job(cluster, tmp_path):
    from PIL import Image

    good = str(GOLDEN.parent.parent / "examples" / "images" / "digit_3.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    rows = vray.classify_dataset(ray.data.from_items([{"path": good}, {"path": str(bad)}]), topk=1).take_all()
    by_path = {r["path"]: r for r in rows}
    assert by_path[good]["label"] == "3" and by_path[good]["error"] == ""
    assert "cannot read image" in by_path[str(bad)]["error"] and np.isnan(by_path[str(bad)]["probs"]).all()
    buf = open(good, "rb").read()
    row = vray.classify_dataset(ray.data.from_items([{"bytes": buf}]), topk=1, logits=True).take_all()[0]
    assert row["label"] == "3" and row["logits"].shape == (10,)
    assert Image.open(good).size  # the file itself is intact


def test_batch_command_on_the_cluster(cluster, digits, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(digits[:40]):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    out = tmp_path / "results.jsonl"
    r = subprocess.run([sys.executable, "-m", "vmamba_rt", "batch", str(folder), "--ray", cluster, "--workers", "2",
                        "--threads", "1", "--topk", "2", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {os.path.basename(row["image"]): row for row in map(json.loads, out.read_text().splitlines())}
    local = vmamba_rt.load(num_threads=1).predict([str(folder / f"{i:03d}.png") for i in range(40)], topk=2)
    assert len(rows) == 40
    for i, want in enumerate(local):
        got = rows[f"{i:03d}.png"]["top"]
        assert [g["label"] for g in got] == [label for label, _ in want]
        assert all(abs(g["prob"] - p) < 1e-6 for g, (_, p) in zip(got, want))
    parquet = tmp_path / "results.parquet"
    r = subprocess.run([sys.executable, "-m", "vmamba_rt", "batch", str(folder), "--ray", cluster, "-o", str(parquet)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert ray.data.read_parquet(str(parquet)).count() == 40


def _post(url: str, body: bytes, timeout: float = 30):
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_answers_concurrent_requests_like_the_local_api(cluster, digits, tmp_path):
    from PIL import Image
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    try:
        serve.run(vray.deployment(topk=3, num_threads=1, max_batch_size=8), name="vmamba-rt", route_prefix="/")
        url = f"http://127.0.0.1:{port}/"
        paths = []
        for i, img in enumerate(digits[:24]):
            paths.append(tmp_path / f"{i}.png")
            Image.fromarray(img).save(paths[-1])
        local = vmamba_rt.load(num_threads=1).predict([str(p) for p in paths], topk=3)
        bodies = [p.read_bytes() for p in paths]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # 24 requests, 8 at a time, 30 s each at most
            answers = list(pool.map(lambda b: _post(url, b), bodies))
        for (status, body), want in zip(answers, local):
            assert status == 200
            assert [t["label"] for t in body["top"]] == [label for label, _ in want]
            assert all(abs(t["prob"] - p) < 1e-6 for t, (_, p) in zip(body["top"], want))
        status, body = _post(url, b"this is not an image")
        assert status == 400 and "cannot read image" in body["error"]
        status, body = _post(url, bodies[0])  # the replica goes on serving
        assert status == 200 and body["top"][0]["label"] == local[0][0][0]
    finally:
        serve.shutdown()


@pytest.mark.parametrize("arg,value", [("max_body_bytes", 1.5), ("max_body_bytes", 0), ("body_timeout_s", float("nan")),
                                       ("body_timeout_s", -1), ("max_ongoing_requests", 1.5),
                                       ("max_ongoing_requests", True)])
def test_endpoint_limits_are_checked(arg, value):
    with pytest.raises(vmamba_rt.VMambaError, match=f"{arg} must be a positive"):
        vray.deployment(**{arg: value})


def _replica_rss_mb() -> float:
    """Resident memory of the classifier's replica, an actor on this machine (Ray
    names its process after the deployment)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"ServeReplica:vmamba-rt:VMambaClassifier" in f.read():
                    pids.append(pid)
        except OSError:
            pass
    assert len(pids) == 1, pids
    with open(f"/proc/{pids[0]}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _raw_request(port: int, head: bytes, send, timeout: float = 30) -> int:
    """POST over a plain socket: ``head`` (the request line and headers), then ``send(sock)``
    writes (part of) a body. Returns the status the server answers with (0: none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        try:
            send(s)
        except OSError:  # the server answered and closed while we were still sending
            pass
        try:
            reply = s.recv(200)
        except OSError:
            return 0
    return int(reply.split()[1]) if reply.startswith(b"HTTP/") else 0


def test_serve_keeps_answering_during_slow_and_huge_uploads(cluster, digits, tmp_path):
    """Eight 1-byte-a-second uploads once held every slot of the replica, and a 300 MB
    body was read whole: now slow bodies are cut off (408), bodies over the limit
    refused (413, by their Content-Length before they are read) and so are bodies
    without a length (411), while others are answered."""
    from PIL import Image
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    try:
        serve.run(vray.deployment(num_threads=1, max_body_bytes=4 << 20, body_timeout_s=3),
                  name="vmamba-rt", route_prefix="/")
        url = f"http://127.0.0.1:{port}/"
        Image.fromarray(digits[0]).save(tmp_path / "0.png")
        image = (tmp_path / "0.png").read_bytes()
        assert _post(url, image)[0] == 200
        baseline = _replica_rss_mb()

        def trickle(s):  # 1 byte every 0.5 s, for up to 8 s
            for _ in range(16):
                s.sendall(b"x")
                time.sleep(0.5)

        def stream(total):  # a chunked body without a length, as fast as it goes
            def send(s):
                chunk = b"%x\r\n" % (1 << 20) + b"\0" * (1 << 20) + b"\r\n"
                for _ in range(total >> 20):
                    s.sendall(chunk)
            return send

        slow = [(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", trickle)] * 8
        huge = [(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 314572800\r\n\r\n", lambda s: s.sendall(b"\0" * 65536)),
                (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", stream(200 << 20)),
                (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", stream(200 << 20))]
        with concurrent.futures.ThreadPoolExecutor(len(slow) + len(huge) + 4) as pool:
            attacks = [pool.submit(_raw_request, port, head, send) for head, send in slow + huge]
            time.sleep(1)  # the attacks are open
            start = time.monotonic()
            normal = list(pool.map(lambda _: _post(url, image, timeout=10), range(4)))
            answered_in = time.monotonic() - start
            statuses = [a.result(timeout=60) for a in attacks]
        assert all(status == 200 for status, _ in normal), normal
        assert answered_in < 3, f"normal requests took {answered_in:.1f} s during the attacks"
        assert statuses[:8] == [408] * 8, statuses
        assert statuses[8:] == [413, 411, 411], statuses
        time.sleep(1)
        after = _replica_rss_mb()
        print(f"during the attacks normal requests took {answered_in:.2f} s; replica RSS {baseline:.0f} MB before,"
              f" {after:.0f} MB after")
        assert after < baseline + 100, (baseline, after)
        assert _post(url, image)[0] == 200
    finally:
        serve.shutdown()
