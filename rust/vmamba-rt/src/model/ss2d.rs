//! SS2D, the 2-D selective scan (docs/model.md §5), in every form the official
//! `forward_type` selects (docs/model.md §9).

use super::layers::{pointwise, Linear, Map, Norm};
use crate::config::Config;
use crate::error::Result;
use crate::plan::{BufId, Builder, DType, Op, ParamId, Params};
use crate::variant::{Act, OutNorm, ScanMode, ScanPath, Ss2dForm};
use crate::weights::{Param, Weights};

/// The parameters of one scan over K directions.
struct Scan {
    /// How each direction walks the map.
    paths: Vec<ScanPath>,
    /// Di -> K*(R+2N): dt, B, C of every direction at once.
    x_proj: Linear,
    /// (K, Di, R).
    dt_w: ParamId,
    /// (K*Di).
    dt_b: ParamId,
    /// A = -exp(A_logs): (K*Di, N).
    a: ParamId,
    /// (K*Di).
    ds: ParamId,
}

/// SS2D's output norm and its parameters.
enum OutNormLayer {
    LayerNorm(Norm),
    Identity,
    /// Depthwise 3x3 taps, tap-major (9, Di).
    DwConv3(ParamId),
    LayerNormDwConv3(Norm, ParamId),
    Softmax,
    Sigmoid,
}

pub struct Ss2d {
    form: Ss2dForm,
    /// The activation after the convolution (and on the gate).
    act: Act,
    /// C -> Di, or C -> 2Di as [x, z] when gated.
    in_proj: Linear,
    /// Depthwise taps (k*k, Di), bias, k.
    conv: Option<(ParamId, Option<ParamId>, usize)>,
    /// One scan of four directions, or the row then column scans of `cascade2d`.
    scans: Vec<Scan>,
    out_norm: OutNormLayer,
    /// Di -> C.
    out_proj: Linear,
    di: usize,
    n: usize,
    r: usize,
}

/// act(depthwise k x k conv of `src` (rows `stride` apart) + bias), same padding,
/// over the pixels of `map`: a new (rows, c) buffer.
fn dwconv(
    g: &mut Builder,
    (src, stride): (BufId, usize),
    map: Map,
    c: usize,
    (weight, bias, k): (ParamId, Option<ParamId>, usize),
    act: Act,
) -> BufId {
    let dst = g.work(map.rows() * c, DType::Act);
    g.push(Op::DwConvAct {
        src,
        src_stride: stride,
        dst,
        b: map.b,
        h: map.h,
        w: map.w,
        c,
        k,
        weight,
        bias,
        act,
    });
    dst
}

/// (B, H, W, C) -> a new (B, W, H, C) buffer of `dtype`.
fn transpose(
    g: &mut Builder,
    src: BufId,
    (b, h, w, c): (usize, usize, usize, usize),
    dtype: DType,
) -> BufId {
    let dst = g.work(b * h * w * c, dtype);
    g.push(Op::TransposeHw {
        src,
        dst,
        b,
        h,
        w,
        c,
    });
    dst
}

/// Depthwise conv weight (C, 1, k, k) re-laid tap-major: (k*k, C).
fn taps(w: &Param, c: usize, k: usize) -> Param {
    let mut t = vec![0.0f32; c * k * k];
    for (ch, row) in w.data().chunks(k * k).enumerate() {
        for (i, v) in row.iter().enumerate() {
            t[i * c + ch] = *v;
        }
    }
    Param::owned(t, vec![k * k, c])
}

