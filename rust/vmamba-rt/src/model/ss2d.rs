//! SS2D, the 2-D selective scan (docs/model.md §5).

use super::layers::{Linear, Map, Norm};
use crate::config::{Config, ForwardType};
use crate::error::Result;
use crate::plan::{BufId, Builder, DType, Op, ParamId, Params};
use crate::weights::{Param, Weights};

pub struct Ss2d {
    /// C -> Di (v05_noz) or C -> 2Di as [x, z] (v0).
    in_proj: Linear,
    /// Depthwise kernel re-laid tap-major: (k*k, Di).
    conv_w: ParamId,
    conv_b: Option<ParamId>,
    conv_k: usize,
    /// (4, R+2N, Di) read as one Di -> 4*(R+2N) projection.
    x_proj: Linear,
    /// (4, Di, R).
    dt_w: ParamId,
    /// (4*Di).
    dt_b: ParamId,
    /// A = -exp(A_logs): (4*Di, N).
    a: ParamId,
    /// (4*Di).
    ds: ParamId,
    out_norm: Norm,
    /// Di -> C.
    out_proj: Linear,
    gated: bool,
    di: usize,
    n: usize,
    r: usize,
}

impl Ss2d {
    pub fn load(cfg: &Config, ws: &Weights, ps: &mut Params, p: &str, c: usize) -> Result<Self> {
        let (di, n, r, k) = (
            cfg.d_inner(c),
            cfg.ssm_d_state,
            cfg.dt_rank(c),
            cfg.ssm_conv,
        );
        let gated = cfg.forward_type == ForwardType::V0;
        let in_proj = Linear::load(
            ws,
            ps,
            &format!("{p}.in_proj"),
            if gated { 2 * di } else { di },
            c,
            false,
        )?;
        let mut f32_param = |name: &str, param: Param| ps.add(name, param, DType::F32);
        let name = format!("{p}.conv2d.weight");
        let w = ws.get(&name, &[di, 1, k, k])?;
        let mut taps = vec![0.0f32; di * k * k];
        for (ch, row) in w.data().chunks(k * k).enumerate() {
            for (t, v) in row.iter().enumerate() {
                taps[t * di + ch] = *v;
            }
        }
        let conv_w = f32_param(&name, Param::owned(taps, vec![k * k, di]));
        let conv_b = if cfg.ssm_conv_bias {
            let name = format!("{p}.conv2d.bias");
            Some(f32_param(&name, ws.get(&name, &[di])?))
        } else {
            None
        };
        let name = format!("{p}.dt_projs_weight");
        let dt_w = f32_param(&name, ws.get(&name, &[4, di, r])?);
        let name = format!("{p}.dt_projs_bias");
        let dt_b = f32_param(&name, ws.get(&name, &[4, di])?);
        let name = format!("{p}.A_logs");
        let a_logs = ws.get(&name, &[4 * di, n])?;
        let a = a_logs.data().iter().map(|v| -v.exp()).collect();
        let a = f32_param(&name, Param::owned(a, vec![4 * di, n]));
        let name = format!("{p}.Ds");
        let ds = f32_param(&name, ws.get(&name, &[4 * di])?);
        let name = format!("{p}.x_proj_weight");
        let x_w = ws.get(&name, &[4, r + 2 * n, di])?;
        let x_w = ps.add(&name, x_w, DType::Act);
        Ok(Ss2d {
            in_proj,
            conv_w,
            conv_b,
            conv_k: k,
            x_proj: Linear::from_weight(x_w, 4 * (r + 2 * n), di),
            dt_w,
            dt_b,
            a,
            ds,
            out_norm: Norm::load(ws, ps, &format!("{p}.out_norm"), di)?,
            out_proj: Linear::load(ws, ps, &format!("{p}.out_proj"), c, di, false)?,
            gated,
            di,
            n,
            r,
        })
    }

    /// `resid += SS2D(x)`, with x the normed input map.
    pub fn emit_add(&self, g: &mut Builder, x: Map, resid: BufId) {
        let (rows, di) = (x.rows(), self.di);
        // [x | z]: (rows, Di) or (rows, 2Di)
        let proj = self.in_proj.emit(g, x.buf, rows);
        // u = SiLU(dwconv(x)): (rows, Di)
        let u = g.work(rows * di, DType::Act);
        g.push(Op::DwConvSilu {
            src: proj,
            src_stride: self.in_proj.out,
            dst: u,
            b: x.b,
            h: x.h,
            w: x.w,
            c: di,
            k: self.conv_k,
            weight: self.conv_w,
            bias: self.conv_b,
        });
        // x_dbl for all four directions at once, pixel order: (rows, 4*(R+2N))
        let xdbl = self.x_proj.emit(g, u, rows);
        // y: (rows, Di), f32
        let y = g.work(rows * di, DType::F32);
        g.push(Op::CrossScan {
            u,
            xdbl,
            dst: y,
            b: x.b,
            h: x.h,
            w: x.w,
            di,
            n: self.n,
            r: self.r,
            dt_weight: self.dt_w,
            dt_bias: self.dt_b,
            a: self.a,
            d: self.ds,
        });
        // out_norm(y), times SiLU(z) for the gated v0 block
        let gate = self.gated.then_some((proj, self.in_proj.out, di));
        let yn = self.out_norm.emit_out(g, y, rows, gate);
        self.out_proj.emit_into(g, yn, rows, resid, true);
    }
}
