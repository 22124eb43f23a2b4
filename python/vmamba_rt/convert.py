"""Convert official VMamba checkpoints (``.pth``) to self-describing safetensors.

The architecture comes from the yacs config embedded in training checkpoints,
or else is inferred from the tensors' names and shapes. The result is loaded by
the runtime before it is moved into place, so a file at ``dst`` is always
complete and runnable.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from typing import Any

import numpy as np

from .checkpoint import CheckpointError, LazyTensor, load_pth

META_CONFIG = "vmamba_rt.config"
META_FORMAT = "vmamba_rt.format"
FORMAT_VERSION = "1"

# Older v0 checkpoints, applied in order (SPEC.md section 7).
_LEGACY_RENAMES = [
    (re.compile(r"\.ln_1\."), ".norm."),
    (re.compile(r"\.self_attention\."), ".op."),
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]

_FORWARD_TYPES = {"v0", "v05_noz"}


class ConversionError(ValueError):
    """The checkpoint cannot be turned into a runnable model; the message says why."""


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, LazyTensor) for v in obj.values())


def _has_tensors(obj: Any) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, LazyTensor) for v in obj.values())


def extract_state_dict(ckpt: Any, src: str, ema: bool = False) -> tuple[dict[str, LazyTensor], str]:
    """Find the model weights in any of the containers of SPEC.md section 7.

    Returns the state dict with canonical key names and the name of the part it came from.
    """
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{src}: the checkpoint holds a {type(ckpt).__name__}, not a dict of weights")
    if ema:
        if not _is_tensor_dict(ckpt.get("model_ema")):
            raise ConversionError(f"{src}: --ema asked for, but the checkpoint has no 'model_ema' weights")
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
            f"top-level keys: {sorted(map(str, ckpt))[:10]})"
        )
    sd = {str(k): v for k, v in sd.items() if isinstance(v, LazyTensor)}
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
    return None if t is None else tuple(t.shape)


def config_from_yacs(cfg: dict, src: str) -> dict | None:
    """The runtime config from an embedded yacs ``CfgNode`` (``MODEL.VSSM``), if present."""
    model = cfg.get("MODEL") if isinstance(cfg, dict) else None
    vssm = model.get("VSSM") if isinstance(model, dict) else None
    if not isinstance(vssm, dict) or "DEPTHS" not in vssm:
        return None
    ft = str(vssm.get("SSM_FORWARDTYPE", "v2"))
    if ft not in _FORWARD_TYPES:
        raise ConversionError(f"{src}: SSM_FORWARDTYPE '{ft}' is not supported (supported: {sorted(_FORWARD_TYPES)})")
    if str(vssm.get("SSM_ACT_LAYER", "silu")) != "silu" or str(vssm.get("MLP_ACT_LAYER", "gelu")) != "gelu":
        raise ConversionError(f"{src}: only SiLU in SS2D and GELU in the MLP are supported")
    rank = vssm.get("SSM_DT_RANK", "auto")
    return {
        "dims": int(vssm.get("EMBED_DIM", 96)),
        "depths": [int(d) for d in vssm["DEPTHS"]],
        "ssm_d_state": int(vssm.get("SSM_D_STATE", 16)),
        "ssm_ratio": float(vssm.get("SSM_RATIO", 2.0)),
        "ssm_dt_rank": rank if rank == "auto" else int(rank),
        "ssm_conv": int(vssm.get("SSM_CONV", 3)),
        "ssm_conv_bias": bool(vssm.get("SSM_CONV_BIAS", True)),
        "forward_type": ft,
        "mlp_ratio": float(vssm.get("MLP_RATIO", 4.0)),
        "patchembed_version": str(vssm.get("PATCHEMBED", "v2")),
        "downsample_version": str(vssm.get("DOWNSAMPLE", "v2")),
        "num_classes": int(model.get("NUM_CLASSES", 1000)),
        "out_indices": None,
        "in_chans": int(vssm.get("IN_CHANS", 3)),
        "patch_size": int(vssm.get("PATCH_SIZE", 4)),
    }


def infer_config(sd: dict, src: str) -> dict:
    """Work the architecture out from key names and shapes alone."""

    def fail(why: str):
        sample = sorted(sd)[:6]
        raise ConversionError(f"{src}: cannot determine the architecture: {why} (keys start with {sample})")

    stem0 = _shape(sd, "patch_embed.0.weight")
    if stem0 is None or len(stem0) != 4:
        fail("no 4-D 'patch_embed.0.weight'")
    if "patch_embed.5.weight" in sd:
        stem, dims = "v2", _shape(sd, "patch_embed.5.weight")[0]
    elif stem0[2] == 4:
        stem, dims = "v1", stem0[0]
    else:
        fail(f"'patch_embed.0.weight' has shape {stem0}, which fits neither stem")
    in_chans = stem0[1]

    stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))})
    if not stages or stages != list(range(len(stages))):
        fail(f"stage indices {stages} are not 0..n-1")
    depths = []
    for i in stages:
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", k))}
        if blocks != set(range(len(blocks))):
            fail(f"block indices of stage {i} are not contiguous: {sorted(blocks)}")
        depths.append(len(blocks))

    down = "v1"
    if "layers.0.downsample.reduction.weight" in sd:
        down = "v1"
    elif (s := _shape(sd, "layers.0.downsample.1.weight")) is not None:
        down = {2: "v2", 3: "v3"}.get(s[-1]) or fail(f"downsample conv of kernel {s[-1]}")
    elif len(stages) > 1:
        fail("no downsample weights after stage 0")

    cfg: dict[str, Any] = {
        "dims": dims, "depths": depths, "patchembed_version": stem, "downsample_version": down,
        "in_chans": in_chans, "patch_size": 4, "ssm_d_state": 16, "ssm_ratio": 0.0, "ssm_dt_rank": "auto",
        "ssm_conv": 3, "ssm_conv_bias": False, "forward_type": "v05_noz", "mlp_ratio": 0.0,
    }

    ranks = {}
    for i, depth in enumerate(depths):
        c = dims * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            a = _shape(sd, f"{p}.op.A_logs")
            if a is not None:
                di, n = a[0] // 4, a[1]
                cfg["ssm_d_state"], cfg["ssm_ratio"] = n, di / c
                inp = _shape(sd, f"{p}.op.in_proj.weight") or fail(f"no '{p}.op.in_proj.weight'")
                cfg["forward_type"] = "v0" if inp[0] == 2 * di else "v05_noz"
                conv = _shape(sd, f"{p}.op.conv2d.weight") or fail(f"no '{p}.op.conv2d.weight'")
                cfg["ssm_conv"] = conv[-1]
                cfg["ssm_conv_bias"] = f"{p}.op.conv2d.bias" in sd
                dtw = _shape(sd, f"{p}.op.dt_projs_weight") or fail(f"no '{p}.op.dt_projs_weight'")
                ranks[c] = dtw[2]
            fc1 = _shape(sd, f"{p}.mlp.fc1.weight")
            if fc1 is not None:
                cfg["mlp_ratio"] = fc1[0] / c
    if ranks:
        if all(r == math.ceil(c / 16) for c, r in ranks.items()):
            cfg["ssm_dt_rank"] = "auto"
        elif len(set(ranks.values())) == 1:
            cfg["ssm_dt_rank"] = next(iter(ranks.values()))
        else:
            fail(f"dt ranks {ranks} fit neither 'auto' nor one fixed rank")

    outs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"outnorm(\d+)\.weight$", k)))
    head = _shape(sd, "classifier.head.weight")
    if head is not None:
        cfg["num_classes"], cfg["out_indices"] = head[0], None
    elif outs:
        cfg["num_classes"], cfg["out_indices"] = 0, outs
    else:
        fail("neither a classifier head ('classifier.head.weight') nor backbone norms ('outnorm{i}')")
    return cfg


def _to_f32(t: LazyTensor, name: str) -> np.ndarray:
    arr = t.numpy()
    if arr.dtype.kind != "f":
        raise ConversionError(f"tensor '{name}' has dtype {t.dtype}; model weights must be floating point")
    return np.ascontiguousarray(arr, dtype=np.float32)


_ARCH_KEYS = ("dims", "depths", "ssm_d_state", "ssm_ratio", "forward_type", "mlp_ratio", "patchembed_version",
              "downsample_version", "ssm_conv_bias", "num_classes")


def check_preset(cfg: dict, preset: str, src: str) -> None:
    """Refuse a checkpoint whose architecture is not the released preset's."""
    from . import _native

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
    meta = {"vmamba_rt.preprocess": Preprocess().to_json()}
    if cfg.get("num_classes") == 1000:
        from .labels import imagenet_labels

        meta["vmamba_rt.labels"] = json.dumps(imagenet_labels())
    return meta


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, ema: bool = False,
            metadata: dict[str, str] | None = None, preset: str | None = None) -> str:
    """Convert an official checkpoint ``src`` (.pth) to ``dst`` (.safetensors). Returns ``dst``.

    ``ema=True`` takes the ``model_ema`` weights of a training checkpoint.
    Extra ``metadata`` entries (string to string) are stored in the header.
    With ``preset`` (a registry name) the architecture must be that preset's.
    """
    from safetensors.numpy import save_file

    from . import _native

    src, dst = os.fspath(src), os.fspath(dst)
    try:
        ckpt = load_pth(src)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    sd, part = extract_state_dict(ckpt, src, ema=ema)
    yacs = config_from_yacs(ckpt.get("config"), src) if isinstance(ckpt, dict) and part in ("model", "model_ema") else None
    cfg = yacs or infer_config(sd, src)
    if yacs is not None and cfg["out_indices"] is None and "classifier.head.weight" not in sd:
        cfg["out_indices"] = infer_config(sd, src)["out_indices"]
    if preset is not None:
        check_preset(cfg, preset, src)
    tensors = {k: _to_f32(v, k) for k, v in sd.items()}
    meta = {META_FORMAT: FORMAT_VERSION, META_CONFIG: json.dumps(cfg), "vmamba_rt.source": f"{os.path.basename(src)}:{part}"}
    meta.update(default_metadata(cfg))
    if preset is not None:
        meta["vmamba_rt.name"] = preset
    meta.update(metadata or {})

    out_dir = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=".vmamba-rt-", suffix=".safetensors.part", dir=out_dir)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)
        try:
            _native.check_weights(tmp)  # loads the model: every tensor by name and shape
        except _native.VMambaError as e:
            raise ConversionError(f"{src}: converted weights do not fit the architecture {cfg}: {e}") from None
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst
