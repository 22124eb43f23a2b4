//! Building blocks shared by the model parts: channel-last maps, linear layers,
//! LayerNorm and dense convolutions. Each is loaded by name and shape into the
//! model's [`Params`] and emits its ops into a plan.

use crate::error::Result;
use crate::kernels::conv;
use crate::plan::{BufId, Builder, DType, Op, ParamId, Params};
use crate::variant::Act;
use crate::weights::{Param, Weights};

/// `dst (rows, c) = act(src) * gate_act(gate)`: a [`Op::Pointwise`] into a new buffer,
/// reading `c` channels at `offset` of rows `stride` apart, of src and of the gate.
#[allow(clippy::too_many_arguments)]
pub fn pointwise(
    g: &mut Builder,
    (src, stride, offset): (BufId, usize, usize),
    rows: usize,
    c: usize,
    act: Act,
    gate: Option<(BufId, usize, usize, Act)>,
) -> BufId {
    let dst = g.work(rows * c, DType::Act);
    let (gate_stride, gate_offset, gate_act) =
        gate.map_or((0, 0, Act::None), |(_, s, o, a)| (s, o, a));
    g.push(Op::Pointwise {
        src,
        src_stride: stride,
        src_offset: offset,
        dst,
        rows,
        c,
        act,
        gate: gate.map(|(buf, ..)| buf),
        gate_stride,
        gate_offset,
        gate_act,
    });
    dst
}

/// A batch of channel-last feature maps in a plan buffer: (B, H, W, C).
#[derive(Clone, Copy, Debug)]
pub struct Map {
    pub buf: BufId,
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Map {
    pub fn rows(&self) -> usize {
        self.b * self.h * self.w
    }
}

/// `y = x W^T (+ b)` with W stored (out, in).
pub struct Linear {
    w: ParamId,
    b: Option<ParamId>,
    pub out: usize,
    inp: usize,
}

impl Linear {
    pub fn load(
        ws: &Weights,
        ps: &mut Params,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let w = ps.add_linear(&name, ws.get(&name, &[out, inp])?, out, inp);
        Self::with_weight(ws, ps, prefix, w, out, inp, bias)
    }

    /// A linear layer without bias over a weight already registered.
    pub fn from_weight(w: ParamId, out: usize, inp: usize) -> Self {
        Linear {
            w,
            b: None,
            out,
            inp,
        }
    }

    fn with_weight(
        ws: &Weights,
        ps: &mut Params,
        prefix: &str,
        w: ParamId,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Self> {
        let b = if bias {
            let name = format!("{prefix}.bias");
            Some(ps.add(&name, ws.get(&name, &[out])?, DType::F32))
        } else {
            None
        };
        Ok(Linear { w, b, out, inp })
    }

    /// Writes (or with `accumulate`, adds) src (rows, inp) W^T + b into dst (rows, out).
    pub fn emit_into(
        &self,
        g: &mut Builder,
        src: BufId,
        rows: usize,
        dst: BufId,
        accumulate: bool,
    ) {
        g.push(Op::Linear {
            src,
            dst,
            rows,
            inp: self.inp,
            out: self.out,
            weight: self.w,
            bias: self.b,
            accumulate,
            act: crate::variant::Act::None,
            norm_dst: None,
            norm_weight: None,
            norm_bias: None,
        });
    }

    /// src (rows, inp) -> a new buffer (rows, out).
    pub fn emit(&self, g: &mut Builder, src: BufId, rows: usize) -> BufId {
        let dst = g.work(rows * self.out, DType::Act);
        self.emit_into(g, src, rows, dst, false);
        dst
    }
}

/// LayerNorm over channels with affine weight and bias.
pub struct Norm {
    w: ParamId,
    b: ParamId,
    c: usize,
}

impl Norm {
    pub fn load(ws: &Weights, ps: &mut Params, prefix: &str, c: usize) -> Result<Self> {
        let mut get = |part: &str| -> Result<ParamId> {
            let name = format!("{prefix}.{part}");
            Ok(ps.add(&name, ws.get(&name, &[c])?, DType::F32))
        };
        Ok(Norm {
            w: get("weight")?,
            b: get("bias")?,
            c,
        })
    }

    /// src (rows, C) -> a new normed buffer.
    pub fn emit(&self, g: &mut Builder, src: BufId, rows: usize) -> BufId {
        let dst = g.work(rows * self.c, DType::Act);
        g.push(Op::LayerNorm {
            src,
            dst,
            rows,
            c: self.c,
            weight: Some(self.w),
            bias: Some(self.b),
            gate: None,
            gate_stride: 0,
            gate_offset: 0,
            gate_act: crate::variant::Act::None,
        });
        dst
    }

    /// LayerNorm without weight and bias: src (rows, c) -> a new buffer.
    pub fn emit_plain(g: &mut Builder, src: BufId, rows: usize, c: usize) -> BufId {
        let dst = g.work(rows * c, DType::Act);
        g.push(Op::LayerNorm {
            src,
            dst,
            rows,
            c,
            weight: None,
            bias: None,
            gate: None,
            gate_stride: 0,
            gate_offset: 0,
            gate_act: crate::variant::Act::None,
        });
        dst
    }

    /// A normed copy of a map.
    pub fn emit_map(&self, g: &mut Builder, x: Map) -> Map {
        Map {
            buf: self.emit(g, x.buf, x.rows()),
            ..x
        }
    }
}

/// Dense 2-D convolution with bias, run as im2col + GEMM.
pub struct Conv2d {
    /// Weight re-laid as (Cout, k*k*Cin) in im2col order.
    lin: Linear,
    cin: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        ws: &Weights,
        ps: &mut Params,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let w = ws.get(&name, &[cout, cin, k, k])?;
        let cols = conv::conv_weight_to_cols(w.data(), cout, cin, k);
        let w = ps.add_linear(
            &name,
            Param::owned(cols, vec![cout, k * k * cin]),
            cout,
            k * k * cin,
        );
        Ok(Conv2d {
            lin: Linear::with_weight(ws, ps, prefix, w, cout, k * k * cin, true)?,
            cin,
            k,
            stride,
            pad,
        })
    }

    /// Output spatial size for an input of `h` x `w`, or `None` if the window does not fit.
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let fits = |n: usize| n + 2 * self.pad >= self.k;
        (fits(h) && fits(w)).then(|| {
            (
                conv::out_size(h, self.k, self.stride, self.pad),
                conv::out_size(w, self.k, self.stride, self.pad),
            )
        })
    }

    /// Smallest input side that yields at least `need` output pixels along it:
    /// `floor((n + 2p - k) / s) + 1 >= need` solved for n.
    pub fn min_in(&self, need: usize) -> usize {
        ((need.max(1) - 1) * self.stride + self.k)
            .saturating_sub(2 * self.pad)
            .max(1)
    }

    pub fn emit(&self, g: &mut Builder, x: Map) -> Map {
        debug_assert_eq!(x.c, self.cin);
        let (ho, wo) = self
            .out_hw(x.h, x.w)
            .expect("input size checked by the model");
        let rows = x.b * ho * wo;
        let cols = g.work(rows * self.lin.inp, DType::Act);
        g.push(Op::Im2col {
            src: x.buf,
            dst: cols,
            b: x.b,
            h: x.h,
            w: x.w,
            c: x.c,
            k: self.k,
            stride: self.stride,
            pad: self.pad,
            ho,
            wo,
        });
        Map {
            buf: self.lin.emit(g, cols, rows),
            b: x.b,
            h: ho,
            w: wo,
            c: self.lin.out,
        }
    }
}
