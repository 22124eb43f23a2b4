"""The Python face of a loaded model: numpy in, numpy out."""

from __future__ import annotations

import json
import os

import numpy as np

from . import _native
from ._native import VMambaError
from .labels import labels_from_metadata
from .preprocess import Preprocess


def _as_batch(x) -> np.ndarray:
    """Check and normalise an input batch to C-contiguous float32 (B, C, H, W).

    Any real floating dtype is converted to float32; integer, bool and complex
    inputs are refused (images go through preprocessing first).
    """
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(
            f"input must be a floating-point array (B, 3, H, W); got dtype {arr.dtype} "
            "(preprocess images first, or use model.predict)"
        )
    if arr.ndim != 4:
        raise ValueError(f"input must have 4 dimensions (B, C, H, W); got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class Model:
    """A VMamba model loaded from converted safetensors weights.

    >>> import numpy as np, vmamba_rt
    >>> model = vmamba_rt.load()                     # the bundled digits model
    >>> model(np.zeros((1, 3, 64, 64), np.float32)).shape
    (1, 10)
    """

    def __init__(self, path: str | os.PathLike, *, num_threads: int | None = None):
        self._init(os.fspath(path), _native.Model(os.fspath(path), num_threads))

    def _init(self, path: str, native) -> None:
        self.path = path
        self._native = native
        self.config: dict = json.loads(native.config_json)
        self.metadata: dict[str, str] = dict(native.metadata)
        self.preprocess = Preprocess.from_metadata(self.metadata)
        self.labels: list[str] = [] if self.is_backbone else labels_from_metadata(self.metadata, self.config["num_classes"])

    @classmethod
    def random(cls, arch: str | dict, *, seed: int = 0, num_threads: int | None = None) -> "Model":
        """A model with random weights: ``arch`` is a preset name (SPEC.md section 6,
        e.g. ``"vmamba-tiny-s1l8"``) or a config dict. For benchmarks and tests."""
        cfg = _native.Model.preset_json(arch) if isinstance(arch, str) else json.dumps(arch)
        model = cls.__new__(cls)
        model._init(f"<random {arch if isinstance(arch, str) else 'config'}>", _native.Model.random(cfg, seed, num_threads))
        return model

    @property
    def is_backbone(self) -> bool:
        """True for detection / segmentation backbones (no classifier head)."""
        return self.config.get("out_indices") is not None

    @property
    def min_size(self) -> int:
        """Smallest square input side (pixels) the model accepts."""
        return self._native.min_size

    def __call__(self, x) -> np.ndarray:
        """Logits (B, num_classes) for a float array x of shape (B, 3, H, W)."""
        if self.is_backbone:
            raise VMambaError(
                f"{self.path} is a backbone (out_indices {self.config['out_indices']}) without a classifier "
                "head: call model.features(x)"
            )
        return self._native.forward(_as_batch(x))

    def features(self, x) -> list[np.ndarray]:
        """Feature maps (NCHW). Backbones: one per ``out_indices`` stage after its
        ``outnorm``. Classifiers: the four stage outputs before their downsample."""
        return self._native.features(_as_batch(x))

    def predict(self, images, topk: int = 5, *, batch_size: int = 16) -> list[list[tuple[str, float]]]:
        """Classify images: paths, PIL images or uint8 arrays (one, or a list).

        Returns, for each image, ``topk`` ``(label, probability)`` pairs, best first.
        Images go through the model's own preprocessing (``model.preprocess``).
        """
        if isinstance(images, (str, os.PathLike, np.ndarray)) or not isinstance(images, (list, tuple)):
            images = [images]
        if topk < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        out = []
        for i in range(0, len(images), batch_size):
            logits = self(self.preprocess.batch(images[i : i + batch_size])).astype(np.float64)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            for p in probs:
                best = np.argsort(-p, kind="stable")[:topk]
                out.append([(self.labels[j], float(p[j])) for j in best])
        return out

    def __repr__(self) -> str:
        kind = "backbone" if self.is_backbone else f"{self.config['num_classes']} classes"
        return f"<vmamba_rt.Model {os.path.basename(self.path)}: dims {self.config['dims']}, depths {self.config['depths']}, {kind}>"
