"""The plan's ``cross_scan`` op as ONNX nodes (docs/onnx.md, "The scan").

For K directions over a map of L = H*W pixels (docs/model.md §5), all in fp32:

1. each direction's sequence is gathered along its path (one ``Gather`` of
   u and one of the projections, with index tables from ``_native.scan_order``);
2. delta = softplus(dt @ dt_weight^T + dt_bias), the decays a = exp(delta A)
   and inputs b = delta u B;
3. the recurrence ``h_l = a_l h_{l-1} + b_l`` along L, in one of the forms
   of ``FORMS``: two ``Scan`` loops of about sqrt(L) steps over chunks
   ("chunked", the default: the fastest in ONNX Runtime and OpenVINO here), a
   Hillis-Steele prefix scan without loops ("prefix"), or one ``Scan`` of L
   steps ("loop");
4. y = <C, h> + D u, put back at the pixels each step lands on (a second
   ``Gather``) and the K directions summed.

With d_state 1 (the v2 models) the state axis is left out.
"""

from __future__ import annotations

import math

import numpy as np

from . import _native
from .onnx_export import ExportError, _Value


def _order(paths: list, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, L) tables: the pixel step l of direction k reads, and for each pixel
    the step of direction k whose output lands on it; as indices into K blocks of L."""
    n = h * w
    reads, lands = [], []
    for k, path in enumerate(paths):
        read, land = _native.scan_order(path, h, w)
        if not np.array_equal(np.sort(land), np.arange(n)):
            raise ExportError(f"cross_scan op: path {path!r} does not put one output on each pixel")
        reads.append(k * n + read)
        lands.append(k * n + np.argsort(land))
    return np.stack(reads).astype(np.int32), np.stack(lands).astype(np.int32)  # K*L < 2^31: the core's bounds


def _prefix(ex, a, b, axis: int, length: int):
    """h with h_l = a_l h_{l-1} + b_l (h_{-1} = 0) along ``axis``: Hillis-Steele,
    step s combining each pair with the one s before it. No division, so exact
    in fp32 up to the order of rounding."""
    g = ex.g
    s = 1
    while s < length:
        a_hi = ex.slice(a, axis, s, length)
        b_tail = g.node("Add", [g.node("Mul", [a_hi, ex.slice(b, axis, 0, length - s)]), ex.slice(b, axis, s, length)])
        b_next = _Value(g.node("Concat", [ex.slice(b, axis, 0, s), b_tail], axis=axis), b.shape, b.dtype)
        if 2 * s < length:  # the last step needs no decays
            a_tail = g.node("Mul", [a_hi, ex.slice(a, axis, 0, length - s)])
            a = _Value(g.node("Concat", [ex.slice(a, axis, 0, s), a_tail], axis=axis), a.shape, a.dtype)
        b, s = b_next, 2 * s
    return b


def _steps(ex, body: list, states: dict, scanned: dict, outputs: list, axis: int, rank: int) -> list:
    """An ONNX ``Scan`` along ``axis``. ``states``: name -> initial tensor (the
    body reads ``{name}_in``, writes ``{name}_out``); ``scanned``: name -> tensor
    (one step read as ``{name}_l``); ``outputs``: body tensors stacked along
    ``axis``; ``rank``: the rank of one step. Returns the final states, then the
    stacked outputs."""
    helper, tp = ex.g.onnx.helper, ex.g.onnx.TensorProto

    def info(names):
        return [helper.make_tensor_value_info(n, tp.FLOAT, [None] * rank) for n in names]

    graph = helper.make_graph([helper.make_node(*n) for n in body], "scan_step",
                              info([f"{n}_in" for n in states] + [f"{n}_l" for n in scanned]),
                              info([f"{n}_out" for n in states] + outputs))
    return ex.g.node("Scan", list(states.values()) + list(scanned.values()), n_out=len(states) + len(outputs),
                     body=graph, num_scan_inputs=len(scanned), scan_input_axes=[axis] * len(scanned),
                     scan_output_axes=[axis] * len(outputs))


def _filled(ex, v, axis: int, fill: float) -> str:
    """``fill`` in the shape of one step of ``v`` along ``axis``."""
    g, helper, tp = ex.g, ex.g.onnx.helper, ex.g.onnx.TensorProto
    first = g.node("Gather", [v, g.const("zero", np.array(0, np.int64), key=("i64_0",))], axis=axis)
    return g.node("ConstantOfShape", [g.node("Shape", [first])], value=helper.make_tensor("v", tp.FLOAT, [1], [fill]))


# One step of the recurrence: h = a h + b.
_STEP = [("Mul", ["a_l", "h_in"], ["ah"]), ("Add", ["ah", "b_l"], ["h_out"]), ("Identity", ["h_out"], ["h_l"])]


def _loop(ex, a, b, axis: int, length: int):
    """The recurrence as an ONNX ``Scan`` over ``axis``, one step at a time."""
    rank = len(a.shape) - 1
    _, hs = _steps(ex, _STEP, {"h": _filled(ex, a.name, axis, 0.0)}, {"a": a.name, "b": b.name}, ["h_l"], axis, rank)
    return _Value(hs, b.shape, b.dtype)


def _chunked(ex, a, b, axis: int, length: int):
    """The recurrence in chunks of T ~ sqrt(L) steps: one ``Scan`` over the T
    steps of every chunk at once, keeping each chunk's running product of decays
    P and its states H from zero; a second over the chunks for the state each
    one starts from (c = P_end c + H_end); then h = H + P c. Two loops of about
    sqrt(L) steps each instead of one of L, and still no division. The sequence
    is padded to C*T with steps that keep the state (a = 1, b = 0)."""
    g = ex.g
    t = max(1, math.isqrt(length - 1) + 1) if length > 1 else 1
    c = -(-length // t)
    dims = list(a.shape)
    inner = dims[axis + 1:]
    if c * t != length:  # pad with steps that keep the state
        pad = [0] * len(dims) * 2
        pad[len(dims) + axis] = c * t - length
        a = _Value(g.node("Pad", [a.name, g.ints(pad), g.scalar(1.0, "float32")]), a.shape, a.dtype)
        b = _Value(g.node("Pad", [b.name, g.ints(pad)]), b.shape, b.dtype)
    chunked = [-1] + dims[1:axis] + [c, t] + inner  # (B, K, C, T, ...)
    a2, b2 = (g.node("Reshape", [v.name, g.ints(chunked)]) for v in (a, b))
    rank = len(chunked) - 1
    within = [("Mul", ["a_l", "p_in"], ["p_out"]), ("Mul", ["a_l", "h_in"], ["ah"]), ("Add", ["ah", "b_l"], ["h_out"]),
              ("Identity", ["p_out"], ["p_l"]), ("Identity", ["h_out"], ["h_l"])]
    p_end, h_end, p_all, h_all = _steps(ex, within, {"p": _filled(ex, a2, axis + 1, 1.0),
                                                     "h": _filled(ex, a2, axis + 1, 0.0)},
                                        {"a": a2, "b": b2}, ["p_l", "h_l"], axis + 1, rank)
    # The state each chunk starts from: the carry before it is updated.
    across = [("Identity", ["h_in"], ["h_l"])] + _STEP[:2]
    _, starts = _steps(ex, across, {"h": _filled(ex, p_end, axis, 0.0)}, {"a": p_end, "b": h_end}, ["h_l"], axis,
                       rank - 1)
    h = g.node("Add", [h_all, g.node("Mul", [p_all, g.node("Unsqueeze", [starts, g.ints([axis + 1])])])])
    h = g.node("Reshape", [h, g.ints([-1] + dims[1:axis] + [c * t] + inner)])
    if c * t != length:
        h = ex.slice(_Value(h, b.shape, b.dtype), axis, 0, length)
    return _Value(h, b.shape, b.dtype)


def _softplus(g, x: str) -> str:
    """max(x, 0) + log(1 + exp(-|x|)): stable for any x, and in ONNX Runtime
    about twice as fast as its ``Softplus``."""
    tail = g.node("Log", [g.node("Add", [g.node("Exp", [g.node("Neg", [g.node("Abs", [x])])]),
                                         g.scalar(1.0, "float32")])])
    return g.node("Add", [g.node("Relu", [x]), tail])


FORMS = {"chunked": _chunked, "prefix": _prefix, "loop": _loop}


def cross_scan(ex, op: dict):
    """The op's output: (-1, L, Di) fp32."""
    g = ex.g
    b, h, w, di, n, r, paths = (op[f] for f in ("b", "h", "w", "di", "n", "r", "paths"))
    length, k, xs = h * w, len(paths), r + 2 * n
    ex.check_covers(op, op["u"], b * length * di)
    ex.check_covers(op, op["xdbl"], b * length * k * xs)
    ex.check_covers(op, op["dst"], b * length * di)
    f32 = "float32"
    reads, lands = _order(paths, h, w)
    order = (tuple(paths), h, w)  # the blocks of a stage share their tables
    # Each direction's sequence: u (B, K, L, Di) and its projections (B, K, L, R+2N).
    u = ex.read(op["u"], (-1, length, di), f32)
    u_k = _Value(g.node("Gather", [u.name, g.const("scan_reads", reads % length, key=("reads", order))], axis=1), (-1, k, length, di), f32)
    proj = ex.transpose(ex.read(op["xdbl"], (-1, length, k, xs), f32), [0, 2, 1, 3])
    proj = ex.reshape(proj, (-1, k * length, xs))
    proj = _Value(g.node("Gather", [proj.name, g.const("scan_reads_k", reads, key=("reads_k", order))], axis=1), (-1, k, length, xs), f32)
    dt, bs, cs = (_Value(ex.slice(proj, 3, lo, hi), (-1, k, length, hi - lo), f32)
                  for lo, hi in ((0, r), (r, r + n), (r + n, xs)))
    dt_w = ex.param(op["dt_weight"], f32, relayout=lambda a: a.reshape(k, di, r).transpose(0, 2, 1))  # (K, R, Di)
    delta = g.node("MatMul", [dt.name, dt_w])
    delta = _softplus(g, g.node("Add", [delta, ex.param(op["dt_bias"], f32, (k, 1, di))]))
    du = g.node("Mul", [delta, u_k.name])
    if n == 1:
        decay = g.node("Exp", [g.node("Mul", [delta, ex.param(op["a"], f32, (k, 1, di))])])  # (B, K, L, Di)
        inputs = g.node("Mul", [du, bs.name])
        shape = (-1, k, length, di)
    else:
        last = g.ints([-1])
        decay = g.node("Exp", [g.node("Mul", [g.node("Unsqueeze", [delta, last]),
                                              ex.param(op["a"], f32, (k, 1, di, n))])])  # (B, K, L, Di, N)
        inputs = g.node("Mul", [g.node("Unsqueeze", [du, last]), g.node("Unsqueeze", [bs.name, g.ints([3])])])
        shape = (-1, k, length, di, n)
    states = FORMS[ex.scan_form](ex, _Value(decay, shape, f32), _Value(inputs, shape, f32), 2, length)
    if n == 1:
        y = g.node("Mul", [states.name, cs.name])
    else:
        y = g.node("Mul", [states.name, g.node("Unsqueeze", [cs.name, g.ints([3])])])
        y = g.node("ReduceSum", [y, g.ints([4])], keepdims=0)
    y = g.node("Add", [y, g.node("Mul", [u_k.name, ex.param(op["d"], f32, (k, 1, di))])])  # (B, K, L, Di)
    # Back to the pixels, the directions summed.
    y = g.node("Reshape", [y, g.ints([-1, k * length, di])])
    y = g.node("Gather", [y, g.const("scan_lands", lands, key=("lands", order))], axis=1)
    return _Value(g.node("ReduceSum", [y, g.ints([1])], keepdims=0), (-1, length, di), f32)
