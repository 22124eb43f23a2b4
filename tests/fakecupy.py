"""A stand-in for CuPy and cuBLAS that runs the CUDA engine's launches with
numpy on the CPU, float32 only, so that the engine's own logic (plans, buffer
offsets, fusions, argument order, graph capture, locking, the plan cache) is
tested on machines without a GPU. Each kernel below follows the argument list
of its namesake in cuda/*.cu; the scan calls the CPU engine's op.

It checks the engine, not the CUDA kernels: those are tested on a GPU
(tests/test_cuda.py).
"""

from __future__ import annotations

import ctypes
import json
import threading
import types

import numpy as np

from vmamba_rt import _native


class ndarray(np.ndarray):
    """numpy memory that also answers CuPy's ``.data.ptr`` and ``.set``."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def set(self, x, stream=None):
        self[...] = x

    @property
    def __cuda_array_interface__(self):  # what marks a device array for vmamba_rt.Model
        return {}

    def fill(self, value):  # a kernel launch on the GPU: captured like one
        _launch(lambda: np.ndarray.fill(self, value))


def empty(shape, dtype=np.float32):
    if np.dtype(dtype) != np.float32:
        raise NotImplementedError("the fake GPU runs float32 only")
    return np.full(shape, np.nan, np.float32).view(ndarray)  # stale memory is never zero


def asarray(a):
    return np.array(a, np.float32).view(ndarray)


def asnumpy(a):
    return np.array(a)


def ascontiguousarray(a, dtype=np.float32):
    return np.ascontiguousarray(a, dtype).view(ndarray)


float32, float16, uint16 = np.float32, np.float16, np.uint16

# What a capture records instead of running: a list per capturing stream.
_capturing = threading.local()


def _launch(fn):
    """Run ``fn`` now, or record it while this thread captures a graph."""
    rec = getattr(_capturing, "steps", None)
    if rec is not None:
        rec.append(fn)
    else:
        fn()


class _Event:
    def synchronize(self):
        pass


class _Graph:
    def __init__(self, steps):
        self.steps = steps

    def launch(self, stream=None):
        for fn in self.steps:
            fn()


class Stream:
    def __init__(self, non_blocking=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass

    def record(self):
        return _Event()

    def begin_capture(self, mode=None):
        _capturing.steps = []

    def is_capturing(self):
        return getattr(_capturing, "steps", None) is not None

    def end_capture(self):
        steps, _capturing.steps = _capturing.steps, None
        return _Graph(steps)


def _v(a):
    """The array behind a kernel argument (None for a null pointer)."""
    return None if isinstance(a, np.uint64) and a == 0 else a


def _ln(x, w, b):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    w, b = (1 if _v(w) is None else w), (0 if _v(b) is None else b)  # null: the plain norm
    return ((x - mean) / np.sqrt(var + 1e-5) * w + b).astype(np.float32)


def _silu(v):
    return v / (1 + np.exp(-v))


def _gelu(v):
    from math import erf

    return (0.5 * v * (1 + np.vectorize(erf)(v / np.sqrt(2)))).astype(np.float32)


def _act(v, code):
    """The activations by the kernels' codes (cuda/common.cuh)."""
    v = np.asarray(v, np.float32)
    return [lambda: v, lambda: _gelu(v), lambda: _silu(v), lambda: np.where(v < 0, 0, v).astype(np.float32),
            lambda: (1 / (1 + np.exp(-v))).astype(np.float32)][int(code)]()


def _nchw_to_nhwc(x, y, B, C, H, W):
    y[: B * C * H * W] = x.reshape(B, C, H, W).transpose(0, 2, 3, 1).ravel()


def _nhwc_to_nchw(x, y, B, C, H, W):
    y.reshape(-1)[: B * C * H * W] = x[: B * H * W * C].reshape(B, H, W, C).transpose(0, 3, 1, 2).ravel()


