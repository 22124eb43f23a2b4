"""Convert official VMamba checkpoints (``.pth``) to self-describing safetensors.

The architecture comes, in this order, from what the caller names (a registry
preset, or the official yaml / a runtime config), from the yacs config embedded
in training checkpoints, or else is guessed from the tensors' names and shapes:
a guess is said so in a warning and recorded in the metadata
(``vmamba_rt.config_source``). The result is loaded by the runtime before it is
moved into place, so a file at ``dst`` is always complete and runnable.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import stat
import tempfile
import warnings
from typing import Any

import numpy as np

from . import _native, configfile
from .checkpoint import LazyTensor, _short, load_pth
from .errors import ConversionError, VMambaError
from .locking import lock

# The header entries of a converted file, as the native core defines them.
META_CONFIG, META_CONFIG_SOURCE, META_FORMAT = (_native.FORMAT[k] for k in ("config", "config_source", "format"))
META_SOURCE, META_NAME = _native.FORMAT["source"], _native.FORMAT["name"]
FORMAT_VERSION = str(_native.FORMAT["version"])
# The core's limits (its config validation is the one definition).
LIMITS = _native.LIMITS
MAX_STAGES, MAX_BLOCKS, MAX_DIMS = LIMITS["stages"], LIMITS["blocks"], LIMITS["dims"]


class ArchitectureGuessWarning(UserWarning):
    """The architecture was inferred from tensor names and shapes, which cannot
    tell apart variants that share them (scan-order ablations, activations)."""

# Older v0 checkpoints, applied in order (docs/model.md §7).
_LEGACY_RENAMES = [
    (re.compile(r"\.ln_1\."), ".norm."),
    (re.compile(r"\.self_attention\."), ".op."),
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]

_ACTIVATIONS = ("silu", "gelu", "relu", "sigmoid")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, LazyTensor) for v in obj.values())


def _has_tensors(obj: Any) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, LazyTensor) for v in obj.values())


def extract_state_dict(ckpt: Any, src: str, ema: bool = False,
                       prefix: str | None = None) -> tuple[dict[str, LazyTensor], str]:
    """Find the model weights in any of the containers of docs/model.md §7.

    Returns the state dict with canonical key names and the name of the part it came from.
    """
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{src}: the checkpoint holds a {type(ckpt).__name__}, not a dict of weights")
    if ema:
        if not _is_tensor_dict(ckpt.get("model_ema")):
            raise ConversionError(f"{src}: the EMA weights were asked for (ema=True), but the checkpoint has no 'model_ema' weights")
        sd, part = ckpt["model_ema"], "model_ema"
    elif _is_tensor_dict(ckpt.get("model")):
        sd, part = ckpt["model"], "model"
    elif _has_tensors(ckpt.get("state_dict")):  # mmdet / mmseg: tensors beside other entries
        sd, part = ckpt["state_dict"], "state_dict"
    elif _has_tensors(ckpt):
        sd, part = ckpt, "state dict"
    else:
        raise ConversionError(
            f"{src}: no model weights found (looked for 'model', 'state_dict' or a plain state dict; "
            f"top-level keys: {_short(sorted(_short(k, 40) for k in list(ckpt)[:50])[:10], 300)})"
        )
    sd = {k: v for k, v in sd.items() if isinstance(v, LazyTensor)}
    if any(type(k) is not str for k in sd):
        bad = next(k for k in sd if type(k) is not str)
        raise ConversionError(f"{src}: a tensor is stored under a key that is not a string: {_short(bad)}")
    if prefix:
        kept = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not kept:
            raise ConversionError(f"{src}: no weight names start with prefix {prefix!r} "
                                  f"(names start like {[k[:60] for k in list(sd)[:5]]})")
        sd = kept
    if any(k.startswith("backbone.") for k in sd):  # mmdet / mmseg: keep the backbone only
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        for pat, rep in _LEGACY_RENAMES:
            k = pat.sub(rep, k)
        out[k] = v
    return out, part


def _shape(sd: dict, key: str) -> tuple | None:
    t = sd.get(key)
    if t is None:
        return None
    t._check()  # ints, in range, consistent with the storage
    return tuple(t.shape)


def _field(section: dict, key: str, default, kind, lo=None, hi=None, src: str = ""):
    """A yacs field as ``kind`` (int, float, str, bool), in [lo, hi], or a ConversionError naming it."""
    v = section.get(key, default)
    try:
        if kind is bool:
            if not isinstance(v, (bool, int)):
                raise TypeError
            out = bool(v)
        elif kind is str:
            if not isinstance(v, str) or len(v) > 64:
                raise TypeError
            out = v
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError
            out = kind(v)
            if kind is int and out != v:
                raise TypeError
            if (lo is not None and out < lo) or (hi is not None and out > hi) or not math.isfinite(out):
                raise ValueError
    except (TypeError, ValueError, OverflowError):
        rng = f" in [{lo}, {hi}]" if lo is not None else ""
        raise ConversionError(f"{src}: config field {key} = {_short(v)} is not a valid {kind.__name__}{rng}") from None
    return out


def config_from_yacs(cfg: dict, src: str) -> dict | None:
    """The runtime config from an embedded yacs ``CfgNode`` (``MODEL.VSSM``), if present."""
    model = cfg.get("MODEL") if isinstance(cfg, dict) else None
    vssm = model.get("VSSM") if isinstance(model, dict) else None
    if not isinstance(vssm, dict) or "DEPTHS" not in vssm:
        return None
    ft = _field(vssm, "SSM_FORWARDTYPE", "v2", str, src=src)
    acts = {}
    for key, default in (("SSM_ACT_LAYER", "silu"), ("MLP_ACT_LAYER", "gelu")):
        acts[key] = _field(vssm, key, default, str, src=src).lower()
        if acts[key] not in _ACTIVATIONS:
            raise ConversionError(f"{src}: config field {key} = {acts[key]!r} is not one of {list(_ACTIVATIONS)}")
    norm_layer = _field(vssm, "NORM_LAYER", "ln", str, src=src).lower()
    if norm_layer not in ("ln", "ln2d"):
        # BatchNorm: the official code does not run it on a CPU either.
        raise ConversionError(f"{src}: config field NORM_LAYER = {norm_layer!r} is not supported (ln, ln2d)")
    data = cfg.get("DATA") if isinstance(cfg.get("DATA"), dict) else {}
    depths = vssm["DEPTHS"]
    if not isinstance(depths, (list, tuple)) or not 1 <= len(depths) <= MAX_STAGES:
        raise ConversionError(f"{src}: config field DEPTHS = {_short(depths)} must list 1 to {MAX_STAGES} stages")
    rank = vssm.get("SSM_DT_RANK", "auto")
    if rank != "auto":
        rank = _field(vssm, "SSM_DT_RANK", None, int, 1, MAX_DIMS, src)
    return {
        "dims": _field(vssm, "EMBED_DIM", 96, int, 1, MAX_DIMS, src),
        "depths": [_field({"DEPTHS": d}, "DEPTHS", None, int, 0, MAX_BLOCKS, src) for d in depths],
        "ssm_d_state": _field(vssm, "SSM_D_STATE", 16, int, 1, LIMITS["d_state"], src),
        "ssm_ratio": _field(vssm, "SSM_RATIO", 2.0, float, 0, LIMITS["ratio"], src),
        "ssm_dt_rank": rank,
        "ssm_conv": _field(vssm, "SSM_CONV", 3, int, -1, LIMITS["conv"], src),
        "ssm_conv_bias": _field(vssm, "SSM_CONV_BIAS", True, bool, src=src),
        "ssm_act_layer": acts["SSM_ACT_LAYER"],
        "forward_type": ft,
        "mlp_ratio": _field(vssm, "MLP_RATIO", 4.0, float, 0, LIMITS["ratio"], src),
        "mlp_act_layer": acts["MLP_ACT_LAYER"],
        "gmlp": _field(vssm, "GMLP", False, bool, src=src),
        "patch_norm": _field(vssm, "PATCH_NORM", True, bool, src=src),
        "posembed": _field(vssm, "POSEMBED", False, bool, src=src),
        "imgsize": _field(data, "IMG_SIZE", 224, int, 1, LIMITS["imgsize"], src),
        "patchembed_version": _field(vssm, "PATCHEMBED", "v2", str, src=src),
        "downsample_version": _field(vssm, "DOWNSAMPLE", "v2", str, src=src),
        "num_classes": _field(model, "NUM_CLASSES", 1000, int, 0, LIMITS["classes"], src),
        "out_indices": None,
        "in_chans": _field(vssm, "IN_CHANS", 3, int, 1, LIMITS["in_chans"], src),
        "patch_size": _field(vssm, "PATCH_SIZE", 4, int, 1, 64, src),  # the core takes 4 alone, and says so
    }


def infer_config(sd: dict, src: str) -> dict:
    """Work the architecture out from key names and shapes alone (the Rust
    model's own names: ``_native.infer_config``)."""
    tensors = [(k, list(_shape(sd, k))) for k in sd]
    try:
        return json.loads(_native.infer_config(tensors))
    except VMambaError as e:
        sample = [k[:60] for k in (sorted(sd) if len(sd) < 10_000 else list(sd))[:6]]
        raise ConversionError(f"{src}: cannot determine the architecture: {e} (keys start with {sample})") from None


def _to_f32(t: LazyTensor, name: str) -> np.ndarray:
    arr = t.numpy()
    if arr.dtype.kind != "f":
        raise ConversionError(f"tensor '{name}' has dtype {t.dtype}; model weights must be floating point")
    return np.ascontiguousarray(arr, dtype=np.float32)


_ARCH_KEYS = ("dims", "depths", "ssm_d_state", "ssm_ratio", "forward_type", "mlp_ratio", "patchembed_version",
              "downsample_version", "ssm_conv_bias", "num_classes")


def check_preset(cfg: dict, preset: str, src: str) -> None:
    """Refuse a checkpoint whose architecture is not the released preset's."""
    want = json.loads(_native.Model.preset_json(preset))
    diff = {k: (cfg.get(k), want[k]) for k in _ARCH_KEYS if cfg.get(k) != want[k]}
    if diff:
        detail = ", ".join(f"{k}: {got!r} (preset: {exp!r})" for k, (got, exp) in diff.items())
        raise ConversionError(f"{src}: not the architecture of '{preset}': {detail}")


def default_metadata(cfg: dict) -> dict[str, str]:
    """Labels and preprocessing for classifiers: ImageNet-1K names for 1000 classes."""
    from .preprocess import Preprocess

    if cfg.get("out_indices") is not None:
        return {}
    meta = {_native.FORMAT["preprocess"]: Preprocess().to_json()}
    if cfg.get("num_classes") == 1000:
        from .labels import imagenet_labels

        meta[_native.FORMAT["labels"]] = json.dumps(imagenet_labels())
    return meta


# MODEL.VSSM keys of the official config.py (every version): a key outside them is
# a typo or another model's, which yacs itself would refuse.
_VSSM_KEYS = frozenset((
    "PATCH_SIZE", "IN_CHANS", "DEPTHS", "EMBED_DIM", "SSM_D_STATE", "SSM_RATIO", "SSM_RANK_RATIO", "SSM_DT_RANK",
    "SSM_ACT_LAYER", "SSM_CONV", "SSM_CONV_BIAS", "SSM_DROP_RATE", "SSM_INIT", "SSM_FORWARDTYPE", "MLP_RATIO",
    "MLP_ACT_LAYER", "MLP_DROP_RATE", "PATCH_NORM", "NORM_LAYER", "DOWNSAMPLE", "PATCHEMBED", "GMLP", "POSEMBED"))


def _runtime_keys() -> frozenset:
    """The fields of a runtime config, as the native core writes one."""
    return frozenset(json.loads(_native.Model.preset_json("vmamba-tiny-s1l8")))


def arch_config(arch: str | os.PathLike | dict, src: str) -> dict:
    """The runtime config from what a user names: the official yaml (``.yaml``),
    a runtime config (``.json``, or ``model.config``), or a yacs dict. Files are
    read by :mod:`configfile` (bounded; typed errors naming the file)."""
    where = src
    if not isinstance(arch, dict):
        where = os.fspath(arch)
        arch = configfile.load_yacs(where) if where.endswith((".yaml", ".yml")) else configfile.load_json(where)
    else:
        configfile.check_tree(arch, where)
    if isinstance(arch, dict) and "MODEL" in arch:
        vssm = arch["MODEL"].get("VSSM") if isinstance(arch["MODEL"], dict) else None
        unknown = sorted(set(vssm) - _VSSM_KEYS) if isinstance(vssm, dict) else []
        if unknown:
            raise ConversionError(f"{where}: config field MODEL.VSSM.{_short(unknown[0], 40)} is not an official key")
        cfg = config_from_yacs(arch, where)
        if cfg is None:
            raise ConversionError(f"{where}: the config has no MODEL.VSSM.DEPTHS")
        return cfg
    if isinstance(arch, dict) and "dims" in arch:
        unknown = sorted(set(arch) - _runtime_keys())
        if unknown:
            raise ConversionError(f"{where}: config field {_short(unknown[0], 40)} is not a runtime config field")
        return dict(arch)
    raise ConversionError(f"{where}: neither an official yacs config (MODEL.VSSM) nor a runtime config (dims, depths, ...)")


def _with_head(cfg: dict, sd: dict, src: str) -> dict:
    """A named architecture, with the head (or backbone outputs) the weights have."""
    cfg = dict(cfg)
    head = _shape(sd, "classifier.head.weight")
    if head is not None:
        cfg["num_classes"], cfg["out_indices"] = head[0], None
    elif cfg.get("out_indices") is None:
        cfg["num_classes"], cfg["out_indices"] = 0, infer_config(sd, src)["out_indices"]
    return cfg


def _validated(cfg: dict, src: str) -> dict:
    """The config as the runtime reads it, or a ConversionError saying which field is wrong."""
    try:
        return json.loads(_native.normalize_config(json.dumps(cfg)))
    except (VMambaError, TypeError, ValueError) as e:
        raise ConversionError(f"{src}: {e}") from None


def _check_destination(src: str, dst: str) -> None:
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise ConversionError(f"{dst}: the output folder {folder} does not exist")
    if os.path.exists(dst):
        if not stat.S_ISREG(os.stat(dst).st_mode):
            raise ConversionError(f"{dst}: exists and is not a regular file (a folder, FIFO or device); not replacing it")
        if os.path.samefile(src, dst):
            raise ConversionError(f"{dst}: is the checkpoint being converted; choose another output path")


_PART_PATTERN = ".vmamba-rt-*.part"


def _remove_stale_parts(folder: str, min_age: float = 10.0) -> None:
    """Delete temporary files that a killed conversion left in ``folder``.

    A writer holds an exclusive lock on its temporary file until it is renamed
    or removed; the lock dies with the process. So a part file that nobody
    holds (and that is not brand new) is litter.
    """
    import time

    for path in glob.glob(os.path.join(glob.escape(folder), _PART_PATTERN)):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < min_age:
                continue
            lock(fd, wait=False)
            os.unlink(path)
        except OSError:  # held by a live writer, or already gone
            pass
        finally:
            os.close(fd)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, ema: bool = False,
            metadata: dict[str, str] | None = None, preset: str | None = None,
            config: str | os.PathLike | dict | None = None, prefix: str | None = None) -> str:
    """Convert an official checkpoint ``src`` (.pth) to ``dst`` (.safetensors). Returns ``dst``.

    ``ema=True`` takes the ``model_ema`` weights of a training checkpoint.
    ``prefix`` keeps only the weights whose names start with it, without it (for
    fine-tuned checkpoints that nest the backbone, e.g. ``"visual_encoder."``).
    Extra ``metadata`` entries (string to string) are stored in the header.
    The architecture is, in this order: ``preset`` (a registry name; an embedded
    config must then agree with it), ``config`` (the official yaml, a runtime
    config ``.json`` or a dict), the yacs config embedded in training checkpoints,
    or a guess from tensor names and shapes (with an :class:`ArchitectureGuessWarning`,
    since variants that share names and shapes cannot be told apart).
    """
    from safetensors.numpy import save_file

    src, dst = os.fspath(src), os.fspath(dst)
    if preset is not None and config is not None:
        raise ConversionError("give preset or config, not both")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ConversionError("metadata must map strings to strings")
    _check_destination(src, dst)
    ckpt = load_pth(src)
    sd, part = extract_state_dict(ckpt, src, ema=ema, prefix=prefix)
    yacs = config_from_yacs(ckpt.get("config"), src) if isinstance(ckpt, dict) and part in ("model", "model_ema") else None
    if preset is not None:
        try:
            named = json.loads(_native.Model.preset_json(preset))
        except VMambaError as e:
            raise ConversionError(str(e)) from None
        if yacs is not None:
            check_preset(yacs, preset, src)
        cfg, source = _with_head(named, sd, src), f"preset {preset}"
    elif config is not None:
        cfg, source = _with_head(arch_config(config, src), sd, src), "given"
    elif yacs is not None:
        cfg, source = yacs, "embedded"
        if cfg["out_indices"] is None and "classifier.head.weight" not in sd:
            cfg["out_indices"] = infer_config(sd, src)["out_indices"]
    else:
        cfg, source = infer_config(sd, src), "inferred"
        warnings.warn(
            f"{src}: no architecture given or embedded; guessed {cfg['forward_type']} {cfg['depths']} from the "
            "tensor names and shapes. Variants with the same tensors (scan-order ablations, other activations) "
            "cannot be told apart: pass preset= or config= (CLI: --preset, --config) to be sure.",
            ArchitectureGuessWarning, stacklevel=2,
        )
    cfg = _validated(cfg, src)
    tensors = {k: _to_f32(v, k) for k, v in sd.items()}
    meta = {META_FORMAT: FORMAT_VERSION, META_CONFIG: json.dumps(cfg), META_CONFIG_SOURCE: source,
            META_SOURCE: f"{os.path.basename(src)}:{part}"}
    meta.update(default_metadata(cfg))
    if preset is not None:
        meta[META_NAME] = preset
    meta.update(metadata or {})

    out_dir = os.path.dirname(os.path.abspath(dst))
    _remove_stale_parts(out_dir)
    fd, tmp = tempfile.mkstemp(prefix=".vmamba-rt-", suffix=".safetensors.part", dir=out_dir)
    try:
        lock(fd)  # held until the end: marks the file as in use
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)
        try:
            _native.check_weights(tmp)  # loads the model: every tensor by name and shape
        except VMambaError as e:
            why = str(e).replace(tmp, dst)
            raise ConversionError(f"{src}: converted weights do not fit the architecture {cfg}: {why}") from None
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.close(fd)
    return dst
