"""vmamba-rt: a fast, torch-free runtime for VMamba vision backbones.

>>> import vmamba_rt
>>> vmamba_rt.convert("vssm1_tiny_0230s_ckpt_epoch_264.pth", "vmamba-tiny.safetensors")  # doctest: +SKIP
>>> model = vmamba_rt.load("vmamba-tiny.safetensors")                                  # doctest: +SKIP
>>> logits = model(batch)            # float32 (B, 3, H, W) -> (B, num_classes)         # doctest: +SKIP
"""

from __future__ import annotations

import os

from .convert import ArchitectureGuessWarning, convert
from .errors import CheckpointError, ConversionError, DownloadError, VMambaError
from .model import Model

__version__ = "0.1.0"
__all__ = ["load", "convert", "Model", "VMambaError", "ConversionError", "CheckpointError", "DownloadError",
           "ArchitectureGuessWarning", "__version__"]


DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "weights", "digits.safetensors")


def resolve(path_or_name: str | os.PathLike | None) -> str:
    """A weights path from a path, a registry name (downloaded), or None (the default)."""
    if path_or_name is None:
        return DEFAULT_MODEL
    p = os.fspath(path_or_name)
    if os.path.exists(p) or os.sep in p or p.endswith(".safetensors"):
        return p
    from . import hub

    hub.entry(p)  # raises, naming the registry, for an unknown name
    cached = hub.cached_path(p)
    if not os.path.exists(cached):
        raise VMambaError(f"model '{p}' is not downloaded yet: run `vmamba-rt download {p}`")
    return cached


def load(path: str | os.PathLike | None = None, *, device: str = "cpu", dtype: str = "float32",
         num_threads: int | None = None, mmap: bool = False) -> Model:
    """Load a model: converted weights (``.safetensors``), the name of a downloaded
    registry model (``"vmamba-tiny-s1l8"``), or nothing for the bundled digits model.

    ``device="cuda"`` runs it on an NVIDIA GPU through CuPy (``dtype`` "float32",
    "float16" or "bfloat16"); the default is the CPU engine (float32).
    ``num_threads`` overrides the ``VMAMBA_RT_NUM_THREADS`` environment variable
    (default: all cores).

    The weights are read into memory, so the model never depends on the file
    again. ``mmap=True`` maps the file instead (no copy, pages read on use): the
    file must then not be changed or truncated while the model lives."""
    if device == "cuda":
        from .gpu import CudaModel

        return CudaModel(resolve(path), dtype=dtype, num_threads=num_threads)
    if device != "cpu":
        raise VMambaError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dtype != "float32":
        raise VMambaError(f"the CPU engine runs float32 only, got dtype={dtype!r}")
    return Model(resolve(path), num_threads=num_threads, mmap=mmap)