def _im2col(x, cols, B, H, W, C, k, stride, pad, Ho, Wo):
    xp = np.pad(x[: B * H * W * C].reshape(B, H, W, C), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty((B, Ho, Wo, k, k, C), np.float32)
    for ky in range(k):
        for kx in range(k):
            out[:, :, :, ky, kx] = xp[:, ky : ky + stride * Ho : stride, kx : kx + stride * Wo : stride][:, :Ho, :Wo]
    cols[: out.size] = out.ravel()


def _patch_merge(x, y, B, H, W, C):
    Ho, Wo = (H + 1) // 2, (W + 1) // 2
    xp = np.zeros((B, 2 * Ho, 2 * Wo, C), np.float32)
    xp[:, :H, :W] = x[: B * H * W * C].reshape(B, H, W, C)
    groups = [xp[:, dy::2, dx::2] for dy, dx in [(0, 0), (1, 0), (0, 1), (1, 1)]]
    y[: B * Ho * Wo * 4 * C] = np.concatenate(groups, -1).ravel()


def _bias_act(x, bias, rows, n, act):
    v = x[: rows * n].reshape(rows, n) + (0 if _v(bias) is None else bias)
    x[: rows * n] = _act(v, act).ravel()


def _bias_to_f32(x, bias, out, rows, n):
    out.reshape(-1)[: rows * n] = (x[: rows * n].reshape(rows, n) + (0 if _v(bias) is None else bias)).ravel()


def _mean_pool(x, y, B, HW, C):
    y[: B * C] = x[: B * HW * C].reshape(B, HW, C).mean(1).ravel()


def _rows(x, stride, rows, C):
    return np.lib.stride_tricks.as_strided(x, (rows, C), (4 * stride, 4))


def _layernorm(x, x_stride, out, w, b, rows, C):
    out[: rows * C] = _ln(_rows(x, x_stride, rows, C), w, b).ravel()


def _residual_layernorm(x, y, bias, out, w, b, rows, C):
    x[: rows * C] = (x[: rows * C].reshape(rows, C) + y[: rows * C].reshape(rows, C)
                     + (0 if _v(bias) is None else bias)).ravel()
    if _v(out) is not None:
        out[: rows * C] = _ln(x[: rows * C].reshape(rows, C), w, b).ravel()


def _layernorm_gate(y, out, z, z_stride, w, b, rows, C, gate_act):
    v = _ln(y[: rows * C].reshape(rows, C), w, b)
    if _v(z) is not None:
        v = v * _act(_rows(z, z_stride, rows, C), gate_act)
    out[: rows * C] = v.ravel()


def _pointwise(x, xs, xo, y, rows, C, act, z, zs, zo, gate_act):
    v = _act(_rows(x[xo:], xs, rows, C), act)
    if _v(z) is not None:
        v = v * _act(_rows(z[zo:], zs, rows, C), gate_act)
    y[: rows * C] = v.ravel()


def _transpose_hw(x, y, B, H, W, C):
    y[: B * H * W * C] = x[: B * H * W * C].reshape(B, H, W, C).transpose(0, 2, 1, 3).ravel()


def _spatial_softmax(x, y, B, HW, C):
    v = x[: B * HW * C].reshape(B, HW, C).astype(np.float64)
    e = np.exp(v - v.max(1, keepdims=True))
    y[: B * HW * C] = (e / e.sum(1, keepdims=True)).ravel()


def _dwconv_act(x, x_stride, u, w, bias, B, H, W, C, k, act):
    pad = k // 2
    img = np.pad(_rows(x, x_stride, B * H * W, C).reshape(B, H, W, C), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    s = np.zeros((B, H, W, C), np.float32) + (0 if _v(bias) is None else bias)
    for ky in range(k):
        for kx in range(k):
            s += img[:, ky : ky + H, kx : kx + W] * w[(ky * k + kx) * C : (ky * k + kx + 1) * C]
    u[: B * H * W * C] = _act(s, act).ravel()


def _scan(n, r, write):
    def kernel(u, xdbl, wdt, bias, A, D, y, carry_a, carry_h, B, H, W, Di, S, chunk, paths, K):
        if not write:
            return  # the chunk-state pass: the CPU engine's scan needs none
        from vmamba_rt.gpu import SCAN_PATHS

        names = {code: name for name, code in SCAN_PATHS.items()}
        rows = B * H * W
        op = {"op": "cross_scan", "u": 0, "xdbl": 1, "dst": 2, "b": int(B), "h": int(H), "w": int(W), "di": int(Di),
              "n": n, "r": r, "paths": [names[(int(paths) >> (4 * k)) & 15] for k in range(int(K))],
              "dt_weight": 0, "dt_bias": 1, "a": 2, "d": 3}
        bufs = [np.array(u[: rows * Di]), np.array(xdbl[: rows * int(K) * (r + 2 * n)]),
                np.zeros(rows * Di, np.float32)]
        params = [np.array(p, np.float32) for p in (wdt, bias, A, D)]
        y[: rows * Di] += _native.run_op(json.dumps(op), bufs, params)[2]

    return kernel


_KERNELS = {"nchw_to_nhwc": _nchw_to_nhwc, "nhwc_to_nchw": _nhwc_to_nchw, "im2col": _im2col,
            "patch_merge": _patch_merge, "bias_act": _bias_act, "bias_to_f32": _bias_to_f32, "mean_pool": _mean_pool,
            "layernorm": _layernorm, "residual_layernorm": _residual_layernorm, "layernorm_gate": _layernorm_gate,
            "pointwise": _pointwise, "spatial_softmax": _spatial_softmax, "dwconv_act": _dwconv_act,
            "transpose_hw": _transpose_hw,
            "scan_carry": lambda *args: None}


class RawModule:
    def __init__(self, code, options=(), name_expressions=()):
        self.names = set(name_expressions)

    def get_function(self, name):
        assert name in self.names, f"{name} was not compiled"
        base = name.split("<")[0]
        if base == "scan_chunks":
            n, r, _, write = name.split("<")[1].rstrip(">").split(", ")
            fn = _scan(int(n), int(r), write == "true")
        else:
            fn = _KERNELS[base]

        def launch(grid, block, args):
            _launch(lambda: fn(*args))

        return launch


class Blas:
    """Stands for gpu._Cublas: the same gemm_ex, on host pointers."""

    capturable = True

    def __init__(self, cp, stream):
        pass

    def gemm_ex(self, ta, tb, m, n, k, alpha, a, atype, lda, b, btype, ldb, beta, c, ctype, ldc):
        def at(ptr, count):
            return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (count,))

        # c^T (m x n) = a^T (m x k) . b (k x n), column-major: c (n, m) = b (n, k) @ a (m, k)^T row-major.
        def run():
            w, x = at(a, m * k).reshape(m, k), at(b, n * k).reshape(n, k)
            at(c, n * m)[:] = (x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32).ravel()

        _launch(run)


cuda = types.SimpleNamespace(Stream=Stream, runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
