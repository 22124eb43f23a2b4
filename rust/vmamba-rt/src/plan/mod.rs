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

use crate::variant::{Act, ScanPath};

mod builder;
mod checks;
mod fuse;
mod params;

fn no_act() -> Act {
    Act::None
}

pub use builder::Builder;
pub use params::{DenseLinear, LinearWeight, ParamNeed, Params, PrepareLinear};

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
    /// dst (rows, out) = act(src (rows, inp) W^T + bias), W (out, inp); with
    /// `accumulate` the result is added to dst (a residual step). Then, with
    /// `norm_dst`, norm_dst (rows, out) = LayerNorm(dst) with `norm_weight` and
    /// `norm_bias` (the residual step and the next pre-norm). `act` and the norm
    /// come from the fusion of the op that followed (`fuse`); none by default.
    Linear {
        src: BufId,
        dst: BufId,
        rows: usize,
        inp: usize,
        out: usize,
        weight: ParamId,
        bias: Option<ParamId>,
        accumulate: bool,
        #[serde(default = "no_act")]
        act: Act,
        #[serde(default)]
        norm_dst: Option<BufId>,
        #[serde(default)]
        norm_weight: Option<ParamId>,
        #[serde(default)]
        norm_bias: Option<ParamId>,
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
    /// the plain normalisation. With a `gate`, times gate_act(gate), read as by
    /// `Pointwise` (the fusion of the gate that followed: SS2D's gated out norm).
    LayerNorm {
        src: BufId,
        dst: BufId,
        rows: usize,
        c: usize,
        weight: Option<ParamId>,
        bias: Option<ParamId>,
        #[serde(default)]
        gate: Option<BufId>,
        #[serde(default)]
        gate_stride: usize,
        #[serde(default)]
        gate_offset: usize,
        #[serde(default = "no_act")]
        gate_act: Act,
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
            Linear {
                src, dst, norm_dst, ..
            } => [src, dst].into_iter().chain(norm_dst).collect(),
            LayerNorm { src, dst, gate, .. } => [src, dst].into_iter().chain(gate).collect(),
            ToChannelsLast { src, dst, .. }
            | Im2col { src, dst, .. }
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

    /// The buffers the op writes.
    pub fn written(&self) -> Vec<BufId> {
        use Op::*;
        let one = match *self {
            Linear { dst, norm_dst, .. } => return [dst].into_iter().chain(norm_dst).collect(),
            Act { buf, .. } | AddParam { buf, .. } => buf,
            ToChannelsLast { dst, .. }
            | Im2col { dst, .. }
            | LayerNorm { dst, .. }
            | DwConvAct { dst, .. }
            | PatchMerge { dst, .. }
            | MeanPool { dst, .. }
            | SpatialSoftmax { dst, .. }
            | TransposeHw { dst, .. }
            | ToChannelsFirst { dst, .. }
            | Pointwise { dst, .. }
            | CrossScan { dst, .. } => dst,
        };
        vec![one]
    }

    /// True when the op writes a buffer it also names in another field: the
    /// engines give each field its own slice, so a plan never holds such an op.
    pub fn aliases(&self) -> bool {
        let all = self.buffers();
        self.written()
            .iter()
            .any(|w| all.iter().filter(|&b| b == w).count() > 1)
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

/// Every op kind with its fields, as the plan's JSON spells them: the contract
/// an engine written outside Rust implements (`_native.OP_KINDS`; the CUDA
/// engine's table of launches has one entry each). A test holds it to the ops
/// the model emits.
pub const OP_KINDS: [(&str, &[&str]); 14] = [
    ("to_channels_last", &["src", "dst", "b", "c", "h", "w"]),
    (
        "im2col",
        &[
            "src", "dst", "b", "h", "w", "c", "k", "stride", "pad", "ho", "wo",
        ],
    ),
    (
        "linear",
        &[
            "src",
            "dst",
            "rows",
            "inp",
            "out",
            "weight",
            "bias",
            "accumulate",
            "act",
            "norm_dst",
            "norm_weight",
            "norm_bias",
        ],
    ),
    ("act", &["buf", "len", "act"]),
    ("add_param", &["buf", "b", "len", "param"]),
    (
        "layer_norm",
        &[
            "src",
            "dst",
            "rows",
            "c",
            "weight",
            "bias",
            "gate",
            "gate_stride",
            "gate_offset",
            "gate_act",
        ],
    ),
    (
        "pointwise",
        &[
            "src",
            "src_stride",
            "src_offset",
            "dst",
            "rows",
            "c",
            "act",
            "gate",
            "gate_stride",
            "gate_offset",
            "gate_act",
        ],
    ),
    (
        "dw_conv_act",
        &[
            "src",
            "src_stride",
            "dst",
            "b",
            "h",
            "w",
            "c",
            "k",
            "weight",
            "bias",
            "act",
        ],
    ),
    (
        "cross_scan",
        &[
            "u",
            "xdbl",
            "dst",
            "b",
            "h",
            "w",
            "di",
            "n",
            "r",
            "paths",
            "dt_weight",
            "dt_bias",
            "a",
            "d",
        ],
    ),
    ("spatial_softmax", &["src", "dst", "b", "hw", "c"]),
    ("transpose_hw", &["src", "dst", "b", "h", "w", "c"]),
    ("patch_merge", &["src", "dst", "b", "h", "w", "c"]),
    ("mean_pool", &["src", "dst", "b", "hw", "c"]),
    ("to_channels_first", &["src", "dst", "b", "h", "w", "c"]),
];

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
            ("vmamba-tiny-s1l8", Some("posembed")),
        ] {
            let mut cfg = crate::Config::preset(preset).unwrap();
            cfg.dims = 16;
            cfg.depths = vec![1, 1, 1, 1];
            match forward {
                Some("posembed") => (cfg.posembed, cfg.imgsize) = (true, 64),
                Some(f) => cfg.forward_type = f.into(),
                None => {}
            }
            let model = crate::VMamba::random(cfg, 0).unwrap();
            let shapes: &[[usize; 4]] = if forward == Some("posembed") {
                &[[1, 3, 64, 64]]
            } else {
                &[[1, 3, 64, 64], [2, 3, 72, 40]]
            };
            for (shape, outputs) in shapes
                .iter()
                .flat_map(|s| [(s, Outputs::Logits), (s, Outputs::Features)])
            {
                let plan = model.plan(*shape, outputs).unwrap();
                for op in &plan.ops {
                    let json = serde_json::to_value(op).unwrap();
                    assert_eq!(json["op"], op.kind(), "{op:?}");
                    // Its fields are the schema's, no more and no fewer.
                    let (_, fields) = OP_KINDS.iter().find(|(k, _)| *k == op.kind()).unwrap();
                    let mut have: Vec<&str> = json
                        .as_object()
                        .unwrap()
                        .keys()
                        .map(|k| k.as_str())
                        .collect();
                    have.retain(|&k| k != "op");
                    have.sort_unstable();
                    let mut want = fields.to_vec();
                    want.sort_unstable();
                    assert_eq!(have, want, "{}", op.kind());
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
        let all: std::collections::BTreeSet<_> = OP_KINDS.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            seen, all,
            "every op kind of the schema is emitted by some plan here"
        );
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
            act: Act::None,
            norm_dst: None,
            norm_weight: None,
            norm_bias: None,
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
