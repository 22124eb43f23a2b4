//! The execution plan: the network for one input shape as an ordered list of
//! ops over named parameters and preallocated buffers (docs/code.md, "The
//! plan"). The model code in `model/` emits it and is the only place that
//! knows the architecture; a backend only executes ops: the CPU engine in
//! `exec.rs`, the CUDA engine in `python/vmamba_rt/gpu.py` (which reads the plan
//! as JSON).
//!
//! Layout: maps are channel-last, `(B, H, W, C)`, so a buffer of `rows = B*H*W`
//! pixels is a `(rows, C)` matrix. Parameters are stored in the layout the ops
//! read (see [`Params`]).

use serde::{Deserialize, Serialize};

use crate::kernels::gemm::{PackedWeight, WeightType};
use crate::memory::{elements, extent};
use crate::variant::{Act, ScanPath};
use crate::weights::Param;

/// Index of a buffer in [`Plan::buffers`].
pub type BufId = usize;
/// Index of a parameter in [`Params`].
pub type ParamId = usize;

/// Element type of a buffer or parameter. `Act` is the backend's activation type
/// (f32 on the CPU; f32, f16 or bf16 on the GPU); `F32` stays f32 everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// The activation type.
    Act,
    /// Always f32 (norm parameters, scan state and its output).
    F32,
}

/// What a buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The NCHW f32 input batch (read only).
    Input,
    /// One result, f32, returned to the caller (logits, embeddings or a map).
    Output,
    /// Intermediate values, placed in the arena of their dtype.
    Work,
}

/// One buffer of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct Buffer {
    /// Elements.
    pub len: usize,
    /// Element type.
    pub dtype: DType,
    /// Input, output or work.
    pub role: Role,
    /// Inputs and outputs: the shape the caller sees ([B, C, H, W] or [B, N]).
    pub shape: Vec<usize>,
    /// Work buffers: element offset in the arena of their dtype. Buffers whose
    /// lifetimes overlap never overlap in the arena.
    pub offset: usize,
    /// Indices of the first and last op that touch the buffer.
    pub first: usize,
    /// See `first`.
    pub last: usize,
}

/// One step of the network. Buffer fields name [`Plan::buffers`], parameter
/// fields [`Params`]; `rows` is pixels (B*H*W) or images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(missing_docs)] // the fields are named as in the comments above each variant
pub enum Op {
    /// dst (B, H, W, C) = src (B, C, H, W), the input to channel-last.
    ToChannelsLast {
        src: BufId,
        dst: BufId,
        b: usize,
        c: usize,
        h: usize,
        w: usize,
    },
    /// dst (B*Ho*Wo, k*k*C) = the k x k patches of src (B, H, W, C) in (ky, kx, c)
    /// order, stride `stride`, zero padding `pad`.
    Im2col {
        src: BufId,
        dst: BufId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
        k: usize,
        stride: usize,
        pad: usize,
        ho: usize,
        wo: usize,
    },
    /// dst (rows, out) = src (rows, inp) W^T + bias, W (out, inp); with
    /// `accumulate` the result is added to dst (a residual step).
    Linear {
        src: BufId,
        dst: BufId,
        rows: usize,
        inp: usize,
        out: usize,
        weight: ParamId,
        bias: Option<ParamId>,
        accumulate: bool,
    },
    /// buf[..len] = act(buf[..len]).
    Act { buf: BufId, len: usize, act: Act },
    /// buf (B, N) += param (N) for every image: a learned map added to a batch.
    AddParam {
        buf: BufId,
        b: usize,
        len: usize,
        param: ParamId,
    },
    /// dst (rows, C) = LayerNorm(src (rows, C)), eps 1e-5; without weight and bias
    /// the plain normalisation.
    LayerNorm {
        src: BufId,
        dst: BufId,
        rows: usize,
        c: usize,
        weight: Option<ParamId>,
        bias: Option<ParamId>,
    },
    /// dst (rows, C) = act(src) * gate_act(gate), elementwise; act(src) without a
    /// gate. Row i, channel j of src is `src[i * src_stride + src_offset + j]`, of
    /// the gate `gate[i * gate_stride + gate_offset + j]`.
    Pointwise {
        src: BufId,
        src_stride: usize,
        src_offset: usize,
        dst: BufId,
        rows: usize,
        c: usize,
        act: Act,
        gate: Option<BufId>,
        gate_stride: usize,
        gate_offset: usize,
        gate_act: Act,
    },
    /// dst (B, H, W, C) = act(depthwise k x k conv of src + bias), same padding;
    /// src rows are `src_stride` apart (the first C channels are read).
    DwConvAct {
        src: BufId,
        src_stride: usize,
        dst: BufId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
        k: usize,
        weight: ParamId,
        bias: Option<ParamId>,
        act: Act,
    },
    /// The selective scan of K = `paths.len()` directions and their merge
    /// (docs/model.md §5): u (B*H*W, Di) and xdbl (B*H*W, K*(R+2N)) -> dst
    /// (B*H*W, Di), f32. Direction k walks `paths[k]` over each H x W map.
    /// Params: dt_weight (K, Di, R), dt_bias (K*Di), a = -exp(A_logs) (K*Di, N), d (K*Di).
    CrossScan {
        u: BufId,
        xdbl: BufId,
        dst: BufId,
        b: usize,
        h: usize,
        w: usize,
        di: usize,
        n: usize,
        r: usize,
        paths: Vec<ScanPath>,
        dt_weight: ParamId,
        dt_bias: ParamId,
        a: ParamId,
        d: ParamId,
    },
    /// dst (B, H, W, C) = softmax of src (B, H, W, C) over the H*W pixels of each channel.
    SpatialSoftmax {
        src: BufId,
        dst: BufId,
        b: usize,
        hw: usize,
        c: usize,
    },
    /// dst (B, W, H, C) = src (B, H, W, C) with rows and columns swapped.
    TransposeHw {
        src: BufId,
        dst: BufId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
    },
    /// dst (B, ceil(H/2), ceil(W/2), 4C) = the 2x2 neighbours of src (B, H, W, C),
    /// groups (0,0), (1,0), (0,1), (1,1) as (row, col) offsets; zeros past an odd edge.
    PatchMerge {
        src: BufId,
        dst: BufId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
    },
    /// dst (B, C) = the mean of src (B, HW, C) over HW.
    MeanPool {
        src: BufId,
        dst: BufId,
        b: usize,
        hw: usize,
        c: usize,
    },
    /// dst (B, C, H, W) = src (B, H, W, C), a map to channel-first (into an output).
    ToChannelsFirst {
        src: BufId,
        dst: BufId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
    },
}

impl Op {
    /// The buffers the op reads and writes (one it only reads may be named twice).
    pub fn buffers(&self) -> Vec<BufId> {
        use Op::*;
        match *self {
            ToChannelsLast { src, dst, .. }
            | Im2col { src, dst, .. }
            | Linear { src, dst, .. }
            | LayerNorm { src, dst, .. }
            | DwConvAct { src, dst, .. }
            | PatchMerge { src, dst, .. }
            | MeanPool { src, dst, .. }
            | SpatialSoftmax { src, dst, .. }
            | TransposeHw { src, dst, .. }
            | ToChannelsFirst { src, dst, .. } => vec![src, dst],
            Pointwise { src, dst, gate, .. } => [src, dst].into_iter().chain(gate).collect(),
            Act { buf, .. } | AddParam { buf, .. } => vec![buf],
            CrossScan { u, xdbl, dst, .. } => vec![u, xdbl, dst],
        }
    }

