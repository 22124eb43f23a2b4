//! Downsampling between stages (docs/model.md §3): width C -> 2C, stride 2.

use super::layers::{Conv2d, Linear, Map, Norm};
use crate::config::DownsampleVersion;
use crate::error::Result;
use crate::plan::{Builder, DType, Op, Params};
use crate::weights::Weights;

pub enum Downsample {
    /// Patch merging: 2x2 neighbours concatenated -> LayerNorm(4C) -> Linear(4C -> 2C).
    Merge { norm: Norm, reduction: Linear },
    /// Conv (k2 s2 for v2, k3 s2 p1 for v3) -> LayerNorm(2C).
    Conv { conv: Conv2d, norm: Norm },
}

impl Downsample {
    pub fn load(
        version: DownsampleVersion,
        ws: &Weights,
        ps: &mut Params,
        prefix: &str,
        c: usize,
    ) -> Result<Self> {
        Ok(match version {
            DownsampleVersion::V1 => Downsample::Merge {
                norm: Norm::load(ws, ps, &format!("{prefix}.norm"), 4 * c)?,
                reduction: Linear::load(
                    ws,
                    ps,
                    &format!("{prefix}.reduction"),
                    2 * c,
                    4 * c,
                    false,
                )?,
            },
            DownsampleVersion::V2 | DownsampleVersion::V3 => {
                let (k, pad) = if version == DownsampleVersion::V2 {
                    (2, 0)
                } else {
                    (3, 1)
                };
                Downsample::Conv {
                    conv: Conv2d::load(ws, ps, &format!("{prefix}.1"), c, 2 * c, k, 2, pad)?,
                    norm: Norm::load(ws, ps, &format!("{prefix}.3"), 2 * c)?,
                }
            }
        })
    }

    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        match self {
            Downsample::Merge { .. } => Some((h.div_ceil(2), w.div_ceil(2))),
            Downsample::Conv { conv, .. } => conv.out_hw(h, w),
        }
    }

    /// Smallest input side that yields `need` output pixels along it.
    pub fn min_in(&self, need: usize) -> usize {
        match self {
            Downsample::Merge { .. } => 2 * need.max(1) - 1,
            Downsample::Conv { conv, .. } => conv.min_in(need),
        }
    }

    pub fn emit(&self, g: &mut Builder, x: Map) -> Map {
        match self {
            Downsample::Merge { norm, reduction } => {
                let (h, w) = (x.h.div_ceil(2), x.w.div_ceil(2));
                let rows = x.b * h * w;
                let merged = g.work(rows * 4 * x.c, DType::Act);
                g.push(Op::PatchMerge {
                    src: x.buf,
                    dst: merged,
                    b: x.b,
                    h: x.h,
                    w: x.w,
                    c: x.c,
                });
                let normed = norm.emit(g, merged, rows);
                Map {
                    buf: reduction.emit(g, normed, rows),
                    h,
                    w,
                    c: 2 * x.c,
                    ..x
                }
            }
            Downsample::Conv { conv, norm } => {
                let y = conv.emit(g, x);
                norm.emit_map(g, y)
            }
        }
    }
}
