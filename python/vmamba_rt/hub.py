"""The registry of official checkpoints, the local cache, and downloads.

Release files are fetched from ``VMAMBA_RT_MIRROR`` when set (it replaces the
``https://github.com/MzeroMiko/VMamba/releases/download`` prefix and keeps the
rest of the path), resumed when a partial download is there, checked, converted,
and kept in ``VMAMBA_RT_HOME`` (default ``~/.cache/vmamba-rt``).

Nothing enters the cache unchecked: a download may not pass the registry's
``max_bytes``, must be a zip archive from its first bytes on, must match the
registry's sha256 when one is recorded, and must convert to exactly the preset's
architecture; whatever fails is deleted. One lock file per entry keeps
concurrent downloads of one model from racing.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources

from .errors import DownloadError, VMambaError
from .locking import lock

_CHUNK = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"
_HELP = ("set VMAMBA_RT_MIRROR to a mirror of the release files, or download the checkpoint by hand "
         "and run `vmamba-rt convert FILE.pth --preset NAME`")


def registry() -> dict:
    """The registry shipped with the package (``weights/registry.json``)."""
    return json.loads(resources.files(__package__).joinpath("weights/registry.json").read_text())


def entry(name: str) -> dict:
    for m in registry()["models"]:
        if m["name"] == name:
            return m
    known = ", ".join(m["name"] for m in registry()["models"])
    raise VMambaError(f"unknown model '{name}'; the registry knows: {known}")


def home() -> str:
    """The cache: ``$VMAMBA_RT_HOME``, else ``$XDG_CACHE_HOME/vmamba-rt``, else ``~/.cache/vmamba-rt``."""
    if os.environ.get("VMAMBA_RT_HOME"):
        return os.environ["VMAMBA_RT_HOME"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "vmamba-rt")


def cached_path(name: str) -> str:
    """Where the converted weights of registry model ``name`` live once downloaded."""
    return os.path.join(home(), f"{name}.safetensors")


def url(m: dict) -> str:
    base = os.environ.get("VMAMBA_RT_MIRROR") or registry()["base_url"]
    return f"{base.rstrip('/')}/{urllib.parse.quote(m['tag'], safe='')}/{m['file']}"


def _fail(msg: str, *paths: str):
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    raise DownloadError(msg)


def fetch(src_url: str, dst: str, *, sha256: str | None = None, progress: bool | None = None,
          timeout: float = 60, max_bytes: int | None = None, expect_zip: bool = False) -> str:
    """Download ``src_url`` to ``dst``, resuming ``dst + '.part'`` if present.

    The file appears at ``dst`` only when complete and checked: at most
    ``max_bytes`` long, a zip archive if ``expect_zip`` (checked on the first
    bytes), and of the given sha256. A file that fails a check is deleted; an
    interrupted transfer keeps its ``.part`` so that the next call resumes it.
    """
    part = dst + ".part"
    stream = sys.stderr
    show = stream.isatty() if progress is None else progress
    have = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(src_url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is already complete
            resp = None
        else:
            raise DownloadError(f"download of {src_url} failed: HTTP {e.code} {e.reason}; {_HELP}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"download of {src_url} failed: {getattr(e, 'reason', e)}; {_HELP}") from None
    if resp is not None:
        with resp:
            if have and resp.status != 206:  # the server ignored the range: start over
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            if max_bytes is not None and total is not None and total > max_bytes:
                _fail(f"{src_url} is {total} bytes, more than the {max_bytes} expected of this model; "
                      "not a release checkpoint", part)
            done = have
            bar = None
            if show:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, file=stream,
                           desc=os.path.basename(dst), leave=False)
            try:
                with open(part, "ab" if have else "wb") as f:
                    while chunk := resp.read(_CHUNK):
                        if done == 0 and expect_zip and not chunk.startswith(_ZIP_MAGIC):
                            f.close()
                            _fail(f"{src_url} did not send a checkpoint (it starts with {chunk[:40]!r}); {_HELP}", part)
                        f.write(chunk)
                        done += len(chunk)
                        if max_bytes is not None and done > max_bytes:
                            f.close()
                            _fail(f"{src_url} sent more than the {max_bytes} bytes expected of this model; "
                                  "stopped and deleted", part)
                        if bar is not None:
                            bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as e:
                if done == 0:
                    _fail(f"download of {src_url} failed: {type(e).__name__}: {e}; {_HELP}", part)
                raise DownloadError(f"download of {src_url} stopped at {done} bytes ({type(e).__name__}); "
                                    "run the same command again to resume") from None
            finally:
                if bar is not None:
                    bar.close()
            if total is not None and done != total:
                raise DownloadError(f"download of {src_url} stopped at {done} of {total} bytes; "
                                    "run the same command again to resume")
    if sha256:
        h = hashlib.sha256()
        with open(part, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        if h.hexdigest() != sha256.lower():
            _fail(f"{src_url}: sha256 {h.hexdigest()} does not match the registry's {sha256}; deleted", part)
    os.replace(part, dst)
    return dst


@contextlib.contextmanager
def _locked(name: str):
    """Hold the lock of registry entry ``name`` (one download of a model at a time)."""
    fd = os.open(os.path.join(home(), f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        lock(fd)
        yield
    finally:
        os.close(fd)


def download(name: str, *, progress: bool | None = None, force: bool = False) -> str:
    """Fetch, verify and convert registry model ``name``; returns the converted path.

    The checkpoint must convert to exactly the preset's architecture. Only the
    converted, checked file is kept; the checkpoint is deleted either way.
    """
    from .convert import convert

    m = entry(name)
    dst = cached_path(name)
    os.makedirs(home(), exist_ok=True)
    with _locked(name):
        if os.path.exists(dst) and not force:
            return dst
        pth = os.path.join(home(), m["file"])
        try:
            fetch(url(m), pth, sha256=m.get("sha256"), progress=progress, max_bytes=m.get("max_bytes"),
                  expect_zip=True)
            convert(pth, dst, preset=name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pth)  # the converted file is what we keep; a bad download goes too
    return dst
