"""Image preprocessing that reproduces the official evaluation transform
(docs/model.md §8), configured per model from the weights' metadata.

Per-model settings live in the header entry ``vmamba_rt.preprocess`` as JSON:
``input_size``, ``resize`` ("crop": scale the shorter side to
``int(resize_ratio * input_size)`` then center-crop; "squash": resize straight
to ``input_size`` x ``input_size``), ``interpolation``, ``mean`` and ``std``.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageOps

from . import _native
from .checkpoint import _short
from .errors import VMambaError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
META_PREPROCESS = _native.FORMAT["preprocess"]

# Largest image (width x height) decoded, or produced by the resize step. The
# default is Pillow's decompression-bomb limit; the Rust path uses the same.
DEFAULT_MAX_PIXELS = _native.LIMITS["max_pixels"]
MAX_PIXELS_ENV = _native.LIMITS["max_pixels_env"]
MAX_INPUT_SIZE = _native.LIMITS["input_size"]
# The raster formats decoded (Pillow's names), the same as the Rust core's image
# features: Pillow's other plugins stay unused, EPS among them, which runs Ghostscript.
IMAGE_FORMATS = tuple(_native.IMAGE_FORMATS)


def max_pixels() -> int:
    """The pixel limit in force: ``$VMAMBA_RT_MAX_IMAGE_PIXELS`` if set, else the default."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        return int(raw)
    except ValueError:
        raise VMambaError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels") from None

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
        def bad(what: str):
            raise VMambaError(f"preprocess {what}")

        if self.resize not in ("crop", "squash"):
            bad(f"resize must be 'crop' or 'squash', got {_short(self.resize)}")
        if self.interpolation not in _INTERPOLATION:
            bad(f"interpolation {_short(self.interpolation)} is unknown (known: {sorted(_INTERPOLATION)})")
        if type(self.input_size) is not int or not 1 <= self.input_size <= MAX_INPUT_SIZE:
            bad(f"input_size must be an integer in 1..{MAX_INPUT_SIZE}, got {_short(self.input_size)}")
        if not isinstance(self.resize_ratio, (int, float)) or not 0 < self.resize_ratio <= 16:
            bad(f"resize_ratio must be in (0, 16], got {_short(self.resize_ratio)}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                      and math.isfinite(x) for x in v):
                bad(f"{name} must be 3 finite numbers, got {_short(v)}")
        if min(self.std) <= 0:
            bad(f"std must be positive, got {self.std!r}")

    @classmethod
    def from_metadata(cls, metadata: dict) -> "Preprocess":
        """Settings from a weights header; ImageNet evaluation defaults when absent.
        Types and sizes are checked before any value is converted, and no message
        quotes more than a few characters of what the header holds."""
        raw = metadata.get(META_PREPROCESS)
        if not raw:
            return cls()
        if not isinstance(raw, str):
            raise VMambaError(f"{META_PREPROCESS} is not valid: a JSON string is needed, got a {type(raw).__name__}")
        _native.check_metadata_sizes({META_PREPROCESS: raw})  # the core's bound, before parsing
        try:
            d = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise VMambaError(f"{META_PREPROCESS} is not valid: {type(e).__name__}: {str(e)[:200]}") from None
        if not isinstance(d, dict):
            raise VMambaError(f"{META_PREPROCESS} is not valid: a JSON object is needed, got {type(d).__name__}")
        known = {}
        for k, kind in (("input_size", int), ("resize", str), ("resize_ratio", (int, float)),
                        ("interpolation", str)):
            if k in d:
                if isinstance(d[k], bool) or not isinstance(d[k], kind):
                    raise VMambaError(f"{META_PREPROCESS} {k} must be a {'number' if k == 'resize_ratio' else kind.__name__}, "
                                      f"got a {type(d[k]).__name__}")
                known[k] = d[k]
        for k in ("mean", "std"):
            if k in d:
                v = d[k]
                if not isinstance(v, list) or len(v) != 3:
                    got = f"{len(v)} entries" if isinstance(v, list) else f"a {type(v).__name__}"
                    raise VMambaError(f"{META_PREPROCESS} {k} must be 3 finite numbers, got {got}")
                known[k] = tuple(v)
        try:
            return cls(**known)
        except VMambaError as e:
            raise VMambaError(f"{META_PREPROCESS}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def resized(self, img: Image.Image) -> Image.Image:
        """The resize and crop steps, on an RGB image. An image without pixels, or
        one whose resized form would pass the pixel limit (an extreme aspect
        ratio), is refused."""
        s, interp = self.input_size, _INTERPOLATION[self.interpolation]
        w, h = img.size
        if w == 0 or h == 0:
            raise VMambaError(f"the image has no pixels ({w}x{h})")
        if self.resize == "squash":
            return img.resize((s, s), interp)
        size = int(self.resize_ratio * s)
        # torchvision Resize(int): the shorter side becomes `size`, the longer int(size * long / short).
        if w <= h:
            new = (size, int(size * h / w))
        else:
            new = (int(size * w / h), size)
        limit = max_pixels()
        if new[0] * new[1] > limit:
            raise VMambaError(
                f"a {w}x{h} image would be resized to {new[0]}x{new[1]}, over the limit of {limit} pixels "
                f"({MAX_PIXELS_ENV}); its aspect ratio is too extreme"
            )
        if new != (w, h):
            img = img.resize(new, interp)
        return center_crop(img, s)

    def __call__(self, image) -> np.ndarray:
        """One image (path, PIL image or uint8 array) -> float32 (3, S, S)."""
        try:
            img = self.resized(load_rgb(image))
        except VMambaError as e:
            if isinstance(image, (str, os.PathLike)) and os.fspath(image) not in str(e):
                raise VMambaError(f"{os.fspath(image)}: {e}") from None
            raise
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

    Accepts a path, encoded bytes, a PIL image, or a uint8 array (H, W), (H, W, 3) or (H, W, 4).
    EXIF orientation is applied; grayscale, palette and alpha images are converted
    as ``PIL.Image.convert("RGB")`` does (alpha dropped, like the reference loader);
    16-bit images are scaled to 8 bits.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open forever
                raise VMambaError(f"cannot read image {path!r}: not a regular file (a folder, FIFO or device)")
        except OSError as e:
            raise VMambaError(f"cannot read image {path!r}: {e}") from None
        return _decode(path, repr(path))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(image)), f"of {len(image)} bytes")
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 (H, W[, 3|4]); got {image.dtype}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise VMambaError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4); got shape {image.shape}")
        return _to_rgb(Image.fromarray(image))
    raise TypeError(f"expected an image path, PIL image or uint8 array, got {type(image).__name__}")


