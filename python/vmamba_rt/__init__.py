"""vmamba-rt: a fast, torch-free runtime for VMamba vision backbones.

>>> import vmamba_rt
>>> vmamba_rt.convert("vssm1_tiny_0230s_ckpt_epoch_264.pth", "vmamba-tiny.safetensors")  # doctest: +SKIP
>>> model = vmamba_rt.load("vmamba-tiny.safetensors")                                  # doctest: +SKIP
>>> logits = model(batch)            # float32 (B, 3, H, W) -> (B, num_classes)         # doctest: +SKIP
"""

from __future__ import annotations

from . import hub
from .convert import ArchitectureGuessWarning, convert
from .errors import CheckpointError, ConversionError, DownloadError, VMambaError
from .loading import DEFAULT_MODEL, load, resolve
from .model import BFloat16Warning, Model, check_device, cpu_info
from .onnx_export import ExportError, export_onnx

__version__ = "0.1.0"
convert_checkpoint = convert  # the function, where `convert` is also a keyword of load()
__all__ = ["load", "convert", "download", "Model", "VMambaError", "ConversionError", "CheckpointError", "DownloadError",
           "ArchitectureGuessWarning", "BFloat16Warning", "cpu_info", "resolve", "check_device", "DEFAULT_MODEL",
           "hub", "export_onnx", "ExportError", "__version__"]

download = hub.download
