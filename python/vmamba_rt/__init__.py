"""vmamba-rt: a fast, torch-free runtime for VMamba vision backbones.

>>> import vmamba_rt
>>> vmamba_rt.convert("vssm1_tiny_0230s_ckpt_epoch_264.pth", "vmamba-tiny.safetensors")  # doctest: +SKIP
>>> model = vmamba_rt.load("vmamba-tiny.safetensors")                                  # doctest: +SKIP
>>> logits = model(batch)            # float32 (B, 3, H, W) -> (B, num_classes)         # doctest: +SKIP
"""

from __future__ import annotations

import os

from ._native import VMambaError
from .checkpoint import CheckpointError
from .convert import ConversionError, convert
from .model import Model

__version__ = "0.1.0"
__all__ = ["load", "convert", "Model", "VMambaError", "ConversionError", "CheckpointError", "__version__"]


def load(path: str | os.PathLike, *, num_threads: int | None = None) -> Model:
    """Load converted weights (``.safetensors``). ``num_threads`` overrides the
    ``VMAMBA_RT_NUM_THREADS`` environment variable (default: all cores)."""
    return Model(path, num_threads=num_threads)
