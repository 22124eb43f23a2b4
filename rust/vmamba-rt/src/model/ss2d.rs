//! SS2D, the 2-D selective scan (docs/model.md §5).

use super::layers::{Linear, Norm};
use crate::config::{Config, ForwardType};
use crate::error::Result;
use crate::kernels::matmul::{self, Mat};
use crate::kernels::{conv, math, scan};
use crate::weights::{Param, Weights};

pub struct Ss2d {
    /// C -> Di (v05_noz) or C -> 2Di as [x, z] (v0).
    in_proj: Linear,
    /// Depthwise kernel re-laid tap-major: (k*k, Di).
    conv_w: Vec<f32>,
    conv_b: Option<Param>,
    conv_k: usize,
    /// (4, R+2N, Di) read as one (4*(R+2N), Di) projection.
    x_proj: Param,
    /// (4, Di, R).
    dt_w: Param,
    /// (4*Di).
    dt_b: Param,
    /// A = -exp(A_logs): (4*Di, N).
    a: Vec<f32>,
    /// (4*Di).
    ds: Param,
    out_norm: Norm,
    /// Di -> C.
    out_proj: Linear,
    gated: bool,
    di: usize,
    n: usize,
    r: usize,
}

impl Ss2d {
    pub fn load(cfg: &Config, ws: &Weights, p: &str, c: usize) -> Result<Self> {
        let (di, n, r, k) = (
            cfg.d_inner(c),
            cfg.ssm_d_state,
            cfg.dt_rank(c),
            cfg.ssm_conv,
        );
        let gated = cfg.forward_type == ForwardType::V0;
        let in_proj = Linear::load(
            ws,
            &format!("{p}.in_proj"),
            if gated { 2 * di } else { di },
            c,
            false,
        )?;
        let w = ws.get(&format!("{p}.conv2d.weight"), &[di, 1, k, k])?;
        let mut conv_w = vec![0.0f32; di * k * k];
        for (ch, taps) in w.data().chunks(k * k).enumerate() {
            for (t, v) in taps.iter().enumerate() {
                conv_w[t * di + ch] = *v;
            }
        }
        let conv_b = if cfg.ssm_conv_bias {
            Some(ws.get(&format!("{p}.conv2d.bias"), &[di])?)
        } else {
            None
        };
        let a_logs = ws.get(&format!("{p}.A_logs"), &[4 * di, n])?;
        Ok(Ss2d {
            in_proj,
            conv_w,
            conv_b,
            conv_k: k,
            x_proj: ws.get(&format!("{p}.x_proj_weight"), &[4, r + 2 * n, di])?,
            dt_w: ws.get(&format!("{p}.dt_projs_weight"), &[4, di, r])?,
            dt_b: Param::owned(
                ws.get(&format!("{p}.dt_projs_bias"), &[4, di])?
                    .data()
                    .to_vec(),
                vec![4 * di],
            ),
            a: a_logs.data().iter().map(|v| -v.exp()).collect(),
            ds: ws.get(&format!("{p}.Ds"), &[4 * di])?,
            out_norm: Norm::load(ws, &format!("{p}.out_norm"), di)?,
            out_proj: Linear::load(ws, &format!("{p}.out_proj"), c, di, false)?,
            gated,
            di,
            n,
            r,
        })
    }

    /// `resid += SS2D(x)`, with x the normed input (B*H*W, C) of a batch of `b` maps of `h` x `w`.
    pub fn forward_add(&self, x: &[f32], (b, h, w): (usize, usize, usize), resid: &mut [f32]) {
        let (rows, di, n, r) = (b * h * w, self.di, self.n, self.r);
        // [x | z]: (rows, Di) or (rows, 2Di)
        let proj = self.in_proj.forward(x, rows);
        let proj_stride = self.in_proj.out;
        // u = SiLU(dwconv(x)): (rows, Di)
        let mut u = vec![0.0f32; rows * di];
        let bias = self.conv_b.as_ref().map(|b| b.data());
        conv::dwconv_silu(
            &proj,
            proj_stride,
            b,
            h,
            w,
            di,
            self.conv_k,
            &self.conv_w,
            bias,
            &mut u,
        );
        // x_dbl for all four directions at once, pixel order: (rows, 4*(R+2N))
        let xs = 4 * (r + 2 * n);
        let mut xdbl = vec![0.0f32; rows * xs];
        matmul::matmul_nt(
            Mat::new(&u, rows, di),
            Mat::new(self.x_proj.data(), xs, di),
            &mut xdbl,
            xs,
            false,
        );
        // delta_in[k] = dt_k @ dt_projs_weight[k]^T: (4, rows, Di)
        let mut delta = vec![0.0f32; 4 * rows * di];
        for (k, out) in delta.chunks_mut(rows * di).enumerate() {
            let dt = Mat::strided(&xdbl[k * (r + 2 * n)..], rows, r, xs);
            let w = Mat::new(&self.dt_w.data()[k * di * r..(k + 1) * di * r], di, r);
            matmul::matmul_nt(dt, w, out, di, false);
        }
        // y: (rows, Di)
        let mut y = vec![0.0f32; rows * di];
        let s = scan::CrossScan {
            batch: b,
            h,
            w,
            di,
            n,
            r,
            u: &u,
            delta: &delta,
            xdbl: &xdbl,
            a: &self.a,
            d: self.ds.data(),
            bias: self.dt_b.data(),
        };
        scan::cross_selective_scan(&s, &mut y);
        self.out_norm.inplace(&mut y);
        if self.gated {
            for (yr, pr) in y.chunks_mut(di).zip(proj.chunks(proj_stride)) {
                yr.iter_mut()
                    .zip(&pr[di..])
                    .for_each(|(v, z)| *v *= math::silu(*z));
            }
        }
        self.out_proj.forward_into(&y, rows, resid, true);
    }
}
