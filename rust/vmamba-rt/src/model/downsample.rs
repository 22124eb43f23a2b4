//! Downsampling between stages (docs/model.md §3): width C -> 2C, stride 2.

use rayon::prelude::*;

use super::layers::{Conv2d, Linear, Map, Norm};
use crate::config::DownsampleVersion;
use crate::error::Result;
use crate::weights::Weights;

pub enum Downsample {
    /// Patch merging: 2x2 neighbours concatenated -> LayerNorm(4C) -> Linear(4C -> 2C).
    Merge { norm: Norm, reduction: Linear },
    /// Conv (k2 s2 for v2, k3 s2 p1 for v3) -> LayerNorm(2C).
    Conv { conv: Conv2d, norm: Norm },
}

impl Downsample {
    pub fn load(version: DownsampleVersion, ws: &Weights, prefix: &str, c: usize) -> Result<Self> {
        Ok(match version {
            DownsampleVersion::V1 => Downsample::Merge {
                norm: Norm::load(ws, &format!("{prefix}.norm"), 4 * c)?,
                reduction: Linear::load(ws, &format!("{prefix}.reduction"), 2 * c, 4 * c, false)?,
            },
            DownsampleVersion::V2 | DownsampleVersion::V3 => {
                let (k, pad) = if version == DownsampleVersion::V2 {
                    (2, 0)
                } else {
                    (3, 1)
                };
                Downsample::Conv {
                    conv: Conv2d::load(ws, &format!("{prefix}.1"), c, 2 * c, k, 2, pad)?,
                    norm: Norm::load(ws, &format!("{prefix}.3"), 2 * c)?,
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

    pub fn forward(&self, x: &Map) -> Map {
        match self {
            Downsample::Merge { norm, reduction } => {
                let merged = patch_merge(x);
                let normed = norm.apply(&merged.data);
                Map {
                    data: reduction.forward(&normed, merged.rows()),
                    c: 2 * x.c,
                    ..merged
                }
            }
            Downsample::Conv { conv, norm } => {
                let mut y = conv.forward(x);
                norm.inplace(&mut y.data);
                y
            }
        }
    }
}

/// (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C), zero-padding an odd last row / column.
/// Channel groups in the official order: (0,0), (1,0), (0,1), (1,1) as (row, col) offsets.
fn patch_merge(x: &Map) -> Map {
    let (ho, wo, c) = (x.h.div_ceil(2), x.w.div_ceil(2), x.c);
    let mut data = vec![0.0f32; x.b * ho * wo * 4 * c];
    data.par_chunks_mut(wo * 4 * c)
        .enumerate()
        .for_each(|(row, out)| {
            let (bi, oy) = (row / ho, row % ho);
            for ox in 0..wo {
                for (g, (dy, dx)) in [(0, 0), (1, 0), (0, 1), (1, 1)].into_iter().enumerate() {
                    let (iy, ix) = (2 * oy + dy, 2 * ox + dx);
                    if iy < x.h && ix < x.w {
                        let src = ((bi * x.h + iy) * x.w + ix) * c;
                        out[(ox * 4 + g) * c..][..c].copy_from_slice(&x.data[src..src + c]);
                    }
                }
            }
        });
    Map {
        data,
        b: x.b,
        h: ho,
        w: wo,
        c: 4 * c,
    }
}
