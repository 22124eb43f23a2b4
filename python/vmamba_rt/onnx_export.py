"""ONNX export: the Rust core's execution plan written as an ONNX graph.

The network is not described here either (docs/onnx.md): the native model
gives the plan for one input shape, and each op kind of the plan's schema
(``_native.OP_KINDS``) has one method below that writes it as ONNX nodes, as
the CUDA engine has one that launches it. An op kind without a method is
refused by name.

Every tensor of the graph is channel-last with the batch as its leading
dimension, and every reshape leaves that dimension to the runtime (-1), so one
plan built for one image exports a graph that takes any batch. The spatial
size is fixed by the plan (the scan's orders are index tables of that size).
The selective scan is written without division, in one of three forms
(``onnx_scan.py``). Needs the ``onnx`` package (``pip install
'vmamba-rt[onnx]'``); never PyTorch.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from . import _native
from .errors import VMambaError

DEFAULT_OPSET = 17  # LayerNormalization; what TensorRT 8.6+ and OpenVINO read
SCAN_FORMS = ("chunked", "prefix", "loop")  # the default first
DTYPES = ("float32", "float16")
OUTPUTS = ("logits", "embeddings", "features")
MAX_FILE = (2 << 30) - (64 << 20)  # protobuf's 2 GB for one file, less room for the graph itself
MAX_BATCH = 1 << 16  # a fixed batch; the plan's memory check bounds it further
EPS = 1e-5  # the plan's LayerNorm epsilon (docs/model.md)


class ExportError(VMambaError):
    """An export refused: the message names the argument, file or op."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'vmamba-rt[onnx]'") from None
    return onnx


@dataclass
class ExportInfo:
    """What ``export_onnx`` wrote."""

    path: str
    input_shape: tuple  # (batch or "batch", C, H, W)
    outputs: list  # output names
    nodes: int
    bytes: int
    seconds: float


@dataclass
class _Value:
    """A plan buffer's current contents: the ONNX tensor, its shape (the
    leading -1 the batch) and element type."""

    name: str
    shape: tuple
    dtype: str


def _np_type(dtype: str):
    return np.float16 if dtype == "float16" else np.float32


class _Graph:
    """Nodes and initializers being written, with unique names."""

    def __init__(self, onnx, opset: int):
        self.onnx, self.opset = onnx, opset
        self.nodes: list = []
        self.inits: list = []
        self._names: set = set()
        self._consts: dict = {}
        self.bytes = 0  # of the initializers

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._names:
            name, i = f"{hint}_{i}", i + 1
        self._names.add(name)
        return name

    def const(self, hint: str, value, key=None) -> str:
        """An initializer (one per ``key`` when given: parameters in each type)."""
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        arr = np.array(value, order="C")
        self.bytes += arr.nbytes
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values) -> str:
        values = tuple(int(v) for v in values)
        return self.const("i64", np.array(values, np.int64), key=("i64", values))

    def scalar(self, value: float, dtype: str) -> str:
        return self.const("c", np.array(value, _np_type(dtype)), key=("scalar", float(value), dtype))

    def node(self, op: str, inputs: list, n_out: int = 1, **attrs):
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs


class _Exporter:
    """Writes one plan as ONNX nodes: one method per op kind (``OPS``)."""

    def __init__(self, onnx, plan: dict, params, names: list, dtype: str, opset: int, scan: str):
        """``params(id)``: parameter ``id`` as a float32 array; ``names``: theirs, by id."""
        self.g = _Graph(onnx, opset)
        self.plan, self.params, self.names, self.scan_form = plan, params, names, scan
        self.act_type = dtype  # the plan's "act" buffers; "f32" buffers stay float32
        self.values: dict[int, _Value] = {}
        self._params: dict = {}

    # ---- values ----------------------------------------------------------------------------------
    def buffer_type(self, buf: int) -> str:
        meta = self.plan["buffers"][buf]
        return self.act_type if meta["role"] == "work" and meta["dtype"] == "act" else "float32"

    def cast(self, v: _Value, dtype: str) -> _Value:
        if v.dtype == dtype:
            return v
        to = self.g.onnx.TensorProto.FLOAT16 if dtype == "float16" else self.g.onnx.TensorProto.FLOAT
        return _Value(self.g.node("Cast", [v.name], to=to), v.shape, dtype)

    def reshape(self, v: _Value, shape: tuple) -> _Value:
        if v.shape == tuple(shape):
            return v
        return _Value(self.g.node("Reshape", [v.name, self.g.ints(shape)]), tuple(shape), v.dtype)

    def current(self, buf: int) -> _Value:
        if buf not in self.values:
            raise ExportError(f"the plan reads buffer {buf} before any op writes it")
        return self.values[buf]

    def read(self, buf: int, shape: tuple, dtype: str) -> _Value:
        """Buffer ``buf`` viewed as ``shape`` (leading -1: the batch), in ``dtype``."""
        return self.cast(self.reshape(self.current(buf), shape), dtype)

    def write(self, buf: int, v: _Value) -> None:
        self.values[buf] = self.cast(v, self.buffer_type(buf))

    def compute_type(self, *bufs) -> str:
        """fp32 where any buffer the op touches is fp32 (the scan output, outputs), else the act type."""
        return "float32" if any(self.buffer_type(b) == "float32" for b in bufs if b is not None) else self.act_type

    def param(self, pid: int, dtype: str, shape: tuple | None = None, relayout=None) -> str:
        """Parameter ``pid`` as an initializer, named as in the checkpoint."""
        key = (pid, dtype, shape, relayout.__name__ if relayout else None)
        if key not in self._params:
            arr = np.asarray(self.params(pid), np.float32)
            if relayout is not None:
                arr = relayout(arr)
            if shape is not None:
                arr = arr.reshape(shape)
            self._params[key] = self.g.const(self.names[pid], arr.astype(_np_type(dtype)))
        return self._params[key]

    def transpose(self, v: _Value, perm: list) -> _Value:
        return _Value(self.g.node("Transpose", [v.name], perm=perm), tuple(v.shape[p] for p in perm), v.dtype)

    def unary(self, op: str, v: _Value, **attrs) -> _Value:
        return _Value(self.g.node(op, [v.name], **attrs), v.shape, v.dtype)

    def binary(self, op: str, a: _Value, b) -> _Value:
        """``a op b``, b a value or an initializer's name broadcast to a's shape."""
        other = b.name if isinstance(b, _Value) else b
        return _Value(self.g.node(op, [a.name, other]), a.shape, a.dtype)

    def act(self, v: _Value, act: str) -> _Value:
        g = self.g
        if act == "none":
            return v
        if act == "gelu":  # the exact (erf) form, which runtimes fuse into one Gelu
            erf = self.unary("Erf", self.binary("Div", v, g.scalar(math.sqrt(2.0), v.dtype)))
            one_plus = self.binary("Add", erf, g.scalar(1.0, v.dtype))
            return self.binary("Mul", self.binary("Mul", v, one_plus), g.scalar(0.5, v.dtype))
        if act == "silu":
            return self.binary("Mul", v, self.unary("Sigmoid", v))
        if act == "relu":
            return self.unary("Relu", v)
        if act == "sigmoid":
            return self.unary("Sigmoid", v)
        raise ExportError(f"the ONNX exporter has no activation {act!r}")

    def columns(self, buf: int, stride: int, offset: int, c: int, dtype: str, what: str) -> _Value:
        """Channels [offset, offset + c) of rows ``stride`` apart: (-1, c)."""
        if offset + c > stride:
            raise ExportError(f"{what} reads channels {offset}..{offset + c} of rows {stride} wide")
        v = self.read(buf, (-1, stride), dtype)
        if (offset, c) == (0, stride):
            return v
        g = self.g
        return _Value(g.node("Slice", [v.name, g.ints([offset]), g.ints([offset + c]), g.ints([1])]), (-1, c), dtype)

    def slice(self, v: _Value, axis: int, start: int, end: int, step: int = 1) -> str:
        g = self.g
        return g.node("Slice", [v.name, g.ints([start]), g.ints([end]), g.ints([axis]), g.ints([step])])

    def check_covers(self, op: dict, buf: int, elements: int) -> None:
        """The exporter writes whole buffers: an op that touches part of one is refused."""
        have = self.plan["buffers"][buf]["len"]
        if have != elements:
            raise ExportError(f"{op['op']} op covers {elements} of the {have} elements of buffer {buf}: "
                              "the ONNX exporter writes whole buffers")

    # ---- one method per op kind ------------------------------------------------------------------
    def _to_channels_last(self, op):
        b, c, h, w = op["b"], op["c"], op["h"], op["w"]
        self.check_covers(op, op["dst"], b * c * h * w)
        x = self.read(op["src"], (-1, c, h, w), self.compute_type(op["src"], op["dst"]))
        self.write(op["dst"], self.transpose(x, [0, 2, 3, 1]))

    def _to_channels_first(self, op):
        b, c, h, w = op["b"], op["c"], op["h"], op["w"]
        self.check_covers(op, op["dst"], b * c * h * w)
        x = self.read(op["src"], (-1, h, w, c), self.compute_type(op["src"], op["dst"]))
        self.write(op["dst"], self.transpose(x, [0, 3, 1, 2]))

    def _im2col(self, op):
        b, h, w, c, k, s, p, ho, wo = (op[f] for f in ("b", "h", "w", "c", "k", "stride", "pad", "ho", "wo"))
        if (ho, wo) != ((h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1):
            raise ExportError(f"im2col op: ho x wo {ho} x {wo} is not what its window gives")
        self.check_covers(op, op["dst"], b * ho * wo * k * k * c)
        g = self.g
        x = self.read(op["src"], (-1, h, w, c), self.compute_type(op["src"], op["dst"]))
        if p:
            x = _Value(g.node("Pad", [x.name, g.ints([0, p, p, 0, 0, p, p, 0])]), (-1, h + 2 * p, w + 2 * p, c),
                       x.dtype)
        # One strided slice per tap, in the (ky, kx, c) order of the plan's columns.
        taps = [g.node("Slice", [x.name, g.ints([ky, kx]), g.ints([ky + (ho - 1) * s + 1, kx + (wo - 1) * s + 1]),
                                 g.ints([1, 2]), g.ints([s, s])])
                for ky in range(k) for kx in range(k)]
        cols = taps[0] if len(taps) == 1 else g.node("Concat", taps, axis=3)
        self.write(op["dst"], _Value(cols, (-1, ho, wo, k * k * c), x.dtype))

    def _linear(self, op):
        rows, inp, out = op["rows"], op["inp"], op["out"]
        self.check_covers(op, op["src"], rows * inp)
        self.check_covers(op, op["dst"], rows * out)
        t = self.compute_type(op["src"], op["dst"])
        x = self.read(op["src"], (-1, inp), t)
        ins = [x.name, self.param(op["weight"], t, (out, inp))]
        if op["bias"] is not None:
            ins.append(self.param(op["bias"], t, (out,)))
        y = self.act(_Value(self.g.node("Gemm", ins, transB=1), (-1, out), t), op["act"])
        if op["accumulate"]:
            y = self.binary("Add", self.read(op["dst"], (-1, out), t), y)
        self.write(op["dst"], y)
        if op["norm_dst"] is not None:  # the residual step's fused norm
            self.check_covers(op, op["norm_dst"], rows * out)
            self.norm(op["dst"], op["norm_dst"], out, op["norm_weight"], op["norm_bias"])

    def _act(self, op):
        self.check_covers(op, op["buf"], op["len"])
        self.write(op["buf"], self.act(self.current(op["buf"]), op["act"]))

    def _add_param(self, op):
        self.check_covers(op, op["buf"], op["b"] * op["len"])
        t = self.compute_type(op["buf"])
        x = self.read(op["buf"], (-1, op["len"]), t)
        self.write(op["buf"], self.binary("Add", x, self.param(op["param"], t, (op["len"],))))

    def norm(self, src: int, dst: int, c: int, weight, bias, gate: dict | None = None) -> None:
        """dst = LayerNorm(src) over c channels (times the gate of a gated norm)."""
        t = self.compute_type(src, dst, gate and gate["buf"])
        g = self.g
        x = self.read(src, (-1, c), t)
        # Without weights (the cascade scan's plain norms): scale 1, shift 0.
        w = (self.param(weight, t, (c,)) if weight is not None
             else g.const("ones", np.ones(c, _np_type(t)), key=("ones", c, t)))
        b = (self.param(bias, t, (c,)) if bias is not None
             else g.const("zeros", np.zeros(c, _np_type(t)), key=("zeros", c, t)))
        y = _Value(g.node("LayerNormalization", [x.name, w, b], axis=-1, epsilon=EPS), (-1, c), t)
        if gate is not None:
            z = self.columns(gate["buf"], gate["stride"], gate["offset"], c, t, "layer_norm op: gate")
            y = self.binary("Mul", y, self.act(z, gate["act"]))
        self.write(dst, y)

    def _layer_norm(self, op):
        rows, c = op["rows"], op["c"]
        self.check_covers(op, op["src"], rows * c)
        self.check_covers(op, op["dst"], rows * c)
        gate = None
        if op["gate"] is not None:
            self.check_covers(op, op["gate"], rows * op["gate_stride"])
            gate = {"buf": op["gate"], "stride": op["gate_stride"], "offset": op["gate_offset"], "act": op["gate_act"]}
        self.norm(op["src"], op["dst"], c, op["weight"], op["bias"], gate)

    def _pointwise(self, op):
        rows, c = op["rows"], op["c"]
        self.check_covers(op, op["dst"], rows * c)
        t = self.compute_type(op["src"], op["dst"], op["gate"])
        self.check_covers(op, op["src"], rows * op["src_stride"])
        y = self.act(self.columns(op["src"], op["src_stride"], op["src_offset"], c, t, "pointwise op: src"),
                     op["act"])
        if op["gate"] is not None:
            self.check_covers(op, op["gate"], rows * op["gate_stride"])
            z = self.columns(op["gate"], op["gate_stride"], op["gate_offset"], c, t, "pointwise op: gate")
            y = self.binary("Mul", y, self.act(z, op["gate_act"]))
        self.write(op["dst"], y)

    def _dw_conv_act(self, op):
        b, h, w, c, k = op["b"], op["h"], op["w"], op["c"], op["k"]
        self.check_covers(op, op["src"], b * h * w * op["src_stride"])
        self.check_covers(op, op["dst"], b * h * w * c)
        t = self.compute_type(op["src"], op["dst"])
        g = self.g
        x = self.reshape(self.columns(op["src"], op["src_stride"], 0, c, t, "dw_conv_act op"), (-1, h, w, c))
        x = self.transpose(x, [0, 3, 1, 2])  # Conv reads (B, C, H, W)

        def taps_to_oihw(wt):  # tap-major (k*k, C) -> (C, 1, k, k)
            return wt.reshape(k, k, c).transpose(2, 0, 1)[:, None]

        ins = [x.name, self.param(op["weight"], t, relayout=taps_to_oihw)]
        if op["bias"] is not None:
            ins.append(self.param(op["bias"], t, (c,)))
        # The plan's taps sit at offsets -k/2 .. k-1-k/2 around each pixel, zeros outside.
        lo, hi = k // 2, k - 1 - k // 2
        y = _Value(g.node("Conv", ins, group=c, kernel_shape=[k, k], pads=[lo, lo, hi, hi]), (-1, c, h, w), t)
        y = self.transpose(self.act(y, op["act"]), [0, 2, 3, 1])
        self.write(op["dst"], y)

    def _spatial_softmax(self, op):
        b, hw, c = op["b"], op["hw"], op["c"]
        self.check_covers(op, op["src"], b * hw * c)
        self.check_covers(op, op["dst"], b * hw * c)
        x = self.read(op["src"], (-1, hw, c), self.compute_type(op["src"], op["dst"]))
        self.write(op["dst"], self.unary("Softmax", x, axis=1))

    def _transpose_hw(self, op):
        b, h, w, c = op["b"], op["h"], op["w"], op["c"]
        self.check_covers(op, op["src"], b * h * w * c)
        self.check_covers(op, op["dst"], b * h * w * c)
        x = self.read(op["src"], (-1, h, w, c), self.compute_type(op["src"], op["dst"]))
        self.write(op["dst"], self.transpose(x, [0, 2, 1, 3]))

    def _patch_merge(self, op):
        b, h, w, c = op["b"], op["h"], op["w"], op["c"]
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        self.check_covers(op, op["src"], b * h * w * c)
        self.check_covers(op, op["dst"], b * h2 * w2 * 4 * c)
        g = self.g
        x = self.read(op["src"], (-1, h, w, c), self.compute_type(op["src"], op["dst"]))
        if (h % 2, w % 2) != (0, 0):  # zeros past an odd edge
            x = _Value(g.node("Pad", [x.name, g.ints([0, 0, 0, 0, 0, h % 2, w % 2, 0])]), (-1, 2 * h2, 2 * w2, c),
                       x.dtype)
        # (b, i, dy, j, dx, c) -> (b, i, j, dx, dy, c): the groups (0,0), (1,0), (0,1), (1,1) as (dy, dx).
        x = self.reshape(x, (-1, h2, 2, w2, 2, c))
        x = self.transpose(x, [0, 1, 3, 4, 2, 5])
        self.write(op["dst"], self.reshape(x, (-1, h2, w2, 4 * c)))

    def _mean_pool(self, op):
        b, hw, c = op["b"], op["hw"], op["c"]
        self.check_covers(op, op["src"], b * hw * c)
        self.check_covers(op, op["dst"], b * c)
        x = self.read(op["src"], (-1, hw, c), self.compute_type(op["src"], op["dst"]))
        if self.g.opset >= 18:
            y = self.g.node("ReduceMean", [x.name, self.g.ints([1])], keepdims=0)
        else:
            y = self.g.node("ReduceMean", [x.name], axes=[1], keepdims=0)
        self.write(op["dst"], _Value(y, (-1, c), x.dtype))

    def _cross_scan(self, op):
        from .onnx_scan import cross_scan  # here: onnx_scan builds on this module's values

        self.write(op["dst"], cross_scan(self, op))

    def model(self, name: str, inputs: list, outputs: list):
        """The graph written so far as a model: ``inputs`` (name, shape) and
        ``outputs`` (name, buffer, shape), all float32; the batch leads every shape."""
        from . import __version__

        helper, tp = self.g.onnx.helper, self.g.onnx.TensorProto
        for out, buf, shape in outputs:
            v = self.cast(self.reshape(self.current(buf), (-1, *shape[1:])), "float32")
            self.g.nodes.append(helper.make_node("Identity", [v.name], [out]))

        def info(pairs):
            return [helper.make_tensor_value_info(n, tp.FLOAT, list(s)) for n, s in pairs]

        graph = helper.make_graph(self.g.nodes, name, info(inputs), info((o, s) for o, _, s in outputs),
                                  self.g.inits)
        opsets = [helper.make_opsetid("", self.g.opset)]
        return helper.make_model(graph, opset_imports=opsets, producer_name="vmamba-rt", producer_version=__version__,
                                 ir_version=helper.find_min_ir_version_for(opsets))

    # Every op kind of the plan's schema (_native.OP_KINDS) and what writes it.
    OPS = {
        "to_channels_last": _to_channels_last, "to_channels_first": _to_channels_first, "im2col": _im2col,
        "linear": _linear, "act": _act, "add_param": _add_param, "layer_norm": _layer_norm,
        "pointwise": _pointwise, "dw_conv_act": _dw_conv_act, "cross_scan": _cross_scan,
        "spatial_softmax": _spatial_softmax, "transpose_hw": _transpose_hw, "patch_merge": _patch_merge,
        "mean_pool": _mean_pool,
    }

    def run(self) -> None:
        for i, op in enumerate(self.plan["ops"]):
            write = self.OPS.get(op.get("op"))
            if write is None:
                raise ExportError(f"the ONNX exporter cannot express plan op {op.get('op')!r} (op {i})")
            write(self, op)



# ---- the front ---------------------------------------------------------------------------------------
def _positive(value, what: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= most:
        raise ExportError(f"{what} must be an integer from 1 to {most}, got {value!r}")
    return int(value)


def _model(model_or_path):
    from .loading import load
    from .model import Model

    if isinstance(model_or_path, Model):
        model = model_or_path
        if model.device != "cpu" or model.dtype != "float32":
            raise ExportError(f"export_onnx: {model.path} is loaded with device={model.device!r}, "
                              f"dtype={model.dtype!r}; export from the float32 CPU model (the default load)")
        return model
    if not isinstance(model_or_path, (str, os.PathLike)) and model_or_path is not None:
        raise ExportError(f"model must be a vmamba_rt.Model or a weights path, got {type(model_or_path).__name__}")
    return load(model_or_path)


def _input_size(model, input_size) -> tuple[int, int]:
    most = _native.LIMITS["input_size"]
    if input_size is None:
        side = model.config["imgsize"] if model.config.get("posembed") else model.preprocess.input_size
        input_size = (side, side)
    elif isinstance(input_size, (int, np.integer)) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if not isinstance(input_size, (tuple, list)) or len(input_size) != 2:
        raise ExportError(f"input_size must be a side or (height, width), got {input_size!r}")
    h, w = (_positive(v, "input_size", most) for v in input_size)
    if min(h, w) < model.min_size:
        raise ExportError(f"input_size {h}x{w} is below this model's smallest input, {model.min_size} pixels a side")
    return h, w


def _out_path(out_path, source: str | None) -> str:
    if not isinstance(out_path, (str, os.PathLike)):
        raise ExportError(f"out_path must be a path, got {type(out_path).__name__}")
    out = os.path.abspath(os.fspath(out_path))
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ExportError(f"out_path {out_path}: its folder {parent} does not exist")
    if os.path.lexists(out):
        if not os.path.isfile(out) or os.path.islink(out):
            raise ExportError(f"out_path {out_path} exists and is not a regular file")
        if source is not None and os.path.exists(source) and os.path.samefile(out, source):
            raise ExportError(f"out_path {out_path} is the model's own weights file")
    return out


def export_onnx(model_or_path=None, out_path="model.onnx", *, input_size=None, batch: int | None = None,
                outputs: str | None = None, opset: int = DEFAULT_OPSET, dtype: str = "float32",
                scan: str = "chunked") -> ExportInfo:
    """Write a model as an ONNX file, from the plan the engines run (docs/onnx.md).

    ``model_or_path``: a float32 CPU ``vmamba_rt.Model``, or anything
    ``vmamba_rt.load`` takes (None: the bundled digits model). ``input_size``:
    a side or (height, width), fixed in the graph (default: the model's
    preprocessing size). ``batch``: a fixed batch, or None for a dynamic one.
    ``outputs``: "logits", "embeddings" or "features" (default: logits, or a
    backbone's features). ``dtype``: "float32", or "float16" (weights and
    activations in fp16; the scan, its output norm and the outputs in fp32).
    ``scan``: how the selective scan is written (``onnx_scan.FORMS``):
    "chunked" (the default: two ONNX ``Scan`` loops of about sqrt(L) steps),
    "prefix" (a log-depth prefix scan, no loop) or "loop" (one ``Scan`` of L
    steps). The file is written beside ``out_path``, checked with
    ``onnx.checker`` (full check) and then renamed into place: it is complete
    or absent."""
    start = time.perf_counter()
    onnx = _onnx()
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if scan not in SCAN_FORMS:
        raise ExportError(f"scan must be one of {list(SCAN_FORMS)}, got {scan!r}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not DEFAULT_OPSET <= opset <= newest:
        raise ExportError(f"opset must be an integer from {DEFAULT_OPSET} to {newest}, got {opset!r}")
    fixed = None if batch is None else _positive(batch, "batch", MAX_BATCH)
    model = _model(model_or_path)
    out = _out_path(out_path, getattr(model, "path", None))
    if outputs is None:
        outputs = "features" if model.is_backbone else "logits"
    if outputs not in OUTPUTS:
        raise ExportError(f"outputs must be one of {list(OUTPUTS)}, got {outputs!r}")
    if model.is_backbone and outputs != "features":
        raise ExportError(f"outputs={outputs!r}: {model.path} is a backbone without a classifier head; "
                          "export its features")
    h, w = _input_size(model, input_size)
    chans = model.config["in_chans"]
    native = model._native
    try:
        plan = json.loads(native.plan_json((fixed or 1, chans, h, w), outputs))
    except VMambaError as e:
        raise ExportError(f"input_size {h}x{w}, batch {fixed or 1}: {e}") from None

    names = {"logits": ["logits"], "embeddings": ["embeddings"],
             "features": [f"stage{i}" for i in model._stages()]}[outputs]
    ex = _Exporter(onnx, plan, native.param, [name for name, _, _ in native.param_table()], dtype, opset, scan)
    ex.g._names.update(["input", *names])  # no node or weight takes the graph's own names
    ex.values[0] = _Value("input", (-1, chans, h, w), "float32")
    ex.run()
    if ex.g.bytes > MAX_FILE:
        raise ExportError(f"input_size {h}x{w}: the graph would hold {ex.g.bytes / 2**30:.1f} GiB of weights and "
                          "index tables, over ONNX's 2 GiB for one file; export a smaller input_size")
    batch_dim = fixed or "batch"
    out_ids = [i for i, b in enumerate(plan["buffers"]) if b["role"] == "output"]
    proto = ex.model(f"vmamba_rt.{outputs}", [("input", [batch_dim, chans, h, w])],
                     [(name, buf, [batch_dim, *plan["buffers"][buf]["shape"][1:]])
                      for name, buf in zip(names, out_ids, strict=True)])
    meta = dict(model.metadata)
    meta.update({"vmamba_rt.onnx.outputs": outputs, "vmamba_rt.onnx.scan": scan, "vmamba_rt.onnx.dtype": dtype,
                 "vmamba_rt.onnx.input_size": f"{h}x{w}"})
    onnx.helper.set_model_props(proto, meta)

    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)
        os.replace(tmp, out)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
            raise ExportError(f"{out_path}: the exported graph fails onnx.checker: {e}") from None
        raise
    return ExportInfo(out, (batch_dim, chans, h, w), names, len(ex.g.nodes), os.path.getsize(out),
                      time.perf_counter() - start)


def op_model(ops: list, lens: list, params: list, f32: tuple = (), *, dtype: str = "float32",
             scan: str = "chunked"):
    """A few plan ops alone as an ONNX model, for op-level tests (the twin of
    ``_native.run_op``): every buffer is an input ``buf{i}`` and an output
    ``out{i}``, flat float32 of ``lens[i]`` elements; ``params`` are arrays by
    id; ``f32`` the ids of buffers a plan keeps in fp32."""
    onnx = _onnx()
    plan = {"ops": ops, "buffers": [{"len": n, "role": "work", "dtype": "f32" if i in f32 else "act"}
                                    for i, n in enumerate(lens)]}
    ex = _Exporter(onnx, plan, lambda i: params[i], [f"param{i}" for i in range(len(params))], dtype,
                   DEFAULT_OPSET, scan)
    for i in range(len(lens)):
        ex.values[i] = ex.cast(_Value(f"buf{i}", (lens[i],), "float32"), ex.buffer_type(i))
    ex.run()
    io = [(f"buf{i}", [n]) for i, n in enumerate(lens)]
    return ex.model("ops", io, [(f"out{i}", i, [n]) for i, n in enumerate(lens)])