    /// The op's name in a plan's JSON ("linear", "cross_scan", ...).
    pub fn kind(&self) -> &'static str {
        use Op::*;
        match self {
            ToChannelsLast { .. } => "to_channels_last",
            Im2col { .. } => "im2col",
            Linear { .. } => "linear",
            Act { .. } => "act",
            AddParam { .. } => "add_param",
            LayerNorm { .. } => "layer_norm",
            Pointwise { .. } => "pointwise",
            DwConvAct { .. } => "dw_conv_act",
            CrossScan { .. } => "cross_scan",
            SpatialSoftmax { .. } => "spatial_softmax",
            TransposeHw { .. } => "transpose_hw",
            PatchMerge { .. } => "patch_merge",
            MeanPool { .. } => "mean_pool",
            ToChannelsFirst { .. } => "to_channels_first",
        }
    }

    /// The buffer the op writes.
    pub fn written(&self) -> BufId {
        use Op::*;
        match *self {
            Act { buf, .. } | AddParam { buf, .. } => buf,
            ToChannelsLast { dst, .. }
            | Im2col { dst, .. }
            | Linear { dst, .. }
            | LayerNorm { dst, .. }
            | DwConvAct { dst, .. }
            | PatchMerge { dst, .. }
            | MeanPool { dst, .. }
            | SpatialSoftmax { dst, .. }
            | TransposeHw { dst, .. }
            | ToChannelsFirst { dst, .. }
            | Pointwise { dst, .. }
            | CrossScan { dst, .. } => dst,
        }
    }

    /// The elements each buffer must hold for the op's sizes, as (buffer,
    /// elements). Errs, naming the op, where a size the op divides its work by
    /// is zero or the sizes overflow: for ops that come from outside a plan
    /// (`exec::run_op`), before any kernel sees them.
    pub fn needs(&self) -> std::result::Result<Vec<(BufId, usize)>, String> {
        let kind = self.kind();
        let overflow = || format!("{kind} op: its sizes overflow");
        // A product of sizes, refused where it overflows even with its zero sizes
        // taken as 1: an empty batch must not hide a per-image size that wraps
        // (the kernels step through the batch by it).
        let prod = |dims: &[usize]| {
            let at_least_one: Vec<usize> = dims.iter().map(|&d| d.max(1)).collect();
            elements(&at_least_one).ok_or_else(overflow)?;
            elements(dims).ok_or_else(overflow)
        };
        // `rows` rows of `c` elements, `stride` apart, the first at `offset`.
        let strided =
            |rows, stride, offset, c| extent(rows, stride, offset, c).ok_or_else(overflow);
        let nonzero = |named: &[(&str, usize)]| match named.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(format!("{kind} op: {name} is 0")),
            None => Ok(()),
        };
        use Op::*;
        Ok(match *self {
            ToChannelsLast {
                src,
                dst,
                b,
                c,
                h,
                w,
            }
            | ToChannelsFirst {
                src,
                dst,
                b,
                h,
                w,
                c,
            }
            | TransposeHw {
                src,
                dst,
                b,
                h,
                w,
                c,
            } => {
                nonzero(&[("c", c), ("h", h), ("w", w)])?;
                let n = prod(&[b, c, h, w])?;
                vec![(src, n), (dst, n)]
            }
            Im2col {
                src,
                dst,
                b,
                h,
                w,
                c,
                k,
                stride,
                pad,
                ho,
                wo,
            } => {
                nonzero(&[
                    ("c", c),
                    ("k", k),
                    ("stride", stride),
                    ("ho", ho),
                    ("wo", wo),
                ])?;
                // The output size the window gives (conv::out_size, checked): the
                // kernel walks that many pixels.
                let out = |n: usize| {
                    let padded = pad.checked_mul(2).and_then(|p| p.checked_add(n));
                    padded.map(|v| v.saturating_sub(k) / stride + 1)
                };
                if (out(h), out(w)) != (Some(ho), Some(wo)) {
                    return Err(format!(
                        "{kind} op: ho x wo is {ho} x {wo}, but a {k} x {k} window, stride {stride}, pad {pad} over {h} x {w} gives {:?} x {:?}",
                        out(h),
                        out(w)
                    ));
                }
                vec![
                    (src, prod(&[b, h, w, c])?),
                    (dst, prod(&[b, ho, wo, k, k, c])?),
                ]
            }
            Linear {
                src,
                dst,
                rows,
                inp,
                out,
                ..
            } => {
                nonzero(&[("inp", inp), ("out", out)])?;
                vec![(src, prod(&[rows, inp])?), (dst, prod(&[rows, out])?)]
            }
            Act { buf, len, .. } => vec![(buf, len)],
            AddParam { buf, b, len, .. } => {
                nonzero(&[("len", len)])?;
                vec![(buf, prod(&[b, len])?)]
            }
            LayerNorm {
                src, dst, rows, c, ..
            } => {
                nonzero(&[("c", c)])?;
                let n = prod(&[rows, c])?;
                vec![(src, n), (dst, n)]
            }
            Pointwise {
                src,
                src_stride,
                src_offset,
                dst,
                rows,
                c,
                gate,
                gate_stride,
                gate_offset,
                ..
            } => {
                nonzero(&[("c", c)])?;
                let mut v = vec![
                    (src, strided(rows, src_stride, src_offset, c)?),
                    (dst, prod(&[rows, c])?),
                ];
                if let Some(g) = gate {
                    v.push((g, strided(rows, gate_stride, gate_offset, c)?));
                }
                v
            }
            DwConvAct {
                src,
                src_stride,
                dst,
                b,
                h,
                w,
                c,
                k,
                ..
            } => {
                nonzero(&[("c", c), ("k", k), ("h", h), ("w", w)])?;
                let pixels = prod(&[b, h, w])?;
                vec![
                    (src, strided(pixels, src_stride, 0, c)?),
                    (dst, prod(&[pixels, c])?),
                ]
            }
            CrossScan {
                u,
                xdbl,
                dst,
                b,
                h,
                w,
                di,
                n,
                r,
                ref paths,
                ..
            } => {
                nonzero(&[("h", h), ("w", w), ("di", di), ("paths", paths.len())])?;
                let pixels = prod(&[b, h, w])?;
                let per_pixel = n
                    .checked_mul(2)
                    .and_then(|v| v.checked_add(r))
                    .ok_or_else(overflow)?;
                let inner = prod(&[pixels, di])?;
                vec![
                    (u, inner),
                    (xdbl, prod(&[pixels, paths.len(), per_pixel])?),
                    (dst, inner),
                ]
            }
            SpatialSoftmax { src, dst, b, hw, c } | MeanPool { src, dst, b, hw, c } => {
                nonzero(&[("hw", hw), ("c", c)])?;
                let n = prod(&[b, hw, c])?;
                let out = if matches!(self, MeanPool { .. }) {
                    prod(&[b, c])?
                } else {
                    n
                };
                vec![(src, n), (dst, out)]
            }
            PatchMerge {
                src,
                dst,
                b,
                h,
                w,
                c,
            } => {
                nonzero(&[("h", h), ("w", w), ("c", c)])?;
                vec![
                    (src, prod(&[b, h, w, c])?),
                    (dst, prod(&[b, h.div_ceil(2), w.div_ceil(2), 4, c])?),
                ]
            }
        })
    }

    /// The parameters the op reads and what each must be, as (parameter, need).
    /// Errs, naming the op, where the sizes overflow.
    pub fn param_needs(&self) -> std::result::Result<Vec<(ParamId, ParamNeed)>, String> {
        let kind = self.kind();
        let values = |dims: &[usize]| {
            elements(dims)
                .map(ParamNeed::Values)
                .ok_or_else(|| format!("{kind} op: its sizes overflow"))
        };
        use Op::*;
        let mut v = Vec::new();
        match *self {
            Linear {
                out,
                inp,
                weight,
                bias,
                ..
            } => {
                v.push((weight, ParamNeed::Linear { out, inp }));
                v.extend(bias.map(|b| (b, ParamNeed::Values(out))));
            }
            AddParam { len, param, .. } => v.push((param, ParamNeed::Values(len))),
            LayerNorm {
                c, weight, bias, ..
            } => v.extend(
                weight
                    .into_iter()
                    .chain(bias)
                    .map(|p| (p, ParamNeed::Values(c))),
            ),
            DwConvAct {
                c, k, weight, bias, ..
            } => {
                v.push((weight, values(&[k, k, c])?));
                v.extend(bias.map(|b| (b, ParamNeed::Values(c))));
            }
            CrossScan {
                di,
                n,
                r,
                ref paths,
                dt_weight,
                dt_bias,
                a,
                d,
                ..
            } => {
                let k = paths.len();
                v.push((dt_weight, values(&[k, di, r])?));
                v.push((dt_bias, values(&[k, di])?));
                v.push((a, values(&[k, di, n])?));
                v.push((d, values(&[k, di])?));
            }
            ToChannelsLast { .. }
            | Im2col { .. }
            | Act { .. }
            | Pointwise { .. }
            | SpatialSoftmax { .. }
            | TransposeHw { .. }
            | PatchMerge { .. }
            | MeanPool { .. }
            | ToChannelsFirst { .. } => {}
        }
        Ok(v)
    }

    /// True when the op writes a buffer it also names in another field: the
    /// engines give each field its own slice, so a plan never holds such an op.
    pub fn aliases(&self) -> bool {
        let w = self.written();
        self.buffers().iter().filter(|&&b| b == w).count() > 1
    }
}

/// What a plan computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outputs {
    /// Class logits (B, num_classes).
    Logits,
    /// Pooled pre-logits (B, C).
    Embeddings,
    /// Stage maps (B, C, H, W): a backbone's normed `out_indices` stages, or
    /// every stage of a classifier.
    Features,
}

/// The network for one input shape, ready to execute.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// [B, C, H, W] of the input.
    pub input_shape: [usize; 4],
    /// What the outputs are.
    pub outputs: Outputs,
    /// The steps, in order.
    pub ops: Vec<Op>,
    /// Every buffer; the input is buffer 0.
    pub buffers: Vec<Buffer>,
    /// Elements of the arena for each dtype: [Act, F32].
    pub arena: [usize; 2],
}

impl Plan {
    /// The output buffers, in order.
    pub fn output_ids(&self) -> Vec<BufId> {
        (0..self.buffers.len())
            .filter(|&i| self.buffers[i].role == Role::Output)
            .collect()
    }

    /// Elements a backend allocates for one run: arenas and outputs.
    pub fn elements(&self) -> usize {
        let outputs: usize = self.output_ids().iter().map(|&i| self.buffers[i].len).sum();
        self.arena[0] + self.arena[1] + outputs
    }
}

/// Records ops while the model code walks the network (see `model/`).
#[derive(Debug)]
pub struct Builder {
    ops: Vec<Op>,
    buffers: Vec<Buffer>,
}