impl Ss2d {
    pub fn load(cfg: &Config, ws: &Weights, ps: &mut Params, p: &str, c: usize) -> Result<Self> {
        let form = cfg.ss2d_form()?;
        let (di, n, r) = (cfg.d_inner(c), cfg.ssm_d_state, cfg.dt_rank(c));
        let in_proj = Linear::load(
            ws,
            ps,
            &format!("{p}.in_proj"),
            if form.gated { 2 * di } else { di },
            c,
            false,
        )?;
        let conv = match cfg.dwconv() {
            Some(k) => {
                let name = format!("{p}.conv2d.weight");
                let w = taps(&ws.get(&name, &[di, 1, k, k])?, di, k);
                let w = ps.add(&name, w, DType::F32);
                let b = if cfg.dwconv_bias() {
                    let name = format!("{p}.conv2d.bias");
                    Some(ps.add(&name, ws.get(&name, &[di])?, DType::F32))
                } else {
                    None
                };
                Some((w, b, k))
            }
            None => None,
        };
        // The four directions' parameters, whole or split in two for cascade2d.
        let name = |s: &str| format!("{p}.{s}");
        let x_w = ws.get(&name("x_proj_weight"), &[4, r + 2 * n, di])?;
        let dt_w = ws.get(&name("dt_projs_weight"), &[4, di, r])?;
        let dt_b = ws.get(&name("dt_projs_bias"), &[4, di])?;
        let a_logs = ws.get(&name("A_logs"), &[4 * di, n])?;
        let ds = ws.get(&name("Ds"), &[4 * di])?;
        let groups: Vec<(std::ops::Range<usize>, Vec<ScanPath>)> = match form.scan {
            ScanMode::Paths(paths) => vec![(0..4, paths.to_vec())],
            ScanMode::Cascade => {
                let pair = vec![ScanPath::Raster, ScanPath::RasterRevUnflipped];
                vec![(0..2, pair.clone()), (2..4, pair)]
            }
        };
        let mut scans = Vec::new();
        for (dirs, paths) in groups {
            let k = dirs.len();
            // Directions `dirs` of a tensor whose first axis is the direction, with
            // its label: the tensor itself when that is all four.
            let part = |t: &Param, tail: &[usize], what: &str| {
                if k == 4 {
                    return (name(what), t.clone());
                }
                let per: usize = tail.iter().product();
                let data = t.data()[dirs.start * per..dirs.end * per].to_vec();
                let label = format!("{}[{}:{}]", name(what), dirs.start, dirs.end);
                (label, Param::owned(data, [&[k][..], tail].concat()))
            };
            let mut add = |(label, t): (String, Param), dtype| ps.add(&label, t, dtype);
            let dt_w = add(part(&dt_w, &[di, r], "dt_projs_weight"), DType::F32);
            let dt_b = add(part(&dt_b, &[di], "dt_projs_bias"), DType::F32);
            let a = Param::owned(
                a_logs.data().iter().map(|v| -v.exp()).collect(),
                vec![4, di, n],
            );
            let a = add(part(&a, &[di, n], "A_logs"), DType::F32);
            let ds = add(part(&ds, &[di], "Ds"), DType::F32);
            let (label, x_w) = part(&x_w, &[r + 2 * n, di], "x_proj_weight");
            let x_proj = ps.add_linear(&label, x_w, k * (r + 2 * n), di);
            scans.push(Scan {
                paths,
                x_proj: Linear::from_weight(x_proj, k * (r + 2 * n), di),
                dt_w,
                dt_b,
                a,
                ds,
            });
        }
        let mut dwconv3 = |key: &str| -> Result<ParamId> {
            let name = format!("{p}.out_norm.{key}");
            let w = taps(&ws.get(&name, &[di, 1, 3, 3])?, di, 3);
            Ok(ps.add(&name, w, DType::F32))
        };
        let out_norm = match form.out_norm {
            OutNorm::LayerNorm => {
                OutNormLayer::LayerNorm(Norm::load(ws, ps, &name("out_norm"), di)?)
            }
            OutNorm::Identity => OutNormLayer::Identity,
            OutNorm::DwConv3 => OutNormLayer::DwConv3(dwconv3("1.weight")?),
            OutNorm::LayerNormDwConv3 => {
                let conv = dwconv3("2.weight")?;
                OutNormLayer::LayerNormDwConv3(Norm::load(ws, ps, &name("out_norm.0"), di)?, conv)
            }
            OutNorm::Softmax => OutNormLayer::Softmax,
            OutNorm::Sigmoid => OutNormLayer::Sigmoid,
        };
        Ok(Ss2d {
            form,
            act: cfg.ssm_act(),
            in_proj,
            conv,
            scans,
            out_norm,
            out_proj: Linear::load(ws, ps, &name("out_proj"), c, di, false)?,
            di,
            n,
            r,
        })
    }

