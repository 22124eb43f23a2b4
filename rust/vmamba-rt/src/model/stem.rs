//! Patch embedding (docs/model.md §2): the image to stride-4 features of width C0.

use super::layers::{Conv2d, Map, Norm};
use crate::config::{Config, StemVersion};
use crate::error::Result;
use crate::plan::{Builder, Op, Params};
use crate::variant::Act;
use crate::weights::Weights;

/// The stem; its LayerNorms are absent with `patch_norm` off.
pub enum Stem {
    /// Conv(k4, s4) -> LayerNorm.
    V1 { conv: Conv2d, norm: Option<Norm> },
    /// Conv(k3, s2) -> LayerNorm -> GELU -> Conv(k3, s2) -> LayerNorm.
    V2 {
        conv1: Conv2d,
        norm1: Option<Norm>,
        conv2: Conv2d,
        norm2: Option<Norm>,
    },
}

impl Stem {
    pub fn load(cfg: &Config, ws: &Weights, ps: &mut Params) -> Result<Self> {
        let (cin, c0) = (cfg.in_chans, cfg.dims);
        let norm = |ps: &mut Params, name: &str, c: usize| -> Result<Option<Norm>> {
            Ok(if cfg.patch_norm {
                Some(Norm::load(ws, ps, name, c)?)
            } else {
                None
            })
        };
        Ok(match cfg.patchembed_version {
            StemVersion::V1 => {
                let p = cfg.patch_size;
                Stem::V1 {
                    conv: Conv2d::load(ws, ps, "patch_embed.0", cin, c0, p, p, 0)?,
                    norm: norm(ps, "patch_embed.2", c0)?,
                }
            }
            StemVersion::V2 => Stem::V2 {
                conv1: Conv2d::load(ws, ps, "patch_embed.0", cin, c0 / 2, 3, 2, 1)?,
                norm1: norm(ps, "patch_embed.2", c0 / 2)?,
                conv2: Conv2d::load(ws, ps, "patch_embed.5", c0 / 2, c0, 3, 2, 1)?,
                norm2: norm(ps, "patch_embed.7", c0)?,
            },
        })
    }

    /// Output size for an input of h x w, or `None` when the input is too small.
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        match self {
            Stem::V1 { conv, .. } => conv.out_hw(h, w),
            Stem::V2 { conv1, conv2, .. } => {
                conv1.out_hw(h, w).and_then(|(h, w)| conv2.out_hw(h, w))
            }
        }
    }

    /// Smallest input side that yields `need` output pixels along it.
    pub fn min_in(&self, need: usize) -> usize {
        match self {
            Stem::V1 { conv, .. } => conv.min_in(need),
            Stem::V2 { conv1, conv2, .. } => conv1.min_in(conv2.min_in(need)),
        }
    }

    pub fn emit(&self, g: &mut Builder, x: Map) -> Map {
        let norm = |g: &mut Builder, norm: &Option<Norm>, y: Map| match norm {
            Some(n) => n.emit_map(g, y),
            None => y,
        };
        match self {
            Stem::V1 { conv, norm: n } => {
                let y = conv.emit(g, x);
                norm(g, n, y)
            }
            Stem::V2 {
                conv1,
                norm1,
                conv2,
                norm2,
            } => {
                let y = conv1.emit(g, x);
                let y = norm(g, norm1, y);
                g.push(Op::Act {
                    buf: y.buf,
                    len: y.rows() * y.c,
                    act: Act::Gelu,
                });
                let y = conv2.emit(g, y);
                norm(g, norm2, y)
            }
        }
    }
}