impl Builder {
    /// A plan for an input of `shape`; its input is buffer 0.
    pub fn new(shape: [usize; 4]) -> Self {
        let mut b = Builder {
            ops: Vec::new(),
            buffers: Vec::new(),
        };
        b.add(
            shape.iter().product(),
            DType::F32,
            Role::Input,
            shape.to_vec(),
        );
        b
    }

    fn add(&mut self, len: usize, dtype: DType, role: Role, shape: Vec<usize>) -> BufId {
        self.buffers.push(Buffer {
            len,
            dtype,
            role,
            shape,
            offset: 0,
            first: usize::MAX,
            last: 0,
        });
        self.buffers.len() - 1
    }

    /// A new intermediate buffer of `len` elements.
    pub fn work(&mut self, len: usize, dtype: DType) -> BufId {
        self.add(len, dtype, Role::Work, vec![len])
    }

    /// A new output buffer (f32) of `shape`.
    pub fn output(&mut self, shape: Vec<usize>) -> BufId {
        self.add(shape.iter().product(), DType::F32, Role::Output, shape)
    }

    /// Append an op.
    pub fn push(&mut self, op: Op) {
        debug_assert!(!op.aliases(), "an op reads the buffer it writes: {op:?}");
        let bufs = op.buffers();
        let at = self.ops.len();
        for id in bufs {
            let b = &mut self.buffers[id];
            b.first = b.first.min(at);
            b.last = at;
        }
        self.ops.push(op);
    }

