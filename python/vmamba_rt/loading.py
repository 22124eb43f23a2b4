"""Finding and loading a model: a weights path, a registry name, a checkpoint to
convert once into the cache, or nothing for the bundled default."""

from __future__ import annotations

import os

from . import hub
from .convert import convert as convert_checkpoint
from .errors import VMambaError
from .model import Model, check_device

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "weights", "digits.safetensors")


def _is_checkpoint(path: str) -> bool:
    """True for a torch.save file: a zip archive, or a legacy pickle (which opens
    with torch's magic number). Neither can begin a valid safetensors file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"PK\x03\x04", b"\x80\x02\x8a\x0a")


def resolve(path_or_name: str | os.PathLike | None, *, download: bool = False, convert: bool = False) -> str:
    """A weights path from a path, a registry name, or None (the bundled default).

    A registry name must be downloaded already, unless ``download=True``. A
    PyTorch checkpoint is refused with how to convert it, unless ``convert=True``:
    then it is converted once into the cache and the converted file is used.
    """
    if path_or_name is None:
        return DEFAULT_MODEL
    p = os.fspath(path_or_name)
    if os.path.isfile(p) and _is_checkpoint(p):
        if not convert:
            raise VMambaError(
                f"{p} is a PyTorch checkpoint, not converted weights: convert it first with "
                f"`vmamba-rt convert {p}` (or vmamba_rt.convert(src, dst)), or load it with convert=True "
                "to convert it into the cache"
            )
        return _converted_in_cache(p)
    if os.path.exists(p) or os.sep in p or p.endswith(".safetensors"):
        return p
    hub.entry(p)  # raises, naming the registry, for an unknown name
    cached = hub.cached_path(p)
    if not os.path.exists(cached):
        if download:
            return hub.download(p)
        raise VMambaError(f"model '{p}' is not downloaded yet: run `vmamba-rt download {p}`, "
                          "or load it with download=True")
    return cached


def _converted_in_cache(src: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(src, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    folder = os.path.join(hub.home(), "converted")
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, f"{os.path.splitext(os.path.basename(src))[0]}-{h.hexdigest()[:16]}.safetensors")
    return dst if os.path.exists(dst) else convert_checkpoint(src, dst)


def load(path: str | os.PathLike | None = None, *, device: str = "cpu", dtype: str = "float32",
         num_threads: int | None = None, mmap: bool = False, out_indices: list[int] | None = None,
         download: bool = False, convert: bool = False) -> Model:
    """Load a model: converted weights (``.safetensors``), a registry name
    (``"vmamba-tiny-s1l8"``; fetched first with ``download=True``), a ``.pth``
    checkpoint with ``convert=True`` (converted once into the cache), or nothing
    for the bundled digits model.

    ``device="cuda"`` runs it on an NVIDIA GPU through CuPy (``dtype`` "float32",
    "float16" or "bfloat16"); the default is the CPU engine, float32, or with
    ``dtype="bfloat16"`` the linear layers' weights stored in bf16 (half the
    memory; activations and sums stay f32, see docs/api.md).
    ``num_threads`` overrides the ``VMAMBA_RT_NUM_THREADS`` environment variable
    (default: all cores). ``out_indices`` picks the stages ``features`` returns.

    The model keeps its own copy of the weights (re-laid out for its kernels)
    and never reads the file again; each tensor is read from the file when the
    model asks for it, so loading never holds the file's bytes besides that
    copy. ``mmap=True`` maps the file while loading instead (each tensor's
    pages let go once it is copied; the file must not be truncated meanwhile)."""
    check_device(device, dtype)  # before any download
    path = resolve(path, download=download, convert=convert)
    return Model(path, device=device, dtype=dtype, num_threads=num_threads, mmap=mmap, out_indices=out_indices)
