"""Registry downloads against a local HTTP server (127.0.0.1 only)."""

import hashlib
import http.server
import json
import os
import threading

import numpy as np
import pytest

import vmamba_rt
from vmamba_rt import hub

from torchfmt import write_pth


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    log: list = []

    def do_GET(self):
        body = self.files.get(self.path)
        self.log.append((self.path, self.headers.get("Range")))
        if callable(body):  # a misbehaving server
            body(self)
            return
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    _Handler.files, _Handler.log = {}, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("VMAMBA_RT_MIRROR", f"http://127.0.0.1:{srv.server_address[1]}/mirror")
    monkeypatch.setenv("VMAMBA_RT_HOME", str(tmp_path / "home"))
    yield _Handler
    srv.shutdown()


NAME = "vanilla-vmamba-tiny"


@pytest.fixture(scope="module")
def release_bytes(tmp_path_factory):
    """A checkpoint in the preset's exact shapes (random fp16 weights), as the release would hold."""
    shapes = vmamba_rt._native.parameter_shapes(vmamba_rt._native.Model.preset_json(NAME))
    rng = np.random.default_rng(0)
    sd = {k: (rng.standard_normal(s) * 0.02).astype(np.float16) for k, s in shapes}
    path = tmp_path_factory.mktemp("release") / "ckpt.pth"
    write_pth(path, {"model": sd, "epoch": 292})
    return path.read_bytes()


def _serve(server, name, body):
    m = hub.entry(name)
    server.files[f"/mirror/%23{m['tag'][1:]}/{m['file']}"] = body
    return m


def test_download_converts_and_loads_by_name(server, release_bytes):
    _serve(server, NAME, release_bytes)
    path = hub.download(NAME, progress=False)
    assert path == hub.cached_path(NAME) and os.path.exists(path)
    model = vmamba_rt.load(NAME)
    assert model.config == json.loads(vmamba_rt._native.Model.preset_json(NAME))
    assert len(model.labels) == 1000
    assert server.log[0][0].startswith("/mirror/%23v0cls/")
    assert hub.download(NAME) == path and len(server.log) == 1  # cached: no second fetch


def test_download_resumes_a_partial_file(server, release_bytes):
    m = _serve(server, NAME, release_bytes)
    os.makedirs(hub.home())
    half = len(release_bytes) // 2
    with open(os.path.join(hub.home(), m["file"] + ".part"), "wb") as f:
        f.write(release_bytes[:half])
    hub.download(NAME, progress=False)
    assert server.log == [(server.log[0][0], f"bytes={half}-")]
    assert vmamba_rt.load(NAME).config["depths"] == [2, 2, 9, 2]


def test_wrong_architecture_is_refused_and_nothing_is_kept(server):
    from conftest import GOLDEN

    _serve(server, NAME, (GOLDEN / "v0_small.pth").read_bytes())
    with pytest.raises(vmamba_rt.ConversionError, match="not the architecture of 'vanilla-vmamba-tiny'.*dims"):
        hub.download(NAME, progress=False)
    assert not os.path.exists(hub.cached_path(NAME))


def test_checksum_mismatch_and_missing_file(server, tmp_path):
    server.files["/f"] = b"hello"
    base = os.environ["VMAMBA_RT_MIRROR"].rsplit("/", 1)[0]
    dst = str(tmp_path / "f")
    assert hub.fetch(f"{base}/f", dst, sha256=hashlib.sha256(b"hello").hexdigest()) == dst
    with pytest.raises(ValueError, match="sha256"):
        hub.fetch(f"{base}/f", str(tmp_path / "g"), sha256="0" * 64)
    assert not os.path.exists(tmp_path / "g") and not os.path.exists(tmp_path / "g.part")
    with pytest.raises(vmamba_rt.DownloadError, match="HTTP 404.*VMAMBA_RT_MIRROR"):
        hub.fetch(f"{base}/missing", str(tmp_path / "h"))


def test_loading_a_registry_model_before_download(server):
    with pytest.raises(vmamba_rt.VMambaError, match="not downloaded yet.*vmamba-rt download"):
        vmamba_rt.load("vmamba-tiny-s1l8")


def _cache_files():
    return sorted(n for n in os.listdir(hub.home()) if not n.endswith(".lock"))


def test_an_html_page_never_enters_the_cache(server, release_bytes):
    _serve(server, NAME, b"<!DOCTYPE html><html>Rate limit exceeded</html>")
    with pytest.raises(vmamba_rt.DownloadError, match="did not send a checkpoint.*<!DOCTYPE html.*VMAMBA_RT_MIRROR"):
        hub.download(NAME, progress=False)
    assert _cache_files() == []
    _serve(server, NAME, release_bytes)  # the next try starts clean: no --force needed
    assert os.path.exists(hub.download(NAME, progress=False))


def _endless(handler):
    handler.send_response(200)
    handler.end_headers()  # no length: the stream never says how long it is
    try:
        handler.wfile.write(b"PK\x03\x04")
        for _ in range(64):
            handler.wfile.write(b"\0" * (1 << 16))
    except OSError:  # the client hung up, as it should
        pass


def test_an_endless_stream_is_cut_at_the_registry_cap(server, monkeypatch):
    reg = hub.registry()
    for m in reg["models"]:
        m["max_bytes"] = 1 << 20
    monkeypatch.setattr(hub, "registry", lambda: reg)
    _serve(server, NAME, _endless)
    with pytest.raises(vmamba_rt.DownloadError, match="more than the 1048576 bytes expected"):
        hub.download(NAME, progress=False)
    assert _cache_files() == []


def _truncated(handler):
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.wfile.write(b"4000\r\nPK\x03\x04" + b"\0" * 100)  # promises 16 KiB, sends 104 bytes
    handler.wfile.flush()
    handler.close_connection = True


def test_a_truncated_chunked_response_says_to_run_again(server):
    _serve(server, NAME, _truncated)
    with pytest.raises(vmamba_rt.DownloadError, match="run the same command again to resume|failed"):
        hub.download(NAME, progress=False)
    parts = [n for n in _cache_files() if n.endswith(".part")]
    assert all(os.path.getsize(os.path.join(hub.home(), n)) > 0 for n in parts)


def test_concurrent_downloads_of_one_model(server, release_bytes):
    import threading

    _serve(server, NAME, release_bytes)
    results, errors = [], []

    def work():
        try:
            results.append(hub.download(NAME, progress=False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and results == [hub.cached_path(NAME)] * 3
    assert len(server.log) == 1  # one fetch; the others waited for it and found the result