    /// Place the work buffers (first fit by lifetime, per dtype) and finish.
    pub fn finish(mut self, outputs: Outputs) -> Plan {
        let mut arena = [0usize; 2];
        for (slot, dtype) in [DType::Act, DType::F32].into_iter().enumerate() {
            let mut ids: Vec<BufId> = (0..self.buffers.len())
                .filter(|&i| self.buffers[i].role == Role::Work && self.buffers[i].dtype == dtype)
                .collect();
            ids.sort_by_key(|&i| self.buffers[i].first);
            // (offset, len, last use) of the buffers placed so far.
            let mut placed: Vec<(usize, usize, usize)> = Vec::new();
            for id in ids {
                let (first, len) = (self.buffers[id].first, self.buffers[id].len);
                let mut live: Vec<(usize, usize)> = placed
                    .iter()
                    .filter(|p| p.2 >= first)
                    .map(|p| (p.0, p.0 + p.1))
                    .collect();
                live.sort_unstable();
                let mut offset = 0;
                for (start, end) in live {
                    if start >= offset + len {
                        break;
                    }
                    offset = offset.max(end);
                }
                self.buffers[id].offset = offset;
                placed.push((offset, len, self.buffers[id].last));
                arena[slot] = arena[slot].max(offset + len);
            }
        }
        Plan {
            input_shape: self.buffers[0].shape.clone().try_into().expect("4 dims"),
            outputs,
            ops: self.ops,
            buffers: self.buffers,
            arena,
        }
    }
}

/// What an op reads of one parameter ([`Op::param_needs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamNeed {
    /// A plain parameter of this many elements.
    Values(usize),
    /// A linear op's weight, (out, inp), packed for the GEMM.
    Linear {
        /// Rows of the weight: the op's output features.
        out: usize,
        /// Columns: its input features.
        inp: usize,
    },
}

/// The model's parameters, by id, each in the layout its op reads (conv weights
/// as (Cout, k*k*Cin) in im2col order, depthwise weights tap-major (k*k, C),
/// `A = -exp(A_logs)`, the weights of linear ops packed for the CPU's GEMM),
/// under the checkpoint name it came from. Every parameter is a copy: nothing
/// refers to the weights file once the model is built.
#[derive(Debug, Default)]
pub struct Params {
    names: Vec<String>,
    dtypes: Vec<DType>,
    slots: Vec<Slot>,
    /// How linear weights are stored as they are added.
    linear_type: WeightType,
}

#[derive(Debug)]
enum Slot {
    Dense(Param),
    /// A linear op's weight (N, K), packed (`kernels::gemm`); `shape` is the
    /// tensor's own (its rows may be split over leading dimensions).
    Packed {
        shape: Vec<usize>,
        w: PackedWeight,
    },
}

impl Params {
    /// No parameters yet; linear weights will be stored as `linear_type`.
    pub fn new(linear_type: WeightType) -> Self {
        Params {
            linear_type,
            ..Params::default()
        }
    }

    /// Register a parameter.
    pub fn add(&mut self, name: &str, param: Param, dtype: DType) -> ParamId {
        self.push(name, dtype, Slot::Dense(param.into_owned()))
    }

    /// Register the weight of a linear op, read as (n, k): packed for the GEMM
    /// (in the tensor's own buffer when nothing else holds it), then stored as
    /// the linear type (one weight at a time: the f32 copies of all never exist
    /// at once).
    pub fn add_linear(&mut self, name: &str, param: Param, n: usize, k: usize) -> ParamId {
        let shape = param.shape().to_vec();
        let w = PackedWeight::from_vec(param.into_vec(), n, k).to_type(self.linear_type);
        self.push(name, DType::Act, Slot::Packed { shape, w })
    }

    fn push(&mut self, name: &str, dtype: DType, slot: Slot) -> ParamId {
        self.names.push(name.to_string());
        self.dtypes.push(dtype);
        self.slots.push(slot);
        self.slots.len() - 1
    }

