"""The CUDA path: the whole forward pass on an NVIDIA GPU through CuPy.

GEMMs go to cuBLAS (``cublasGemmEx``, fp32 accumulation, no TF32); everything
else runs in the CUDA C++ kernels of ``cuda/*.cu``, compiled at run time with
NVRTC (``cupy.RawModule``, cached by CuPy). Activations are channel-last in the
chosen dtype (float32, float16 or bfloat16); LayerNorm statistics, the scan
state and every accumulation are fp32. All buffers for one input shape are
allocated once (a *plan*), which also lets the whole pass be captured into a
CUDA graph and replayed, so small batches are not bound by launch overhead.

CuPy is optional (``pip install vmamba-rt[cuda]``); without it, or without a
GPU, ``vmamba_rt.load(path, device="cuda")`` raises a clear error and the CPU
path is untouched.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ._native import VMambaError
from .model import Model, _as_batch

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
                                   "layernorm_gate", "dwconv_silu")]
    for n, r in sorted(scans):
        names += [f"scan_chunks<{n}, {r}, {t}, false>", f"scan_chunks<{n}, {r}, {t}, true>"]
    return names + ["scan_carry"]


@dataclass
class _Linear:
    w: object  # (out, in) in the activation dtype
    b: object | None  # (out,) fp32
    out: int
    inp: int


@dataclass
class _Norm:
    w: object
    b: object


@dataclass
class _Conv:
    lin: _Linear  # weight re-laid (Cout, k*k*Cin) in im2col order
    k: int
    stride: int
    pad: int

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return (h + 2 * self.pad - self.k) // self.stride + 1, (w + 2 * self.pad - self.k) // self.stride + 1


@dataclass
class _SS2D:
    in_proj: _Linear
    conv_w: object  # (k*k, Di) fp32
    conv_b: object | None
    k: int
    x_proj: _Linear  # (4*(R+2N), Di)
    dt_w: object  # (4, Di, R) fp32
    dt_b: object  # (4*Di) fp32
    A: object  # (4*Di, N) fp32
    D: object  # (4*Di) fp32
    out_norm: _Norm
    out_proj: _Linear
    gated: bool
    di: int
    n: int
    r: int


@dataclass
class _Block:
    norm: _Norm | None
    ss2d: _SS2D | None
    norm2: _Norm | None
    fc1: _Linear | None
    fc2: _Linear | None


@dataclass
class _Stage:
    blocks: list
    downsample: tuple | None  # ("merge", norm, linear) or ("conv", conv, norm)
    outnorm: _Norm | None
    dim: int


@dataclass
class _Plan:
    """Buffers for one input shape, allocated once and reused by every call, and
    the CUDA graphs captured over them (keyed by "logits" / "features")."""

    shape: tuple
    x_in: object
    bufs: dict = field(default_factory=dict)
    graphs: dict = field(default_factory=dict)
    warm: set = field(default_factory=set)


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


class CudaModel(Model):
    """A model on a CUDA GPU. Same API as :class:`vmamba_rt.Model`; inputs may be
    numpy or CuPy arrays and outputs are of the same kind (float32).

    ``dtype`` is the activation and weight type: "float32" (default), "float16"
    or "bfloat16". ``graphs=True`` captures each input shape's pass into a CUDA
    graph on its second call and replays it after.
    """

    def __init__(self, path, *, dtype: str = "float32", graphs: bool = True, num_threads: int | None = None):
        super().__init__(path, num_threads=num_threads)  # validates the file: every tensor by name and shape
        if dtype not in DTYPES:
            raise VMambaError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.cp = cp = _import_cupy()
        self.dtype = dtype
        self.graphs = graphs
        self._t = DTYPES[dtype]
        self._store = cp.float32 if dtype == "float32" else (cp.float16 if dtype == "float16" else cp.uint16)
        from safetensors.numpy import load_file

        sd = load_file(self.path)
        self._build(sd)
        scans = {(s.ss2d.n, s.ss2d.r) for st in self._stages for s in st.blocks if s.ss2d is not None}
        self._module = cp.RawModule(code=kernel_source(), options=("--std=c++17",),
                                    name_expressions=kernel_names(self._t, scans))
        self._kernels: dict = {}
        self._plans: dict = {}
        self._stream = cp.cuda.Stream(non_blocking=True)
        self._alpha = np.ones(1, np.float32)
        self._beta = np.zeros(1, np.float32)
        self.graph_error: str | None = None
        self._blas = _Cublas(cp, self._stream)

    # ---- weights -------------------------------------------------------------------------------
    def _act(self, arr: np.ndarray):
        """Upload a weight in the activation dtype."""
        cp = self.cp
        a = np.ascontiguousarray(arr, np.float32)
        if self.dtype == "bfloat16":  # round to nearest even, stored as raw bits
            bits = a.view(np.uint32)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            return cp.asarray(bits)
        return cp.asarray(a.astype(np.float16 if self.dtype == "float16" else np.float32))

    def _f32(self, arr):
        return self.cp.asarray(np.ascontiguousarray(arr, np.float32))

    @property
    def uses_graphs(self) -> bool:
        """True while passes are captured into / replayed from CUDA graphs."""
        return self.graphs and self._blas.capturable

    def _build(self, sd: dict) -> None:
        cfg = self.config

        def lin(p, bias=True):
            w = sd[f"{p}.weight"]
            return _Linear(self._act(w), self._f32(sd[f"{p}.bias"]) if bias else None, *w.shape)

        def norm(p):
            return _Norm(self._f32(sd[f"{p}.weight"]), self._f32(sd[f"{p}.bias"]))

        def conv(p, stride, pad):
            w = sd[f"{p}.weight"]
            cout, cin, k, _ = w.shape
            cols = w.transpose(0, 2, 3, 1).reshape(cout, k * k * cin)  # (Cout, ky, kx, Cin)
            return _Conv(_Linear(self._act(cols), self._f32(sd[f"{p}.bias"]), cout, k * k * cin), k, stride, pad)

        if cfg["patchembed_version"] == "v1":
            self._stem = [("conv", conv("patch_embed.0", 4, 0)), ("norm", norm("patch_embed.2"), False)]
        else:
            self._stem = [("conv", conv("patch_embed.0", 2, 1)), ("norm", norm("patch_embed.2"), True),
                          ("conv", conv("patch_embed.5", 2, 1)), ("norm", norm("patch_embed.7"), False)]
        self._stages = []
        depths = cfg["depths"]
        for i, depth in enumerate(depths):
            c = cfg["dims"] * 2**i
            blocks = []
            for j in range(depth):
                p = f"layers.{i}.blocks.{j}"
                ss2d = self._load_ss2d(sd, f"{p}.op", norm) if f"{p}.op.A_logs" in sd else None
                has_mlp = f"{p}.mlp.fc1.weight" in sd
                blocks.append(_Block(norm(f"{p}.norm") if ss2d else None, ss2d,
                                     norm(f"{p}.norm2") if has_mlp else None,
                                     lin(f"{p}.mlp.fc1") if has_mlp else None, lin(f"{p}.mlp.fc2") if has_mlp else None))
            ds = None
            if i + 1 < len(depths):
                p = f"layers.{i}.downsample"
                if cfg["downsample_version"] == "v1":
                    ds = ("merge", norm(f"{p}.norm"), lin(f"{p}.reduction", bias=False))
                else:
                    k, pad = (2, 0) if cfg["downsample_version"] == "v2" else (3, 1)
                    ds = ("conv", conv(f"{p}.1", 2, pad), norm(f"{p}.3"))
            out_idx = cfg.get("out_indices")
            on = norm(f"outnorm{i}") if out_idx is not None and i in out_idx else None
            self._stages.append(_Stage(blocks, ds, on, c))
        self._head = None if self.is_backbone else (norm("classifier.norm"), lin("classifier.head"))

    def _load_ss2d(self, sd, p, norm) -> _SS2D:
        a_logs = sd[f"{p}.A_logs"]
        di, n = a_logs.shape[0] // 4, a_logs.shape[1]
        dt_w = sd[f"{p}.dt_projs_weight"]
        r = dt_w.shape[2]
        conv_w = sd[f"{p}.conv2d.weight"]
        k = conv_w.shape[-1]
        in_w = sd[f"{p}.in_proj.weight"]
        x_w = sd[f"{p}.x_proj_weight"].reshape(4 * (r + 2 * n), di)
        return _SS2D(
            in_proj=_Linear(self._act(in_w), None, *in_w.shape),
            conv_w=self._f32(conv_w.reshape(di, k * k).T),
            conv_b=self._f32(sd[f"{p}.conv2d.bias"]) if f"{p}.conv2d.bias" in sd else None,
            k=k,
            x_proj=_Linear(self._act(x_w), None, *x_w.shape),
            dt_w=self._f32(dt_w), dt_b=self._f32(sd[f"{p}.dt_projs_bias"].reshape(-1)),
            A=self._f32(-np.exp(a_logs.astype(np.float32))), D=self._f32(sd[f"{p}.Ds"]),
            out_norm=norm(f"{p}.out_norm"),
            out_proj=_Linear(self._act(sd[f"{p}.out_proj.weight"]), None, *sd[f"{p}.out_proj.weight"].shape),
            gated=in_w.shape[0] == 2 * di, di=di, n=n, r=r)

    # ---- launching -----------------------------------------------------------------------------
    def _k(self, name: str):
        if name not in self._kernels:
            self._kernels[name] = self._module.get_function(name)
        return self._kernels[name]

    @staticmethod
    def _args(args) -> tuple:
        return tuple(_NULL if a is None else a for a in args)  # None: a null pointer

    def _launch(self, name: str, n: int, *args, block: int = 256):
        """One thread per element."""
        self._k(f"{name}<{self._t}>")(((n + block - 1) // block,), (block,), self._args(args))

    def _rows_launch(self, name: str, rows: int, *args):
        """One warp per row, eight rows per block."""
        self._k(f"{name}<{self._t}>")(((rows + 7) // 8,), (256,), self._args(args))

    def _gemm(self, x, rows: int, lin: _Linear, out):
        """out (rows, lin.out) = x (rows, lin.inp) @ lin.w^T. In cuBLAS's column-major
        terms that is out^T (out x rows) = W (out x inp) . x^T, with W read transposed."""
        t = _CUDA_R[self.dtype]
        self._blas.gemm_ex(_OP_T, _OP_N, lin.out, rows, lin.inp, self._alpha.ctypes.data, lin.w.data.ptr, t, lin.inp,
                           x.data.ptr, t, lin.inp, self._beta.ctypes.data, out.data.ptr, t, lin.out)

    # ---- the forward pass ----------------------------------------------------------------------
    def _plan(self, shape) -> _Plan:
        if shape in self._plans:
            return self._plans[shape]
        cp, (b, _, h, w) = self.cp, shape
        plan = _Plan(shape, cp.empty(shape, cp.float32))
        sizes: dict[str, int] = {}

        def need(name, n):
            sizes[name] = max(sizes.get(name, 0), n)

        # Walk the shapes once to size every scratch buffer.
        hh, ww = h, w
        need("x0", b * h * w * shape[1])
        for op in self._stem:
            if op[0] == "conv":
                cv = op[1]
                ho, wo = cv.out_hw(hh, ww)
                need("cols", b * ho * wo * cv.lin.inp)
                need("t", b * ho * wo * cv.lin.out)
                need("stem", b * ho * wo * cv.lin.out)
                hh, ww = ho, wo
        dims = []
        for st in self._stages:
            rows = b * hh * ww
            dims.append((hh, ww, st.dim))
            need("x", rows * st.dim)
            need("xn", rows * st.dim)
            need("t", rows * st.dim)
            for blk in st.blocks:
                if blk.ss2d:
                    s = blk.ss2d
                    chunks = self._chunks(b, s.di, hh * ww)
                    need("proj", rows * s.in_proj.out)
                    need("u", rows * s.di)
                    need("xdbl", rows * s.x_proj.out)
                    need("y32", rows * s.di)
                    need("yn", rows * s.di)
                    need("carry", b * 4 * s.di * chunks * s.n)
                if blk.fc1:
                    need("hid", rows * blk.fc1.out)
            if st.downsample:
                if st.downsample[0] == "merge":
                    need("cols", rows * 4 * st.dim)
                    need("t", rows * 4 * st.dim)
                    hh, ww = (hh + 1) // 2, (ww + 1) // 2
                else:
                    cv = st.downsample[1]
                    ho, wo = cv.out_hw(hh, ww)
                    need("cols", b * ho * wo * cv.lin.inp)
                    need("t", b * ho * wo * cv.lin.out)
                    hh, ww = ho, wo
        for name, n in sizes.items():
            dt = cp.float32 if name in ("y32",) else self._store
            plan.bufs[name] = cp.empty(n, dt)
        plan.bufs["carry_a"] = cp.empty(max(sizes.get("carry", 1), 1), cp.float32)
        plan.bufs["carry_h"] = cp.empty(max(sizes.get("carry", 1), 1), cp.float32)
        plan.bufs["features"] = [cp.empty((b, fc, fh, fw), cp.float32) for i, (fh, fw, fc) in enumerate(dims)
                                 if not self.is_backbone or i in self.config["out_indices"]]
        if self._head is not None:
            plan.bufs["pooled"] = cp.empty(b * self._stages[-1].dim, self._store)
            plan.bufs["logits_t"] = cp.empty(b * self.config["num_classes"], self._store)
            plan.bufs["logits"] = cp.empty((b, self.config["num_classes"]), cp.float32)
        self._plans[shape] = plan
        return plan

    @staticmethod
    def _chunks(b: int, di: int, length: int) -> int:
        chains = b * 4 * di
        want = max(1, math.ceil(_SCAN_TARGET_THREADS / chains))
        return max(1, min(want, length // _MIN_CHUNK))

    def _run(self, plan: _Plan, want_features: bool) -> None:
        """Enqueue the whole pass on the current stream (no allocation, no sync)."""
        i32, i64 = np.int32, np.int64
        B = plan.bufs
        b, _, h, w = plan.shape
        c = plan.shape[1]
        self._launch("nchw_to_nhwc", b * c * h * w, plan.x_in, B["x0"], i32(b), i32(c), i32(h), i32(w))
        cur, hh, ww = B["x0"], h, w
        for idx, op in enumerate(self._stem):
            if op[0] == "conv":
                hh, ww, c = self._conv(cur, b, hh, ww, c, op[1], B["cols"], B["t"])
                cur = B["t"]
            else:  # LayerNorm (then GELU between the v2 stem's convs)
                rows, dst = b * hh * ww, (B["x"] if idx == len(self._stem) - 1 else B["stem"])
                self._rows_launch("layernorm", rows, cur, i32(c), dst, op[1].w, op[1].b, i64(rows), i32(c))
                if op[2]:
                    self._launch("bias_act", rows * c, dst, None, i64(rows), i32(c), i32(1))
                cur = dst
        x, feat = B["x"], iter(B["features"])
        for si, st in enumerate(self._stages):
            rows = b * hh * ww
            self._blocks(st, B, b, hh, ww)
            if want_features and (not self.is_backbone or si in self.config["out_indices"]):
                src = x
                if st.outnorm is not None:
                    self._rows_launch("layernorm", rows, x, i32(st.dim), B["xn"], st.outnorm.w, st.outnorm.b,
                                      i64(rows), i32(st.dim))
                    src = B["xn"]
                self._launch("nhwc_to_nchw", rows * st.dim, src, next(feat), i32(b), i32(st.dim), i32(hh), i32(ww))
            if st.downsample:
                hh, ww = self._downsample(st, B, b, hh, ww)
        if self._head is not None and not want_features:
            nm, fc = self._head
            dim, rows = self._stages[-1].dim, b * hh * ww
            self._rows_launch("layernorm", rows, x, i32(dim), B["xn"], nm.w, nm.b, i64(rows), i32(dim))
            self._launch("mean_pool", b * dim, B["xn"], B["pooled"], i32(b), i32(hh * ww), i32(dim))
            self._gemm(B["pooled"], b, fc, B["logits_t"])
            self._launch("bias_to_f32", b * fc.out, B["logits_t"], fc.b, B["logits"], i64(b), i32(fc.out))

    def _conv(self, src, b, h, w, c, cv: _Conv, cols, out):
        """Dense conv as im2col + GEMM + bias into ``out``; returns the output size."""
        i32, i64 = np.int32, np.int64
        ho, wo = cv.out_hw(h, w)
        rows = b * ho * wo
        self._launch("im2col", rows * cv.lin.inp, src, cols, i32(b), i32(h), i32(w), i32(c), i32(cv.k),
                     i32(cv.stride), i32(cv.pad), i32(ho), i32(wo))
        self._gemm(cols, rows, cv.lin, out)
        self._launch("bias_act", rows * cv.lin.out, out, cv.lin.b, i64(rows), i32(cv.lin.out), i32(0))
        return ho, wo, cv.lin.out

    def _norm_sequence(self, st: _Stage) -> list:
        """The stage's pre-norms in order; each residual step fuses the next one."""
        seq = []
        for blk in st.blocks:
            if blk.ss2d:
                seq.append(blk.norm)
            if blk.fc1:
                seq.append(blk.norm2)
        return seq

    def _blocks(self, st: _Stage, B, b, h, w) -> None:
        i32, i64 = np.int32, np.int64
        rows, c = b * h * w, st.dim
        x, xn, t = B["x"], B["xn"], B["t"]
        norms = self._norm_sequence(st)
        if not norms:
            return
        self._rows_launch("layernorm", rows, x, i32(c), xn, norms[0].w, norms[0].b, i64(rows), i32(c))
        step = 0

        def residual(y, bias):
            # x += y (+ bias), and xn = the next pre-norm of x (none after the stage's last step)
            nonlocal step
            step += 1
            nxt = norms[step] if step < len(norms) else None
            self._rows_launch("residual_layernorm", rows, x, y, bias, xn if nxt else None,
                              nxt.w if nxt else None, nxt.b if nxt else None, i64(rows), i32(c))

        for blk in st.blocks:
            if blk.ss2d:
                self._ss2d(blk.ss2d, B, b, h, w)
                residual(t, None)
            if blk.fc1:
                self._gemm(xn, rows, blk.fc1, B["hid"])
                self._launch("bias_act", rows * blk.fc1.out, B["hid"], blk.fc1.b, i64(rows), i32(blk.fc1.out), i32(1))
                self._gemm(B["hid"], rows, blk.fc2, t)
                residual(t, blk.fc2.b)

    def _ss2d(self, s: _SS2D, B, b, h, w) -> None:
        """t = SS2D(xn) for one block."""
        i32, i64 = np.int32, np.int64
        rows, L = b * h * w, h * w
        proj = B["proj"]
        self._gemm(B["xn"], rows, s.in_proj, proj)
        self._launch("dwconv_silu", rows * s.di, proj, i32(s.in_proj.out), B["u"], s.conv_w, s.conv_b,
                     i32(b), i32(h), i32(w), i32(s.di), i32(s.k))
        self._gemm(B["u"], rows, s.x_proj, B["xdbl"])
        y32 = B["y32"][: rows * s.di]
        y32.fill(0)
        chunks = self._chunks(b, s.di, L)
        chunk = -(-L // chunks)
        block = min(128, 32 * -(-s.di // 32))
        grid = ((s.di + block - 1) // block, 4 * chunks, b)
        args = (B["u"], B["xdbl"], s.dt_w, s.dt_b, s.A, s.D, y32, B["carry_a"], B["carry_h"],
                i32(b), i32(h), i32(w), i32(s.di), i32(chunks), i32(chunk))
        name = f"scan_chunks<{s.n}, {s.r}, {self._t}, "
        args = self._args(args)
        if chunks > 1:
            self._k(name + "false>")(grid, (block,), args)
            chains = b * 4 * s.di
            self._k("scan_carry")(((chains * s.n + 255) // 256,), (256,),
                                  (B["carry_a"], B["carry_h"], i64(chains), i32(chunks), i32(s.n)))
        self._k(name + "true>")(grid, (block,), args)
        gate = proj[s.di:] if s.gated else None
        self._rows_launch("layernorm_gate", rows, y32, B["yn"], gate, i32(s.in_proj.out), s.out_norm.w,
                          s.out_norm.b, i64(rows), i32(s.di))
        self._gemm(B["yn"], rows, s.out_proj, B["t"])

    def _downsample(self, st: _Stage, B, b, h, w):
        i32, i64 = np.int32, np.int64
        x = B["x"]
        if st.downsample[0] == "merge":
            _, nm, lin = st.downsample
            ho, wo, rows = (h + 1) // 2, (w + 1) // 2, b * ((h + 1) // 2) * ((w + 1) // 2)
            self._launch("patch_merge", rows * 4 * st.dim, x, B["cols"], i32(b), i32(h), i32(w), i32(st.dim))
            self._rows_launch("layernorm", rows, B["cols"], i32(4 * st.dim), B["t"], nm.w, nm.b, i64(rows),
                              i32(4 * st.dim))
            self._gemm(B["t"], rows, lin, x)
            return ho, wo
        _, cv, nm = st.downsample
        ho, wo, c = self._conv(x, b, h, w, st.dim, cv, B["cols"], B["t"])
        rows = b * ho * wo
        self._rows_launch("layernorm", rows, B["t"], i32(c), x, nm.w, nm.b, i64(rows), i32(c))
        return ho, wo

    # ---- public API ----------------------------------------------------------------------------
    def _execute(self, x, want_features: bool):
        cp = self.cp
        is_cupy = isinstance(x, cp.ndarray)
        if is_cupy:
            if x.ndim != 4 or x.dtype.kind != "f":
                raise ValueError(f"input must be a floating (B, C, H, W) array; got {x.dtype} {x.shape}")
            xin = cp.ascontiguousarray(x, dtype=cp.float32)
        else:
            xin = _as_batch(x)
        b, c, h, w = xin.shape
        if b == 0:
            raise VMambaError("bad input: empty batch (B = 0)")
        if c != self.config["in_chans"]:
            raise VMambaError(f"bad input: expected {self.config['in_chans']} input channels, got {c}")
        if min(h, w) < self.min_size:
            raise VMambaError(f"bad input: input of {h}x{w} pixels is too small for this model "
                              f"(needs at least {self.min_size}x{self.min_size})")
        plan = self._plan((b, c, h, w))
        key = "features" if want_features else "logits"
        with self._stream:
            if is_cupy:
                plan.x_in[...] = xin
            else:
                plan.x_in.set(xin, stream=self._stream)
            if key in plan.graphs:
                plan.graphs[key].launch(self._stream)
            elif self.graphs and self._blas.capturable and key in plan.warm:
                # Second call with this shape: capture the pass once, replay it from now on.
                try:
                    self._stream.begin_capture()
                    try:
                        self._run(plan, want_features)
                    finally:
                        graph = self._stream.end_capture()
                    plan.graphs[key] = graph
                    graph.launch(self._stream)
                except Exception as e:  # capture unsupported here: stay eager, say why
                    self.graphs, self.graph_error = False, f"{type(e).__name__}: {e}"
                    self._run(plan, want_features)
            else:
                self._run(plan, want_features)
                plan.warm.add(key)
            outs = [o.copy() for o in (plan.bufs["features"] if want_features else [plan.bufs["logits"]])]
        self._stream.synchronize()
        return outs if is_cupy else [cp.asnumpy(o) for o in outs]

    def __call__(self, x):
        """Logits (B, num_classes), float32, on the GPU."""
        if self.is_backbone:
            return super().__call__(x)  # raises the backbone error
        return self._execute(x, False)[0]

    def features(self, x) -> list:
        """Feature maps (NCHW, float32), as :meth:`Model.features`."""
        return self._execute(x, True)