def _decode(source, name: str) -> Image.Image:
    """Decode a file or file-like object, refusing it from its header if it is over the pixel limit."""
    limit = max_pixels()
    try:
        with Image.open(source, formats=IMAGE_FORMATS) as im:  # reads the header only
            w, h = im.size
            if w * h > limit:
                raise VMambaError(f"cannot read image {name}: {w}x{h} pixels is over the limit of {limit} ({MAX_PIXELS_ENV})")
            return _to_rgb(ImageOps.exif_transpose(im))
    except VMambaError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own cap, at twice its warning size
        raise VMambaError(f"cannot read image {name}: over the limit of {limit} pixels ({MAX_PIXELS_ENV}): {e}") from None
    except Image.UnidentifiedImageError:
        raise VMambaError(f"cannot read image {name}: not an image in one of the formats read "
                          f"({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
        raise VMambaError(f"cannot read image {name}: {type(e).__name__}: {e}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I"):  # 16-bit (or 32-bit integer) gray: keep the top 8 bits
        img = _top_byte(img)
    return img.convert("RGB")


def _top_byte(img: Image.Image) -> Image.Image:
    """An integer gray image (mode I, I;16...) as 8-bit gray, its values >> 8 clipped
    to 255, converted a band of rows at a time: whole-image integer temporaries
    cost several times the image (2 GB for a 9459x9459 mode-I TIFF)."""
    w, h = img.size
    out = np.empty((h, w), np.uint8)
    rows = max(1, (1 << 20) // max(w, 1))  # about a million pixels a band
    for top in range(0, h, rows):
        band = np.asarray(img.crop((0, top, w, min(h, top + rows))))
        out[top : top + rows] = np.clip(band >> 8, 0, 255)
    return Image.fromarray(out)