    /// Whether parameter `id` exists and is what an op needs of it; the error
    /// names the parameter.
    pub fn check(&self, id: ParamId, need: ParamNeed) -> std::result::Result<(), String> {
        let Some(slot) = self.slots.get(id) else {
            return Err(format!(
                "parameter {id} does not exist ({} are loaded)",
                self.slots.len()
            ));
        };
        let name = &self.names[id];
        match (slot, need) {
            (Slot::Packed { w, .. }, ParamNeed::Linear { out, inp }) if w.shape() != (out, inp) => {
                let (n, k) = w.shape();
                Err(format!("linear weight {name} is {n}x{k}, not {out}x{inp}"))
            }
            (Slot::Dense(p), ParamNeed::Values(n)) if p.data().len() != n => Err(format!(
                "parameter {name} holds {} values, not {n}",
                p.data().len()
            )),
            (Slot::Dense(_), ParamNeed::Linear { .. }) => {
                Err(format!("parameter {name} is not a linear weight"))
            }
            (Slot::Packed { .. }, ParamNeed::Values(_)) => Err(format!(
                "parameter {name} is a linear weight, packed for the GEMM"
            )),
            _ => Ok(()),
        }
    }

    /// The elements of a parameter that is not a linear weight.
    ///
    /// # Panics
    /// If `id` is a linear weight (read those with [`Params::packed`] or [`Params::dense`]).
    pub fn data(&self, id: ParamId) -> &[f32] {
        match &self.slots[id] {
            Slot::Dense(p) => p.data(),
            Slot::Packed { .. } => panic!("parameter {} is packed for the GEMM", self.names[id]),
        }
    }

    /// A linear op's packed weight.
    ///
    /// # Panics
    /// If `id` is not one.
    pub fn packed(&self, id: ParamId) -> &PackedWeight {
        match &self.slots[id] {
            Slot::Packed { w, .. } => w,
            Slot::Dense(_) => panic!("parameter {} is not a linear weight", self.names[id]),
        }
    }