    /// A scan of `x` (a map of Di channels) with `s`'s directions: y (rows, Di), f32.
    fn scan(&self, g: &mut Builder, s: &Scan, x: Map) -> BufId {
        let xdbl = s.x_proj.emit(g, x.buf, x.rows());
        let y = g.work(x.rows() * self.di, DType::F32);
        g.push(Op::CrossScan {
            u: x.buf,
            xdbl,
            dst: y,
            b: x.b,
            h: x.h,
            w: x.w,
            di: self.di,
            n: self.n,
            r: self.r,
            paths: s.paths.clone(),
            dt_weight: s.dt_w,
            dt_bias: s.dt_b,
            a: s.a,
            d: s.ds,
        });
        y
    }

    /// `cascade2d`: x normed, scanned along each row (both ways, the backward
    /// output summed unflipped), normed, then scanned the same way along each
    /// column. y (rows, Di), f32.
    fn cascade(&self, g: &mut Builder, u: Map) -> BufId {
        let (rows, di) = (u.rows(), self.di);
        // Rows: B*H sequences of W pixels.
        let xn = Norm::emit_plain(g, u.buf, rows, di);
        let row_seqs = Map {
            buf: xn,
            b: u.b * u.h,
            h: 1,
            ..u
        };
        let y_row = self.scan(g, &self.scans[0], row_seqs);
        let y_row = Norm::emit_plain(g, y_row, rows, di);
        // Columns: the map transposed, B*W sequences of H pixels, transposed back.
        let t = transpose(g, y_row, (u.b, u.h, u.w, di), DType::Act);
        let col_seqs = Map {
            buf: t,
            b: u.b * u.w,
            h: 1,
            w: u.h,
            c: di,
        };
        let y_col = self.scan(g, &self.scans[1], col_seqs);
        transpose(g, y_col, (u.b, u.w, u.h, di), DType::F32)
    }

    /// `resid += SS2D(x)`, with x the normed input map.
    pub fn emit_add(&self, g: &mut Builder, x: Map, resid: BufId) {
        let (rows, di) = (x.rows(), self.di);
        // [x | z]: (rows, Di) or (rows, 2Di)
        let proj = self.in_proj.emit(g, x.buf, rows);
        let width = self.in_proj.out;
        // u = act(dwconv(x)), or act(x) without the convolution: (rows, Di)
        let u = match self.conv {
            Some(conv) => dwconv(g, (proj, width), x, di, conv, self.act),
            None => pointwise(g, (proj, width, 0), rows, di, self.act, None),
        };
        let u = Map { buf: u, c: di, ..x };
        // y: (rows, Di), f32
        let y = match self.form.scan {
            ScanMode::Paths(_) => self.scan(g, &self.scans[0], u),
            ScanMode::Cascade => self.cascade(g, u),
        };
        let mut y = self.emit_out_norm(g, y, u);
        if self.form.out_gelu {
            g.push(Op::Act {
                buf: y,
                len: rows * di,
                act: Act::Gelu,
            });
        }
        if self.form.gated {
            // y * act(z)
            let gate_act = if self.form.gate_act {
                self.act
            } else {
                Act::None
            };
            y = pointwise(
                g,
                (y, di, 0),
                rows,
                di,
                Act::None,
                Some((proj, width, di, gate_act)),
            );
        }
        self.out_proj.emit_into(g, y, rows, resid, true);
    }

    /// The output norm of y (rows, Di), f32, into a new buffer.
    fn emit_out_norm(&self, g: &mut Builder, y: BufId, map: Map) -> BufId {
        let (rows, di) = (map.rows(), self.di);
        let dwconv3 = |g: &mut Builder, src: BufId, w: ParamId| {
            dwconv(g, (src, di), map, di, (w, None, 3), Act::None)
        };
        match &self.out_norm {
            OutNormLayer::LayerNorm(norm) => norm.emit(g, y, rows),
            OutNormLayer::Identity => pointwise(g, (y, di, 0), rows, di, Act::None, None),
            OutNormLayer::Sigmoid => pointwise(g, (y, di, 0), rows, di, Act::Sigmoid, None),
            OutNormLayer::DwConv3(w) => dwconv3(g, y, *w),
            OutNormLayer::LayerNormDwConv3(norm, w) => {
                let normed = norm.emit(g, y, rows);
                dwconv3(g, normed, *w)
            }
            OutNormLayer::Softmax => {
                let dst = g.work(rows * di, DType::Act);
                g.push(Op::SpatialSoftmax {
                    src: y,
                    dst,
                    b: map.b,
                    hw: map.h * map.w,
                    c: di,
                });
                dst
            }
        }
    }
}
