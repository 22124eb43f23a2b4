"""The Python face of a loaded model: numpy in, numpy out."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from . import _native
from .errors import VMambaError
from .labels import labels_from_metadata
from .preprocess import Preprocess

MAX_THREADS = 1024


def _threads(num_threads) -> int | None:
    """``num_threads`` checked: None (the default), or 0 (all cores) to 1024."""
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or not 0 <= num_threads <= MAX_THREADS:
        raise VMambaError(f"num_threads must be an integer from 0 (all cores) to {MAX_THREADS}, got {num_threads!r}")
    return num_threads


def check_device(device: str, dtype: str) -> None:
    if device not in ("cpu", "cuda"):
        raise VMambaError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cpu" and dtype not in ("float32", "bfloat16"):
        raise VMambaError(f"the CPU engine runs float32 or bfloat16, got dtype={dtype!r}")


def cpu_info() -> dict:
    """What the CPU engine runs on this CPU: ``{"kernels": "avx512" | "avx2+fma" |
    "x86-64" | "neon" | "portable", "bf16_instructions": [...], "bf16_kernel":
    "avx512_bf16" | "widened"}``: the CPU's bf16 arithmetic ("avx512_bf16",
    "amx_bf16", "bf16" on Arm), and how ``dtype="bfloat16"`` multiplies (in bf16
    arithmetic, or its weights widened to float32; ``VMAMBA_RT_BF16_DOT=0``
    forces the latter)."""
    return dict(_native.cpu_info())


class BFloat16Warning(UserWarning):
    """``dtype="bfloat16"`` on the CPU: what it does on this CPU (once per process)."""


def _cpu_weights(device: str, dtype: str) -> str:
    """How the native model keeps its linear weights: in the CPU engine's layout
    (f32, or bf16 for the CPU's bf16 mode, said once), or dense for the CUDA
    engine, which uploads them in its own types and lets the host copy go."""
    check_device(device, dtype)
    if device != "cpu":
        return "dense"
    if dtype == "bfloat16":
        info = cpu_info()
        has = info["bf16_instructions"]
        if info["bf16_kernel"] == "avx512_bf16":
            what = ("the linear layers run in bf16 arithmetic on this CPU's AVX512_BF16 (weights and their inputs "
                    "rounded to bf16, products summed in float32); the scan, norms and softmax stay float32")
        else:
            cpu = (f"this CPU has {', '.join(has)}, which this kernel does not use" if has
                   else "this CPU has no bf16 instructions (AVX512_BF16, AMX or Arm BF16)")
            off = " (VMAMBA_RT_BF16_DOT=0)" if "avx512_bf16" in has else ""
            what = (f"the linear weights are stored in bf16 (half the memory) and widened to float32 in the GEMMs "
                    f"({info['kernels']} kernels){off}, at about the float32 speed; {cpu}")
        warnings.warn(f"dtype='bfloat16' on the CPU: {what}", BFloat16Warning, stacklevel=1)
    return dtype


def _engine(native, device: str, dtype: str):
    """What runs the plans: the native model itself on the CPU, or the CUDA engine."""
    check_device(device, dtype)
    if device == "cuda":
        from .gpu import CudaEngine

        return CudaEngine(native, dtype=dtype)
    return native


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
        raise VMambaError(f"input must have 4 dimensions (B, C, H, W); got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class Model:
    """A VMamba model loaded from converted safetensors weights, run by an
    engine: the native CPU engine, or the CUDA engine (``device="cuda"``) that
    executes the same plans on a GPU.

    >>> import numpy as np, vmamba_rt
    >>> model = vmamba_rt.load()                     # the bundled digits model
    >>> model(np.zeros((1, 3, 64, 64), np.float32)).shape
    (1, 10)
    """

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", dtype: str = "float32",
                 num_threads: int | None = None, mmap: bool = False, out_indices: list[int] | None = None):
        path = os.fspath(path)
        native = _native.Model(path, _threads(num_threads), bool(mmap), _cpu_weights(device, dtype))
        self._init(path, native, device, dtype, out_indices)

    def _init(self, path: str, native, device: str, dtype: str, out_indices: list[int] | None = None) -> None:
        self.path = path
        self.dtype = dtype
        self._native = native
        self.config: dict = json.loads(native.config_json)
        self.out_indices: list[int] = self._check_indices(out_indices) if out_indices is not None else self._stages()
        self.metadata: dict[str, str] = dict(native.metadata)
        try:
            self.preprocess = Preprocess.from_metadata(self.metadata)
            self.labels: list[str] = (
                [] if self.is_backbone else labels_from_metadata(self.metadata, self.config["num_classes"])
            )
        except VMambaError as e:
            raise VMambaError(f"{path}: {e}") from None
        self.engine = _engine(native, device, dtype)

    @classmethod
    def random(cls, arch: str | dict, *, seed: int = 0, num_threads: int | None = None, device: str = "cpu",
               dtype: str = "float32") -> "Model":
        """A model with random weights: ``arch`` is a preset name (docs/model.md §6,
        e.g. ``"vmamba-tiny-s1l8"``) or a config dict. For benchmarks and tests."""
        try:
            cfg = _native.Model.preset_json(arch) if isinstance(arch, str) else json.dumps(arch)
        except (TypeError, ValueError) as e:
            raise VMambaError(f"arch must be a preset name or a JSON-serialisable config: {e}") from None
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
            raise VMambaError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        model = cls.__new__(cls)
        model._init(f"<random {arch if isinstance(arch, str) else 'config'}>",
                    _native.Model.random(cfg, seed, _threads(num_threads), _cpu_weights(device, dtype)), device, dtype)
        return model

    @property
    def device(self) -> str:
        """"cpu" or "cuda": where the forward pass runs."""
        return "cpu" if self.engine is self._native else "cuda"

    def _batch(self, x):
        """The input as the engine takes it: CuPy arrays stay on the GPU for the
        CUDA engine; anything else becomes a float32 (B, C, H, W) numpy array."""
        if self.device == "cuda" and hasattr(x, "__cuda_array_interface__"):
            return x
        return _as_batch(x)

    def _stages(self) -> list[int]:
        """The stages ``features`` can return: a backbone's ``out_indices``, else all."""
        return list(self.config["out_indices"] if self.is_backbone else range(len(self.config["depths"])))

    def _check_indices(self, out_indices) -> list[int]:
        have = self._stages()
        idx = list(out_indices) if isinstance(out_indices, (list, tuple)) else None
        if not idx or any(isinstance(i, bool) or not isinstance(i, int) or i not in have for i in idx):
            raise VMambaError(f"out_indices must be a non-empty list of stages from {have}, got {out_indices!r}")
        return idx

    @property
    def feature_info(self) -> list[dict]:
        """What ``features`` returns, stage by stage (as timm's ``feature_info``):
        ``num_chs`` (channels), ``reduction`` (stride from the input) and ``module``."""
        return [{"num_chs": self.config["dims"] << i, "reduction": 4 << i, "module": f"layers.{i}", "index": i}
                for i in self.out_indices]

    @property
    def num_features(self) -> int:
        """Width of the pooled embedding (the last stage's channels)."""
        return self.config["dims"] << (len(self.config["depths"]) - 1)

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
        return self.engine.forward(self._batch(x))

    def features(self, x, out_indices: list[int] | None = None) -> list[np.ndarray]:
        """Feature maps (NCHW), one per stage of ``out_indices`` (default: the
        model's, see ``feature_info``). Backbones: stage outputs after their
        ``outnorm``. Classifiers: every stage's output before its downsample."""
        want = self.out_indices if out_indices is None else self._check_indices(out_indices)
        maps = dict(zip(self._stages(), self.engine.features(self._batch(x))))
        return [maps[i] for i in want]

    def embeddings(self, x) -> np.ndarray:
        """Pooled embeddings (B, num_features): the classifier's input ("pre-logits"),
        after the final LayerNorm and the average over the image. For retrieval and
        similarity search."""
        if self.is_backbone:
            raise VMambaError(f"{self.path} is a backbone without a classifier head: use features(x)")
        return self.engine.embed(self._batch(x))

    def classify(self, x, topk: int = 5, *, multi_label: bool = False) -> list[list[tuple[str, float]]]:
        """For a preprocessed batch x (B, 3, H, W), each image's ``topk`` (label,
        probability) pairs, best first. Probabilities are a softmax over the classes,
        or with ``multi_label=True`` an independent sigmoid per class (multi-label heads)."""
        return self.classify_logits(self(x), topk, multi_label=multi_label)

    def classify_logits(self, logits: np.ndarray, topk: int = 5, *,
                        multi_label: bool = False) -> list[list[tuple[str, float]]]:
        """``classify`` for logits already computed (B, num_classes)."""
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise VMambaError(f"topk must be an integer of at least 1, got {topk!r}")
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise VMambaError(f"logits must be (B, {len(self.labels)}); got shape {logits.shape}")
        if multi_label:
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
        out = []
        for p in probs:
            best = np.argsort(-p, kind="stable")[:topk]
            out.append([(self.labels[j], float(p[j])) for j in best])
        return out

    def predict(self, images, topk: int = 5, *, batch_size: int = 16,
                multi_label: bool = False) -> list[list[tuple[str, float]]]:
        """Classify images: paths, PIL images or uint8 arrays (one, or a list).

        Returns, for each image, ``topk`` ``(label, probability)`` pairs, best first
        (see :meth:`classify`). Images go through the model's own preprocessing
        (``model.preprocess``).
        """
        if isinstance(images, (str, os.PathLike, np.ndarray)) or not isinstance(images, (list, tuple)):
            images = [images]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise VMambaError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
        out = []
        for i in range(0, len(images), batch_size):
            batch = self.preprocess.batch(images[i : i + batch_size])
            out += self.classify(batch, topk, multi_label=multi_label)
        return out

    def __repr__(self) -> str:
        kind = "backbone" if self.is_backbone else f"{self.config['num_classes']} classes"
        return f"<vmamba_rt.Model {os.path.basename(self.path)}: dims {self.config['dims']}, depths {self.config['depths']}, {kind}>"