    /// Any parameter's elements in its own shape, row-major (linear weights unpacked:
    /// for other engines, which lay them out their own way).
    pub fn dense(&self, id: ParamId) -> std::borrow::Cow<'_, [f32]> {
        match &self.slots[id] {
            Slot::Dense(p) => p.data().into(),
            Slot::Packed { w, .. } => w.unpack().into(),
        }
    }

    /// How the linear weights are stored: re-rounds them to bf16, or widens
    /// them back to f32 (which does not restore what bf16 dropped).
    pub fn set_weight_type(&mut self, to: WeightType) {
        self.linear_type = to;
        self.slots = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|slot| match slot {
                Slot::Packed { shape, w } => Slot::Packed {
                    shape,
                    w: w.to_type(to),
                },
                dense => dense,
            })
            .collect();
    }

    /// (name, dtype, shape) of every parameter, by id.
    pub fn table(&self) -> Vec<(&str, DType, &[usize])> {
        (0..self.names.len())
            .map(|i| {
                let shape = match &self.slots[i] {
                    Slot::Dense(p) => p.shape(),
                    Slot::Packed { shape, .. } => shape,
                };
                (self.names[i].as_str(), self.dtypes[i], shape)
            })
            .collect()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Op::kind` spells each op as the plan's JSON does, and `Op::needs` asks
    /// no more of a buffer than the plan gives it, for every op the released
    /// architectures and the official variants' settings emit.
    #[test]
    fn ops_name_their_json_tag_and_fit_their_buffers_and_params() {
        let mut seen = std::collections::BTreeSet::new();
        for (preset, forward) in [
            ("vanilla-vmamba-tiny", None),
            ("vmamba-tiny-s1l8", None),
            ("vmamba-tiny-s1l8", Some("v052dc")),
            ("vmamba-tiny-s1l8", Some("v05_onsoftmax")),
            ("vmamba-tiny-s1l8", Some("v05_ondwconv3")),
        ] {
            let mut cfg = crate::Config::preset(preset).unwrap();
            cfg.dims = 16;
            cfg.depths = vec![1, 1, 1, 1];
            if let Some(f) = forward {
                cfg.forward_type = f.into();
            }
            let model = crate::VMamba::random(cfg, 0).unwrap();
            for shape in [[1, 3, 64, 64], [2, 3, 72, 40]] {
                let plan = model.plan(shape, Outputs::Logits).unwrap();
                for op in &plan.ops {
                    let json = serde_json::to_value(op).unwrap();
                    assert_eq!(json["op"], op.kind(), "{op:?}");
                    seen.insert(op.kind());
                    for (id, need) in op.needs().unwrap() {
                        assert!(need <= plan.buffers[id].len, "{op:?}: buffer {id}");
                    }
                    for (id, need) in op.param_needs().unwrap() {
                        model.params().check(id, need).unwrap();
                    }
                }
            }
        }
        assert!(seen.len() >= 12, "{seen:?}");
    }

    /// Sizes from outside a plan: a product that would wrap around, or a zero
    /// that a kernel would divide its work by, is refused by name.
    #[test]
    fn needs_refuses_overflowing_and_zero_sizes() {
        let linear = |rows, inp| Op::Linear {
            src: 0,
            dst: 1,
            rows,
            inp,
            out: 3,
            weight: 0,
            bias: None,
            accumulate: false,
        };
        assert_eq!(linear(5, 2).needs().unwrap(), vec![(0, 10), (1, 15)]);
        let wraps = linear((1 << 63) + 1, 2).needs().unwrap_err();
        assert!(wraps.contains("linear op: its sizes overflow"), "{wraps}");
        assert_eq!(linear(5, 0).needs().unwrap_err(), "linear op: inp is 0");
        // An empty batch hides no per-image size that wraps.
        let empty_batch = Op::ToChannelsLast {
            src: 0,
            dst: 1,
            b: 0,
            c: 1 << 62,
            h: 64,
            w: 64,
        };
        assert!(empty_batch.needs().is_err());
        let strided = Op::Pointwise {
            src: 0,
            src_stride: 10,
            src_offset: 4,
            dst: 1,
            rows: 3,
            c: 2,
            act: Act::Silu,
            gate: Some(2),
            gate_stride: usize::MAX,
            gate_offset: 0,
            gate_act: Act::None,
        };
        let err = strided.needs().unwrap_err();
        assert!(err.contains("pointwise op: its sizes overflow"), "{err}");
        // An output size the window does not give (here one whose product wraps
        // to the buffer's length) would have the kernel walk 2^62 pixels.
        let im2col = |pad, ho, wo| Op::Im2col {
            src: 0,
            dst: 1,
            b: 1,
            h: 4,
            w: 4,
            c: 2,
            k: 3,
            stride: 2,
            pad,
            ho,
            wo,
        };
        assert_eq!(im2col(1, 2, 2).needs().unwrap(), vec![(0, 32), (1, 72)]);
        let err = im2col(1 << 62, 1, 1).needs().unwrap_err();
        assert!(err.contains("im2col op: ho x wo is 1 x 1"), "{err}");
        let err = im2col(usize::MAX / 2 + 1, 1, 1).needs().unwrap_err();
        assert!(err.contains("gives None x None"), "{err}");
    }

    #[test]
    fn live_buffers_never_share_arena_space() {
        let mut g = Builder::new([1, 1, 1, 4]);
        let a = g.work(8, DType::Act);
        let b = g.work(4, DType::Act);
        let c = g.work(8, DType::Act);
        let gelu = |buf| Op::Act {
            buf,
            len: 1,
            act: Act::Gelu,
        };
        let mean = |src, dst| Op::MeanPool {
            src,
            dst,
            b: 1,
            hw: 1,
            c: 1,
        };
        g.push(gelu(a));
        g.push(mean(a, b)); // a dies here
        g.push(mean(b, c)); // c may take a's place, not b's
        let plan = g.finish(Outputs::Logits);
        let at = |i: BufId| {
            (
                plan.buffers[i].offset,
                plan.buffers[i].offset + plan.buffers[i].len,
            )
        };
        assert_eq!(at(a), (0, 8));
        assert_eq!(at(b), (8, 12));
        assert_eq!(at(c), (0, 8));
        assert_eq!(plan.arena, [12, 0]);
    }
}
