"""The CUDA engine: runs the Rust core's execution plan on an NVIDIA GPU through CuPy.

The network is not described here: for each input shape the native model gives
a plan (docs/code.md, "The plan"), an ordered list of ops over its parameters
and buffers. This module uploads the parameters by id, allocates the plan's
arenas once, and turns each op into launches: GEMMs go to cuBLAS
(``cublasGemmEx``, fp32 accumulation, no TF32), everything else to the CUDA C++
kernels of ``cuda/*.cu``, compiled at run time with NVRTC (``cupy.RawModule``,
cached by CuPy). The plan comes fused (``plan/fuse.rs``): a GEMM's activation,
a residual add with the next LayerNorm, a norm with its gate are one op each,
which this engine lowers to the kernel that does both. Activations are in the
chosen dtype (float32, float16 or bfloat16); LayerNorm statistics, the scan
state and every accumulation are fp32. A shape's pass is captured into a CUDA
graph on its second call and replayed after, so small batches are not bound by
launch overhead.

Thread safety: one engine may be called from many threads. Calls are
serialised by a lock (the GPU runs one pass at a time on the engine's stream
anyway), at most ``MAX_PLANS`` shapes keep their buffers and graphs, and a
capture that fails leaves that shape eager after ``MAX_CAPTURE_FAILURES`` tries
without turning graphs off for the others.

CuPy is optional (``pip install vmamba-rt[cuda]``); without it, or without a
GPU, ``vmamba_rt.load(path, device="cuda")`` raises a clear error and the CPU
path is untouched.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict

import numpy as np

from ._native import VMambaError

KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_src")
KERNEL_FILES = ("layout.cu", "norm.cu", "dwconv.cu", "scan.cu")
DTYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}

# cuBLAS / CUDA enums used with cublasGemmEx.
_CUDA_R = {"float32": 0, "float16": 2, "bfloat16": 14}
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT = -1
_OP_N, _OP_T = 0, 1

# Enough threads in flight to fill a large GPU; fewer chains than this get their
# sequences cut into chunks (see cuda/scan.cu).
_SCAN_TARGET_THREADS = 1 << 15
_MIN_CHUNK = 16
_NULL = np.uint64(0)

# Input shapes whose buffers and graphs are kept (least recently used dropped first).
MAX_PLANS = 8
# Failed graph captures of one shape before it stays eager.
MAX_CAPTURE_FAILURES = 3


def _import_cupy():
    try:
        import cupy
    except ImportError:
        raise VMambaError(
            "device='cuda' needs CuPy: pip install 'vmamba-rt[cuda]' (or the cupy-cudaXXx wheel matching your CUDA)"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise VMambaError(f"device='cuda': no usable CUDA device ({e})") from None
    if count == 0:
        raise VMambaError("device='cuda': no CUDA device found")
    return cupy


def kernel_source() -> str:
    """All kernel sources as one translation unit (common.cuh inlined)."""
    common = open(os.path.join(KERNEL_DIR, "common.cuh")).read()
    parts = [common]
    for name in KERNEL_FILES:
        text = open(os.path.join(KERNEL_DIR, name)).read()
        parts.append(text.replace('#include "common.cuh"', ""))
    return "\n".join(parts).replace("#pragma once", "")


def kernel_names(t: str, scans: set[tuple[int, int]]) -> list[str]:
    """Template instantiations the model needs for activation type ``t``."""
    names = [f"{k}<{t}>" for k in ("nchw_to_nhwc", "nhwc_to_nchw", "im2col", "patch_merge", "bias_act",
                                   "bias_to_f32", "mean_pool", "layernorm", "residual_layernorm",
                                   "layernorm_gate", "spatial_softmax")]
    # Read from activations or from the fp32 scan output.
    for k in ("pointwise", "dwconv_act"):
        names += list(dict.fromkeys([f"{k}<{t}, {t}>", f"{k}<{t}, float>"]))
    names += list(dict.fromkeys([f"transpose_hw<{t}>", "transpose_hw<float>"]))
    for n, r in sorted(scans):
        names += [f"scan_chunks<{n}, {r}, {t}, false>", f"scan_chunks<{n}, {r}, {t}, true>"]
    return names + ["scan_carry"]


# The plan's activations and scan paths as the kernels number them (cuda/common.cuh, cuda/scan.cu).
ACT_CODES = {"none": 0, "gelu": 1, "silu": 2, "relu": 3, "sigmoid": 4}
SCAN_PATHS = {"raster": 0, "transposed": 1, "raster_rev": 2, "transposed_rev": 3, "rot90": 4, "rot270": 5,
              "raster_rev_unflipped": 6}


def _unsupported(what: str) -> VMambaError:
    return VMambaError(f"the CUDA engine does not run {what}; load this model with device='cpu'")


def _scans(ops: list) -> set:
    """The (d_state, dt_rank) pairs of the scans in ``ops``: the kernel instantiations they need."""
    return {(op["n"], op["r"]) for op in ops if op["op"] == "cross_scan"}


class _Build:
    """What the launches of one plan share while they are made (``CudaEngine._steps``)."""

    def __init__(self, plan: dict, bufs: list):
        self.bufs = bufs
        self.roles = [b["role"] for b in plan["buffers"]]
        self.f32 = [b.get("dtype") == "f32" for b in plan["buffers"]]  # fp32 work buffers (the scan's output)
        self.tmp = self.carry_a = self.carry_h = None  # scratch, sized by CudaEngine._steps
        self.steps: list = []


class _Plan:
    """One input shape's plan: its buffers (allocated once and reused by every
    call), the launches that run it, and the CUDA graph captured over them."""

    def __init__(self, plan: dict, steps: list, x_in, outputs: list):
        self.plan, self.steps, self.x_in, self.outputs = plan, steps, x_in, outputs
        self.graph = None
        self.warm = False
        self.capture_failures = 0


class _Cublas:
    """cuBLAS GEMMs on our stream. CuPy's own wrappers refuse to run while a stream
    is being captured, so the GEMMs call libcublas (the copy CuPy loaded) through
    ctypes on a handle of our own, with a fixed workspace: then the whole pass,
    GEMMs included, can be captured into a CUDA graph. Where that library cannot
    be found, CuPy's wrapper is used and graphs are off."""

    def __init__(self, cp, stream):
        import ctypes

        self.cp, self._ct = cp, ctypes
        self.lib = self.handle = None
        self.workspace = cp.empty(32 << 20, cp.uint8)
        path = self._library_path()
        if path is None:
            return
        lib = ctypes.CDLL(path)
        handle = ctypes.c_void_p()
        if lib.cublasCreate_v2(ctypes.byref(handle)) != 0:
            return
        lib.cublasSetStream_v2(handle, ctypes.c_void_p(stream.ptr))
        if hasattr(lib, "cublasSetWorkspace_v2"):
            lib.cublasSetWorkspace_v2(handle, ctypes.c_void_p(self.workspace.data.ptr), ctypes.c_size_t(self.workspace.nbytes))
        self.lib, self.handle = lib, handle

    def _library_path(self) -> str | None:
        from cupy_backends.cuda.libs import cublas  # noqa: F401  (loads libcublas into the process)

        self.cp.cuda.device.get_cublas_handle()
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    path = line.split()[-1]
                    if os.path.basename(path).startswith("libcublas.so"):
                        return path
        except OSError:
            pass
        return None

    @property
    def capturable(self) -> bool:
        return self.lib is not None

    def gemm_ex(self, ta, tb, m, n, k, alpha, a, atype, lda, b, btype, ldb, beta, c, ctype, ldc):
        if self.lib is None:
            from cupy_backends.cuda.libs import cublas

            cublas.gemmEx(self.cp.cuda.device.get_cublas_handle(), ta, tb, m, n, k, alpha, a, atype, lda, b, btype,
                          ldb, beta, c, ctype, ldc, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT)
            return
        ct = self._ct
        i, p = ct.c_int, ct.c_void_p
        status = self.lib.cublasGemmEx(self.handle, i(ta), i(tb), i(m), i(n), i(k), p(alpha), p(a), i(atype), i(lda),
                                       p(b), i(btype), i(ldb), p(beta), p(c), i(ctype), i(ldc),
                                       i(_CUBLAS_COMPUTE_32F), i(_CUBLAS_GEMM_DEFAULT))
        if status != 0:
            raise VMambaError(f"cublasGemmEx failed with status {status} ({m}x{n}x{k})")

    def __del__(self):
        import sys

        # At interpreter exit the CUDA context may already be gone: leave the handle then.
        if self.lib is not None and self.handle is not None and not sys.is_finalizing():
            self.lib.cublasDestroy_v2(self.handle)


