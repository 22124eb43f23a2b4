//! Building blocks shared by the model parts: channel-last maps, linear layers,
//! LayerNorm and dense convolutions, each loaded by name and shape.

use crate::error::Result;
use crate::kernels::matmul::Mat;
use crate::kernels::{conv, matmul, norm};
use crate::weights::{Param, Weights};

/// A batch of channel-last feature maps: data (B, H, W, C).
#[derive(Clone, Debug)]
pub struct Map {
    pub data: Vec<f32>,
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
    pub w: Param,
    pub b: Option<Param>,
    pub out: usize,
    pub inp: usize,
}

impl Linear {
    pub fn load(ws: &Weights, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        let w = ws.get(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(ws.get(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear { w, b, out, inp })
    }

    /// x (rows, inp) -> (rows, out).
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * self.out];
        self.forward_into(x, rows, &mut y, false);
        y
    }

    /// Writes (or with `accumulate`, adds) x W^T + b into `out` (rows, out).
    pub fn forward_into(&self, x: &[f32], rows: usize, out: &mut [f32], accumulate: bool) {
        matmul::matmul_nt(
            Mat::new(x, rows, self.inp),
            Mat::new(self.w.data(), self.out, self.inp),
            out,
            self.out,
            accumulate,
        );
        if let Some(b) = &self.b {
            matmul::add_bias(out, self.out, b.data());
        }
    }
}

/// LayerNorm over channels with affine weight and bias.
pub struct Norm {
    pub w: Param,
    pub b: Param,
}

impl Norm {
    pub fn load(ws: &Weights, prefix: &str, c: usize) -> Result<Self> {
        Ok(Norm {
            w: ws.get(&format!("{prefix}.weight"), &[c])?,
            b: ws.get(&format!("{prefix}.bias"), &[c])?,
        })
    }

    pub fn inplace(&self, x: &mut [f32]) {
        norm::layer_norm_inplace(x, self.w.data(), self.b.data());
    }

    /// Normalised copy of contiguous rows.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let c = self.w.shape()[0];
        let mut y = vec![0.0f32; x.len()];
        norm::layer_norm(x, c, &mut y, c, x.len() / c, self.w.data(), self.b.data());
        y
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
    pub fn load(
        ws: &Weights,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let w = ws.get(&format!("{prefix}.weight"), &[cout, cin, k, k])?;
        let b = ws.get(&format!("{prefix}.bias"), &[cout])?;
        let cols = conv::conv_weight_to_cols(w.data(), cout, cin, k);
        let w = Param::owned(cols, vec![cout, k * k * cin]);
        Ok(Conv2d {
            lin: Linear {
                w,
                b: Some(b),
                out: cout,
                inp: k * k * cin,
            },
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

    pub fn forward(&self, x: &Map) -> Map {
        debug_assert_eq!(x.c, self.cin);
        let (ho, wo) = self
            .out_hw(x.h, x.w)
            .expect("input size checked by the model plan");
        let cols = conv::im2col(&x.data, x.b, x.h, x.w, x.c, self.k, self.stride, self.pad);
        let data = self.lin.forward(&cols, x.b * ho * wo);
        Map {
            data,
            b: x.b,
            h: ho,
            w: wo,
            c: self.lin.out,
        }
    }
}
