"""Plan ops on random shapes, every kind and form, for the op-level tests of
each engine against the Rust CPU engine (tests/test_cuda.py, tests/test_onnx.py)."""

import json

import numpy as np

from vmamba_rt import _native

ACTS = ["none", "gelu", "silu", "relu", "sigmoid"]


def op_cases(rng, rowwise: bool = False):
    """(op, buffer lengths, parameter lengths, fp32 buffer ids) on random
    shapes, every op kind and form. ``rowwise``: strided reads stay inside their
    rows and fill their buffers, as in every plan the model emits (what the ONNX
    exporter supports); else a read may run on into the next row."""
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    b, h, w, c = r(1, 3), r(1, 9), r(1, 9), r(1, 40)
    rows = b * h * w
    stride, pad = r(1, 3), r(0, 1)
    k = r(1, min(4, min(h, w) + 2 * pad))  # the window fits
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    inp, out = r(1, 70), r(1, 70)
    di, n, rank = r(1, 70), int(rng.choice([1, 4, 16])), r(1, 6)
    wide = c + r(0, 5)
    off = r(0, wide - c) if rowwise else r(0, 5)
    tail = 0 if rowwise else off  # elements past the last row
    act = lambda: str(rng.choice(ACTS))  # noqa: E731
    cases = [
        ({"op": "to_channels_last", "src": 0, "dst": 1, "b": b, "c": c, "h": h, "w": w}, [rows * c] * 2, [], ()),
        ({"op": "to_channels_first", "src": 0, "dst": 1, "b": b, "h": h, "w": w, "c": c}, [rows * c] * 2, [], ()),
        ({"op": "act", "buf": 0, "len": rows * c, "act": act()}, [rows * c], [], ()),
        ({"op": "add_param", "buf": 0, "b": b, "len": h * w * c, "param": 0}, [rows * c], [h * w * c], ()),
        ({"op": "patch_merge", "src": 0, "dst": 1, "b": b, "h": h, "w": w, "c": c},
         [rows * c, b * ((h + 1) // 2) * ((w + 1) // 2) * 4 * c], [], ()),
        ({"op": "mean_pool", "src": 0, "dst": 1, "b": b, "hw": h * w, "c": c}, [rows * c, b * c], [], ()),
        ({"op": "im2col", "src": 0, "dst": 1, "b": b, "h": h, "w": w, "c": c, "k": k, "stride": stride, "pad": pad,
          "ho": ho, "wo": wo}, [rows * c, b * ho * wo * k * k * c], [], ()),
        ({"op": "spatial_softmax", "src": 0, "dst": 1, "b": b, "hw": h * w, "c": c}, [rows * c] * 2, [], (0,)),
    ]
    for f32 in [(), (0,)]:  # from activations, and from the fp32 scan output
        cases += [
            ({"op": "layer_norm", "src": 0, "dst": 1, "rows": rows, "c": c, "weight": 0, "bias": 1, "gate": None,
              "gate_stride": 0, "gate_offset": 0, "gate_act": "none"}, [rows * c] * 2, [c, c], f32),
            ({"op": "pointwise", "src": 0, "src_stride": wide, "src_offset": off, "dst": 1, "rows": rows, "c": c,
              "act": act(), "gate": None, "gate_stride": 0, "gate_offset": 0, "gate_act": "none"},
             [rows * wide + tail, rows * c], [], f32),
            ({"op": "pointwise", "src": 0, "src_stride": c, "src_offset": 0, "dst": 1, "rows": rows, "c": c,
              "act": "none", "gate": 2, "gate_stride": 2 * c, "gate_offset": c, "gate_act": act()},
             [rows * c, rows * c, rows * 2 * c], [], f32),
            ({"op": "dw_conv_act", "src": 0, "src_stride": wide, "dst": 1, "b": b, "h": h, "w": w, "c": c, "k": 3,
              "weight": 0, "bias": 1 if f32 else None, "act": act()}, [rows * wide, rows * c], [9 * c, c], f32),
        ]
    # The gated out norm as the plan fuses it, from the fp32 scan output and from activations.
    for f32 in [(0,), ()]:
        cases.append(({"op": "layer_norm", "src": 0, "dst": 1, "rows": rows, "c": c, "weight": 0, "bias": 1,
                       "gate": 2, "gate_stride": 2 * c, "gate_offset": c, "gate_act": act()},
                      [rows * c, rows * c, rows * 2 * c], [c, c], f32))
    for paths in (["raster", "transposed", "raster_rev", "transposed_rev"], ["raster", "rot90", "raster_rev", "rot270"],
                  ["raster", "raster", "raster_rev", "raster_rev"], ["raster", "raster_rev_unflipped"]):
        k4 = len(paths)
        cases.append(({"op": "cross_scan", "u": 0, "xdbl": 1, "dst": 2, "b": b, "h": h, "w": w, "di": di, "n": n,
                       "r": rank, "paths": paths, "dt_weight": 0, "dt_bias": 1, "a": 2, "d": 3},
                      [rows * di, rows * k4 * (rank + 2 * n), rows * di],
                      [k4 * di * rank, k4 * di, k4 * di * n, k4 * di], (2,)))
    for f32 in [(), (0, 1)]:
        cases.append(({"op": "transpose_hw", "src": 0, "dst": 1, "b": b, "h": h, "w": w, "c": c}, [rows * c] * 2, [],
                      f32))
    cases.append(({"op": "layer_norm", "src": 0, "dst": 1, "rows": rows, "c": c, "weight": None, "bias": None,
                   "gate": None, "gate_stride": 0, "gate_offset": 0, "gate_act": "none"}, [rows * c] * 2, [], ()))
    for bias in (True, False):
        for acc in (True, False):
            # The plan's fusion gives a linear op that does not accumulate the activation after it.
            cases.append(({"op": "linear", "src": 0, "dst": 1, "rows": rows, "inp": inp, "out": out, "weight": 0,
                           "bias": 1 if bias else None, "accumulate": acc, "act": "none" if acc else act(),
                           "norm_dst": None, "norm_weight": None, "norm_bias": None},
                          [rows * inp, rows * out], [out * inp, out], ()))
        # The residual step with the next norm fused in.
        cases.append(({"op": "linear", "src": 0, "dst": 1, "rows": rows, "inp": inp, "out": out, "weight": 0,
                       "bias": 1 if bias else None, "accumulate": True, "act": "none", "norm_dst": 2,
                       "norm_weight": 2, "norm_bias": 3},
                      [rows * inp, rows * out, rows * out], [out * inp, out, out, out], ()))
    return cases


def random_inputs(rng, op: dict, lens: list, plens: list) -> tuple[list, list]:
    """Buffers and parameters for ``op``, values as a model's would be."""
    bufs = [rng.standard_normal(n).astype(np.float32) for n in lens]
    params = [rng.standard_normal(n).astype(np.float32) for n in plens]
    if op["op"] == "cross_scan":
        params[2] = -np.exp(0.5 * params[2])  # A = -exp(A_logs): negative, as in a model
        bufs[1] *= 0.5
    return bufs, params


def run_cpu(op: dict, bufs: list, params: list) -> list:
    """The op on the Rust CPU engine: the buffers after it."""
    return _native.run_op(json.dumps(op), bufs, params)
