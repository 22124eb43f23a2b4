"""The registry of official checkpoints, the local cache, and downloads.

Release files are fetched from ``VMAMBA_RT_MIRROR`` when set (it replaces the
``https://github.com/MzeroMiko/VMamba/releases/download`` prefix and keeps the
rest of the path), resumed when a partial download is there, checked, converted,
and kept in ``VMAMBA_RT_HOME`` (default ``~/.cache/vmamba-rt``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources

_CHUNK = 1 << 20


def registry() -> dict:
    """The registry shipped with the package (``weights/registry.json``)."""
    return json.loads(resources.files(__package__).joinpath("weights/registry.json").read_text())


def entry(name: str) -> dict:
    for m in registry()["models"]:
        if m["name"] == name:
            return m
    known = ", ".join(m["name"] for m in registry()["models"])
    raise ValueError(f"unknown model '{name}'; the registry knows: {known}")


def home() -> str:
    return os.environ.get("VMAMBA_RT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "vmamba-rt")


def cached_path(name: str) -> str:
    """Where the converted weights of registry model ``name`` live once downloaded."""
    return os.path.join(home(), f"{name}.safetensors")


def url(m: dict) -> str:
    base = os.environ.get("VMAMBA_RT_MIRROR") or registry()["base_url"]
    return f"{base.rstrip('/')}/{urllib.parse.quote(m['tag'], safe='')}/{m['file']}"


def _progress(done: int, total: int | None, stream) -> None:
    if total:
        pct = done / total
        bar = "#" * int(30 * pct)
        stream.write(f"\r  [{bar:<30}] {done / 1e6:7.1f} / {total / 1e6:.1f} MB")
    else:
        stream.write(f"\r  {done / 1e6:7.1f} MB")
    stream.flush()


def fetch(src_url: str, dst: str, *, sha256: str | None = None, progress: bool | None = None, timeout: float = 60) -> str:
    """Download ``src_url`` to ``dst``, resuming ``dst + '.part'`` if present.

    The file appears at ``dst`` only when complete (and its sha256 matches, when given).
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
            raise OSError(f"download of {src_url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError) as e:
        raise OSError(f"download of {src_url} failed: {getattr(e, 'reason', e)}") from None
    if resp is not None:
        with resp:
            if have and resp.status != 206:  # the server ignored the range: start over
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length else None
            with open(part, "ab" if have else "wb") as f:
                done = have
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if show:
                        _progress(done, total, stream)
            if show:
                stream.write("\n")
            if total is not None and done != total:
                raise OSError(f"download of {src_url} stopped at {done} of {total} bytes; run again to resume")
    if sha256:
        h = hashlib.sha256()
        with open(part, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        if h.hexdigest() != sha256.lower():
            os.unlink(part)
            raise ValueError(f"{src_url}: sha256 {h.hexdigest()} does not match the registry's {sha256}")
    os.replace(part, dst)
    return dst


def download(name: str, *, progress: bool | None = None, force: bool = False) -> str:
    """Fetch, verify and convert registry model ``name``; returns the converted path.

    The checkpoint must convert to exactly the preset's architecture.
    """
    from .convert import convert

    m = entry(name)
    dst = cached_path(name)
    if os.path.exists(dst) and not force:
        return dst
    os.makedirs(home(), exist_ok=True)
    pth = os.path.join(home(), m["file"])
    if force or not os.path.exists(pth):
        fetch(url(m), pth, sha256=m.get("sha256"), progress=progress)
    convert(pth, dst, preset=name)
    os.unlink(pth)  # the converted file is what we keep
    return dst