class CudaEngine:
    """Runs a native model's plans on a CUDA GPU. Same calls as the native CPU
    model (``forward``, ``embed``, ``features``); inputs may be numpy or CuPy
    arrays, outputs are of the same kind (float32).

    ``dtype`` is the activation and weight type: "float32" (default), "float16"
    or "bfloat16". ``graphs=True`` captures each input shape's pass into a CUDA
    graph on its second call and replays it after.
    """

    device = "cuda"

    def __init__(self, native, *, dtype: str = "float32", graphs: bool = True):
        self._native = native
        self._setup(dtype, graphs, [(native.param(i), kind) for i, (_, kind, _) in enumerate(native.param_table())])
        # Plan the smallest input now: a model with an op the engine lacks is refused at load.
        side, chans = native.min_size, json.loads(native.config_json)["in_chans"]
        with self._lock:
            self._plan((1, chans, side, side), "features")
        # The GPU holds the weights now: the host copy goes (the native model only plans).
        native.release_weights()

    def _setup(self, dtype: str, graphs: bool, params: list) -> None:
        """Everything but the plans' source: ``params`` is [(array, "act" | "f32")] by id."""
        if dtype not in DTYPES:
            raise VMambaError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.cp = cp = _import_cupy()
        self.dtype = dtype
        self.graphs = graphs
        self.graph_error: str | None = None
        self._t = DTYPES[dtype]
        self._store = cp.float32 if dtype == "float32" else (cp.float16 if dtype == "float16" else cp.uint16)
        self._params = [self._upload(arr, kind) for arr, kind in params]
        self._module = None
        self._scans: set = set()
        self._kernels: dict = {}
        self._plans: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._stream = cp.cuda.Stream(non_blocking=True)
        self._alpha = np.ones(1, np.float32)
        self._beta = np.zeros(1, np.float32)
        self._blas = _Cublas(cp, self._stream)

    @property
    def uses_graphs(self) -> bool:
        """True while passes are captured into / replayed from CUDA graphs."""
        return self.graphs and self._blas.capturable

    # ---- parameters ----------------------------------------------------------------------------
    def _upload(self, arr: np.ndarray, kind: str):
        """A parameter on the GPU: GEMM weights ("act") in the activation dtype, the rest fp32."""
        cp = self.cp
        a = np.ascontiguousarray(arr, np.float32).reshape(-1)
        if kind != "act" or self.dtype == "float32":
            return cp.asarray(a)
        if self.dtype == "bfloat16":  # round to nearest even, stored as raw bits
            bits = a.view(np.uint32)
            return cp.asarray(((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16))
        return cp.asarray(a.astype(np.float16))

    # ---- kernels -------------------------------------------------------------------------------
    def _compile(self, scans: set) -> None:
        """(Re)build the kernel module when a plan needs scan instantiations it lacks."""
        if self._module is not None and scans <= self._scans:
            return
        self._scans |= scans
        self._module = self.cp.RawModule(code=kernel_source(), options=("--std=c++17",),
                                         name_expressions=kernel_names(self._t, self._scans))
        self._kernels = {}

    def _k(self, name: str):
        if name not in self._kernels:
            self._kernels[name] = self._module.get_function(name)
        return self._kernels[name]

    @staticmethod
    def _args(args) -> tuple:
        return tuple(_NULL if a is None else a for a in args)  # None: a null pointer

    def _per_element(self, name: str, n: int, *args):
        """One thread per element, of a kernel named with its template arguments."""
        kernel, grid = self._k(name), ((n + 255) // 256,)
        args = self._args(args)
        return lambda: kernel(grid, (256,), args)

    def _elementwise(self, name: str, n: int, *args):
        """A launch of one thread per element."""
        return self._per_element(f"{name}<{self._t}>", n, *args)

    def _rowwise(self, name: str, rows: int, *args):
        """A launch of one warp per row, eight rows per block."""
        kernel, grid = self._k(f"{name}<{self._t}>"), ((rows + 7) // 8,)
        args = self._args(args)
        return lambda: kernel(grid, (256,), args)

    def _gemm(self, x, rows: int, inp: int, out: int, w, dst):
        """dst (rows, out) = x (rows, inp) @ w^T, w (out, inp). In cuBLAS's column-major
        terms that is dst^T (out x rows) = W (out x inp) . x^T, with W read transposed."""
        t, blas = _CUDA_R[self.dtype], self._blas
        args = (_OP_T, _OP_N, out, rows, inp, self._alpha.ctypes.data, w.data.ptr, t, inp, x.data.ptr, t, inp,
                self._beta.ctypes.data, dst.data.ptr, t, out)
        return lambda: blas.gemm_ex(*args)

    @staticmethod
    def _chunks(b: int, k: int, di: int, length: int) -> int:
        chains = b * k * di
        want = max(1, math.ceil(_SCAN_TARGET_THREADS / chains))
        return max(1, min(want, length // _MIN_CHUNK))

    # ---- plans ---------------------------------------------------------------------------------
    def _plan(self, shape: tuple, outputs: str) -> _Plan:
        key = (shape, outputs)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        if len(self._plans) >= MAX_PLANS:
            # Work may still be queued on the evicted buffers: let it finish first.
            self._stream.synchronize()
            self._plans.popitem(last=False)
        plan = json.loads(self._native.plan_json(shape, outputs))
        cp = self.cp
        self._compile(_scans(plan["ops"]))
        arenas = {"act": cp.empty(max(plan["arena"][0], 1), self._store),
                  "f32": cp.empty(max(plan["arena"][1], 1), cp.float32)}
        bufs, outs = [], []
        for b in plan["buffers"]:
            if b["role"] == "input":
                bufs.append(cp.empty(b["len"], cp.float32))
            elif b["role"] == "output":
                outs.append(cp.empty(b["shape"], cp.float32))
                bufs.append(outs[-1].reshape(-1))
            else:
                bufs.append(arenas[b["dtype"]][b["offset"]:b["offset"] + b["len"]])
        entry = _Plan(plan, self._steps(plan, bufs), bufs[0].reshape(shape), outs)
        self._plans[key] = entry
        return entry

    def _steps(self, plan: dict, bufs: list) -> list:
        """The launches for every op, each kind by its entry of ``OPS`` (the plan
        comes fused: no entry looks at another op). Scratch the launches and the
        scan need is allocated here."""
        cp = self.cp
        ops, ctx = plan["ops"], _Build(plan, bufs)
        # Scratch: a GEMM result before its residual add or fp32 output, a pooled row before
        # its fp32 output, a gated norm of activations before its gate; the scan's carries.
        staged = ([op["rows"] * op["out"] for op in ops if op["op"] == "linear" and (op["accumulate"] or
                   ctx.roles[op["dst"]] == "output")] + [op["b"] * op["c"] for op in ops if op["op"] == "mean_pool"]
                  + [op["rows"] * op["c"] for op in ops if op["op"] == "layer_norm" and op["gate"] is not None
                     and not ctx.f32[op["src"]]])
        carries = [op["b"] * len(op["paths"]) * op["di"] * op["n"]
                   * self._chunks(op["b"], len(op["paths"]), op["di"], op["h"] * op["w"])
                   for op in ops if op["op"] == "cross_scan"]
        ctx.tmp = cp.empty(max(staged, default=1), self._store)
        ctx.carry_a = cp.empty(max(carries, default=1), cp.float32)
        ctx.carry_h = cp.empty(max(carries, default=1), cp.float32)
        for op in ops:
            launch = self.OPS.get(op["op"])
            if launch is None:
                raise _unsupported(f"op {op['op']!r}")
            launch(self, ctx, op)
        return ctx.steps

    def _src_type(self, ctx: "_Build", buf: int) -> str:
        return "float" if ctx.f32[buf] else self._t

    # ---- one method per op kind: (context, op) -> its launches appended to ctx.steps ------------
    def _linear(self, ctx, op) -> None:
        P, bufs, steps, i32, i64 = self._params, ctx.bufs, ctx.steps, np.int32, np.int64
        rows, out, dst = op["rows"], op["out"], bufs[op["dst"]]
        bias = P[op["bias"]] if op["bias"] is not None else None
        act = ACT_CODES[op["act"]]  # the activation the plan's fusion gave it
        if act and (op["accumulate"] or ctx.roles[op["dst"]] == "output"):
            raise _unsupported("an activation on a residual or output GEMM")
        normed = op["norm_dst"] is not None  # the plan's fusion of the norm after a residual step
        if normed and not op["accumulate"]:
            raise _unsupported("a norm after a linear op that does not accumulate")
        if op["accumulate"]:
            # dst += x W^T + b; with the fused norm, norm_dst = LN(dst) in the same kernel.
            steps.append(self._gemm(bufs[op["src"]], rows, op["inp"], out, P[op["weight"]], ctx.tmp))
            steps.append(self._rowwise(
                "residual_layernorm", rows, dst, ctx.tmp, bias, bufs[op["norm_dst"]] if normed else None,
                P[op["norm_weight"]] if normed else None, P[op["norm_bias"]] if normed else None, i64(rows),
                i32(out)))
            return
        if ctx.roles[op["dst"]] == "output":
            steps.append(self._gemm(bufs[op["src"]], rows, op["inp"], out, P[op["weight"]], ctx.tmp))
            steps.append(self._elementwise("bias_to_f32", rows * out, ctx.tmp, bias, dst, i64(rows), i32(out)))
            return
        steps.append(self._gemm(bufs[op["src"]], rows, op["inp"], out, P[op["weight"]], dst))
        if bias is not None or act:  # the bias and the activation in one pass
            steps.append(self._elementwise("bias_act", rows * out, dst, bias, i64(rows), i32(out), i32(act)))

    def _act(self, ctx, op) -> None:
        ctx.steps.append(self._elementwise("bias_act", op["len"], ctx.bufs[op["buf"]], None, np.int64(op["len"]),
                                           np.int32(1), np.int32(ACT_CODES[op["act"]])))

    def _add_param(self, ctx, op) -> None:
        ctx.steps.append(self._elementwise("bias_act", op["b"] * op["len"], ctx.bufs[op["buf"]],
                                           self._params[op["param"]], np.int64(op["b"]), np.int32(op["len"]),
                                           np.int32(0)))

    def _layer_norm(self, ctx, op) -> None:
        P, bufs, i32, i64 = self._params, ctx.bufs, np.int32, np.int64
        rows, c = op["rows"], op["c"]
        # No weights (the cascade scan's plain norms): null pointers, weight 1 and bias 0.
        w = P[op["weight"]] if op["weight"] is not None else None
        b = P[op["bias"]] if op["bias"] is not None else None
        gate = None if op["gate"] is None else bufs[op["gate"]][op["gate_offset"]:]
        if gate is not None and ctx.f32[op["gate"]]:
            raise _unsupported("a gate read from fp32 values")
        if ctx.f32[op["src"]]:  # the fp32 scan output: LayerNorm with the gate the plan fused into it
            ctx.steps.append(self._rowwise("layernorm_gate", rows, bufs[op["src"]], bufs[op["dst"]], gate,
                                           i32(op["gate_stride"]), w, b, i64(rows), i32(c),
                                           i32(ACT_CODES[op["gate_act"]])))
            return
        normed = bufs[op["dst"]] if gate is None else ctx.tmp
        ctx.steps.append(self._rowwise("layernorm", rows, bufs[op["src"]], i32(c), normed, w, b, i64(rows), i32(c)))
        if gate is not None:  # a gated norm of activations: the gate as a second launch
            self._pointwise(ctx, {"src_stride": c, "src_offset": 0, "dst": op["dst"], "rows": rows, "c": c,
                                  "act": "none", "gate": op["gate"], "gate_stride": op["gate_stride"],
                                  "gate_offset": op["gate_offset"], "gate_act": op["gate_act"]}, src=normed)

    def _pointwise(self, ctx, op, src=None) -> None:
        """``src``: read from this array (of activations) instead of the op's buffer."""
        bufs, i32, i64 = ctx.bufs, np.int32, np.int64
        if op["gate"] is not None and ctx.f32[op["gate"]]:
            raise _unsupported("a gate read from fp32 values")
        src_type = self._t if src is not None else self._src_type(ctx, op["src"])
        ctx.steps.append(self._per_element(
            f"pointwise<{self._t}, {src_type}>", op["rows"] * op["c"], bufs[op["src"]] if src is None else src,
            i64(op["src_stride"]), i64(op["src_offset"]),
            bufs[op["dst"]], i64(op["rows"]), i32(op["c"]), i32(ACT_CODES[op["act"]]),
            bufs[op["gate"]] if op["gate"] is not None else None, i64(op["gate_stride"]), i64(op["gate_offset"]),
            i32(ACT_CODES[op["gate_act"]])))

    def _layout(kernel: str):
        """An op that moves (B, C, H, W) values to another layout."""
        def launch(self, ctx, op) -> None:
            i32 = np.int32
            ctx.steps.append(self._elementwise(kernel, op["b"] * op["c"] * op["h"] * op["w"], ctx.bufs[op["src"]],
                                               ctx.bufs[op["dst"]], i32(op["b"]), i32(op["c"]), i32(op["h"]),
                                               i32(op["w"])))
        return launch

    def _im2col(self, ctx, op) -> None:
        i32 = np.int32
        n = op["b"] * op["ho"] * op["wo"] * op["k"] * op["k"] * op["c"]
        ctx.steps.append(self._elementwise("im2col", n, ctx.bufs[op["src"]], ctx.bufs[op["dst"]], i32(op["b"]),
                                           i32(op["h"]), i32(op["w"]), i32(op["c"]), i32(op["k"]),
                                           i32(op["stride"]), i32(op["pad"]), i32(op["ho"]), i32(op["wo"])))

    def _patch_merge(self, ctx, op) -> None:
        i32 = np.int32
        n = op["b"] * ((op["h"] + 1) // 2) * ((op["w"] + 1) // 2) * 4 * op["c"]
        ctx.steps.append(self._elementwise("patch_merge", n, ctx.bufs[op["src"]], ctx.bufs[op["dst"]],
                                           i32(op["b"]), i32(op["h"]), i32(op["w"]), i32(op["c"])))

    def _mean_pool(self, ctx, op) -> None:
        i32, i64 = np.int32, np.int64
        b, c = op["b"], op["c"]
        to_output = ctx.roles[op["dst"]] == "output"  # the kernel writes the activation dtype
        pooled = ctx.tmp if to_output else ctx.bufs[op["dst"]]
        ctx.steps.append(self._elementwise("mean_pool", b * c, ctx.bufs[op["src"]], pooled, i32(b), i32(op["hw"]),
                                           i32(c)))
        if to_output:
            ctx.steps.append(self._elementwise("bias_to_f32", b * c, pooled, None, ctx.bufs[op["dst"]], i64(b),
                                               i32(c)))

    def _dw_conv_act(self, ctx, op) -> None:
        P, i32 = self._params, np.int32
        n = op["b"] * op["h"] * op["w"] * op["c"]
        bias = P[op["bias"]] if op["bias"] is not None else None
        name = f"dwconv_act<{self._t}, {self._src_type(ctx, op['src'])}>"
        ctx.steps.append(self._per_element(name, n, ctx.bufs[op["src"]], i32(op["src_stride"]), ctx.bufs[op["dst"]],
                                           P[op["weight"]], bias, i32(op["b"]), i32(op["h"]), i32(op["w"]),
                                           i32(op["c"]), i32(op["k"]), i32(ACT_CODES[op["act"]])))

    def _spatial_softmax(self, ctx, op) -> None:
        i32 = np.int32
        if not ctx.f32[op["src"]]:
            raise _unsupported("a softmax over activations that are not fp32")
        ctx.steps.append(self._elementwise("spatial_softmax", op["b"] * op["c"], ctx.bufs[op["src"]],
                                           ctx.bufs[op["dst"]], i32(op["b"]), i32(op["hw"]), i32(op["c"])))

    def _cross_scan(self, ctx, op) -> None:
        ctx.steps.extend(self._scan(op, ctx.bufs, ctx.carry_a, ctx.carry_h))

    def _transpose_hw(self, ctx, op) -> None:
        i32 = np.int32
        n = op["b"] * op["h"] * op["w"] * op["c"]
        ctx.steps.append(self._per_element(f"transpose_hw<{self._src_type(ctx, op['src'])}>", n, ctx.bufs[op["src"]],
                                           ctx.bufs[op["dst"]], i32(op["b"]), i32(op["h"]), i32(op["w"]),
                                           i32(op["c"])))

    # Every op kind of the plan's schema (_native.OP_KINDS) and what launches it.
    OPS = {
        "to_channels_last": _layout("nchw_to_nhwc"), "to_channels_first": _layout("nhwc_to_nchw"),
        "im2col": _im2col, "linear": _linear, "act": _act, "add_param": _add_param, "layer_norm": _layer_norm,
        "pointwise": _pointwise, "dw_conv_act": _dw_conv_act, "cross_scan": _cross_scan,
        "spatial_softmax": _spatial_softmax, "transpose_hw": _transpose_hw, "patch_merge": _patch_merge,
        "mean_pool": _mean_pool,
    }
    del _layout

    def _scan(self, op: dict, bufs: list, carry_a, carry_h) -> list:
        """The chunked scan of K directions (cuda/scan.cu): chunk states, carries, output."""
        i32, i64 = np.int32, np.int64
        b, h, w, di, n, r = op["b"], op["h"], op["w"], op["di"], op["n"], op["r"]
        P, y, k = self._params, bufs[op["dst"]], len(op["paths"])
        if not 1 <= k <= 8 or not set(op["paths"]) <= SCAN_PATHS.keys():
            raise _unsupported(f"a scan along {op['paths']}")
        paths = sum(SCAN_PATHS[p] << (4 * i) for i, p in enumerate(op["paths"]))
        chunks = self._chunks(b, k, di, h * w)
        chunk = -(-(h * w) // chunks)
        block = min(128, 32 * -(-di // 32))
        grid = ((di + block - 1) // block, k * chunks, b)
        args = self._args((bufs[op["u"]], bufs[op["xdbl"]], P[op["dt_weight"]], P[op["dt_bias"]], P[op["a"]],
                           P[op["d"]], y, carry_a, carry_h, i32(b), i32(h), i32(w), i32(di), i32(chunks), i32(chunk),
                           i32(paths), i32(k)))
        name = f"scan_chunks<{n}, {r}, {self._t}, "
        steps = [lambda: y.fill(0)]  # the scan adds the directions into y
        if chunks > 1:
            first, carry = self._k(name + "false>"), self._k("scan_carry")
            chains = b * k * di
            steps.append(lambda: first(grid, (block,), args))
            steps.append(lambda: carry(((chains * n + 255) // 256,), (256,),
                                       (carry_a, carry_h, i64(chains), i32(chunks), i32(n))))
        last = self._k(name + "true>")
        steps.append(lambda: last(grid, (block,), args))
        return steps

    # ---- running -------------------------------------------------------------------------------
    def _batch(self, x):
        """(input on the GPU or host, is it CuPy, its shape)."""
        cp = self.cp
        if isinstance(x, cp.ndarray):
            if x.ndim != 4 or x.dtype.kind != "f":
                raise VMambaError(f"input must be a floating (B, C, H, W) array; got {x.dtype} {x.shape}")
            return cp.ascontiguousarray(x, dtype=cp.float32), True
        return np.ascontiguousarray(x, dtype=np.float32), False

    def run(self, x, outputs: str) -> list:
        """The plan's outputs for input ``x`` (numpy float32 or CuPy), of the input's kind."""
        cp = self.cp
        x, is_cupy = self._batch(x)
        shape = tuple(int(d) for d in x.shape)
        with self._lock:
            plan = self._plan(shape, outputs)
            with self._stream:
                if is_cupy:
                    plan.x_in[...] = x
                else:
                    plan.x_in.set(x, stream=self._stream)
                self._launch(plan)
                outs = [o.copy() for o in plan.outputs]
                done = self._stream.record()
        # The copies are ordered before any later pass on this stream: safe to wait unlocked.
        done.synchronize()
        return outs if is_cupy else [cp.asnumpy(o) for o in outs]

    def _launch(self, plan: _Plan) -> None:
        """Replay the plan's graph, capture it (second call), or launch eagerly."""
        if plan.graph is not None:
            plan.graph.launch(self._stream)
            return
        if self.uses_graphs and plan.warm and plan.capture_failures < MAX_CAPTURE_FAILURES:
            try:
                self._stream.begin_capture()
                try:
                    for step in plan.steps:
                        step()
                finally:
                    graph = self._stream.end_capture()
                graph.launch(self._stream)
                plan.graph = graph
                return
            except Exception as e:  # this capture failed: run eagerly now, try again next call
                plan.capture_failures += 1
                self.graph_error = f"{type(e).__name__}: {e}"
        for step in plan.steps:
            step()
        plan.warm = True

    def forward(self, x):
        return self.run(x, "logits")[0]

    def embed(self, x):
        return self.run(x, "embeddings")[0]

    def features(self, x) -> list:
        return self.run(x, "features")


def run_op(op: dict, buffers: list, params: list, f32: tuple = ()) -> list:
    """Run one plan op on the GPU, float32: the twin of ``_native.run_op`` (the
    CPU engine) for op-level tests. ``buffers`` and ``params`` are numpy arrays
    by id, ``f32`` the ids of buffers a plan would keep in fp32 (the scan's
    output: some ops read those with other kernels); returns the buffers after
    the op."""
    engine = CudaEngine.__new__(CudaEngine)
    engine._setup("float32", False, [(p, "f32") for p in params])
    cp = engine.cp
    bufs = [cp.asarray(np.ascontiguousarray(b, np.float32).reshape(-1)) for b in buffers]
    meta = [{"role": "work", "dtype": "f32" if i in f32 else "act"} for i in range(len(bufs))]
    engine._compile(_scans([op]))
    steps = engine._steps({"ops": [op], "buffers": meta}, bufs)
    with engine._stream:
        for step in steps:
            step()
    engine._stream.synchronize()
    return [cp.asnumpy(b) for b in bufs]
