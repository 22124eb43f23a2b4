//! The sizes an op reads, checked: what `exec::run_op` asks of ops that come
//! from outside a plan before any kernel sees them.

use super::{BufId, Op, ParamId, ParamNeed};
use crate::memory::{elements, extent};

impl Op {
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
                norm_dst,
                ..
            } => {
                nonzero(&[("inp", inp), ("out", out)])?;
                let n = prod(&[rows, out])?;
                let mut v = vec![(src, prod(&[rows, inp])?), (dst, n)];
                v.extend(norm_dst.map(|d| (d, n)));
                v
            }
            Act { buf, len, .. } => vec![(buf, len)],
            AddParam { buf, b, len, .. } => {
                nonzero(&[("len", len)])?;
                vec![(buf, prod(&[b, len])?)]
            }
            LayerNorm {
                src,
                dst,
                rows,
                c,
                gate,
                gate_stride,
                gate_offset,
                ..
            } => {
                nonzero(&[("c", c)])?;
                let n = prod(&[rows, c])?;
                let mut v = vec![(src, n), (dst, n)];
                if let Some(g) = gate {
                    v.push((g, strided(rows, gate_stride, gate_offset, c)?));
                }
                v
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
                norm_dst,
                norm_weight,
                norm_bias,
                ..
            } => {
                v.push((weight, ParamNeed::Linear { out, inp }));
                v.extend(bias.map(|b| (b, ParamNeed::Values(out))));
                if norm_dst.is_some() {
                    // The fused norm has its weights (as the fusion makes it).
                    for (name, p) in [("norm_weight", norm_weight), ("norm_bias", norm_bias)] {
                        let p = p.ok_or_else(|| format!("{kind} op: norm_dst without {name}"))?;
                        v.push((p, ParamNeed::Values(out)));
                    }
                }
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
}
