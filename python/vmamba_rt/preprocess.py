"""Image preprocessing that reproduces the official evaluation transform
(SPEC.md section 8), configured per model from the weights' metadata.

Per-model settings live in the header entry ``vmamba_rt.preprocess`` as JSON:
``input_size``, ``resize`` ("crop": scale the shorter side to
``int(resize_ratio * input_size)`` then center-crop; "squash": resize straight
to ``input_size`` x ``input_size``), ``interpolation``, ``mean`` and ``std``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
META_PREPROCESS = "vmamba_rt.preprocess"

_INTERPOLATION = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its images: size, resize rule, interpolation, normalisation."""

    input_size: int = 224
    resize: str = "crop"  # "crop" or "squash"
    resize_ratio: float = 256 / 224  # shorter side = int(resize_ratio * input_size) with "crop"
    interpolation: str = "bicubic"
    mean: tuple = field(default=IMAGENET_MEAN)
    std: tuple = field(default=IMAGENET_STD)

    def __post_init__(self):
        if self.resize not in ("crop", "squash"):
            raise ValueError(f"preprocess resize must be 'crop' or 'squash', got {self.resize!r}")
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"unknown interpolation {self.interpolation!r} (known: {sorted(_INTERPOLATION)})")
        if self.input_size < 1 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"invalid preprocessing settings: {self}")

    @classmethod
    def from_metadata(cls, metadata: dict) -> "Preprocess":
        """Settings from a weights header; ImageNet evaluation defaults when absent."""
        raw = metadata.get(META_PREPROCESS)
        if not raw:
            return cls()
        d = json.loads(raw)
        known = {k: d[k] for k in ("input_size", "resize", "resize_ratio", "interpolation") if k in d}
        for k in ("mean", "std"):
            if k in d:
                known[k] = tuple(float(v) for v in d[k])
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def resized(self, img: Image.Image) -> Image.Image:
        """The resize and crop steps, on an RGB image."""
        s, interp = self.input_size, _INTERPOLATION[self.interpolation]
        if self.resize == "squash":
            return img.resize((s, s), interp)
        w, h = img.size
        size = int(self.resize_ratio * s)
        # torchvision Resize(int): the shorter side becomes `size`, the longer int(size * long / short).
        if w <= h:
            new = (size, int(size * h / w))
        else:
            new = (int(size * w / h), size)
        if new != (w, h):
            img = img.resize(new, interp)
        return center_crop(img, s)

    def __call__(self, image) -> np.ndarray:
        """One image (path, PIL image or uint8 array) -> float32 (3, S, S)."""
        img = self.resized(load_rgb(image))
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, images) -> np.ndarray:
        """Several images -> float32 (B, 3, S, S)."""
        return np.stack([self(im) for im in images])


def center_crop(img: Image.Image, s: int) -> Image.Image:
    """Crop s x s from the center (offsets int(round((H - s) / 2))), zero-padding if smaller."""
    w, h = img.size
    if w < s or h < s:
        padded = Image.new("RGB", (max(w, s), max(h, s)))
        padded.paste(img, ((max(w, s) - w) // 2, (max(h, s) - h) // 2))
        img, (w, h) = padded, padded.size
    top, left = int(round((h - s) / 2)), int(round((w - s) / 2))
    return img.crop((left, top, left + s, top + s))


def load_rgb(image) -> Image.Image:
    """Open what users pass as an image and return it as 8-bit RGB.

    Accepts a path, a PIL image, or a uint8 array (H, W), (H, W, 3) or (H, W, 4).
    EXIF orientation is applied; grayscale, palette and alpha images are converted
    as ``PIL.Image.convert("RGB")`` does (alpha dropped, like the reference loader);
    16-bit images are scaled to 8 bits.
    """
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                return _to_rgb(ImageOps.exif_transpose(im))
        except (OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image {os.fspath(image)!r}: {e}") from None
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 (H, W[, 3|4]); got {image.dtype}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4); got shape {image.shape}")
        return _to_rgb(Image.fromarray(image))
    raise TypeError(f"expected an image path, PIL image or uint8 array, got {type(image).__name__}")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I"):  # 16-bit (or 32-bit integer) gray: keep the top 8 bits
        img = Image.fromarray((np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8))
    return img.convert("RGB")
