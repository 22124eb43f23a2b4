//! The VSS block (docs/model.md §4): pre-norm residual SS2D, then an optional MLP.

use super::layers::{Linear, Map, Norm};
use super::ss2d::Ss2d;
use crate::config::Config;
use crate::error::Result;
use crate::kernels::act;
use crate::weights::Weights;

pub struct VssBlock {
    /// norm + SS2D, present when ssm_ratio > 0.
    ssm: Option<(Norm, Ss2d)>,
    /// norm2 + fc1 + fc2, present when mlp_ratio > 0.
    mlp: Option<(Norm, Linear, Linear)>,
}

impl VssBlock {
    pub fn load(cfg: &Config, ws: &Weights, p: &str, c: usize) -> Result<Self> {
        let ssm = if cfg.ssm_ratio > 0.0 {
            Some((
                Norm::load(ws, &format!("{p}.norm"), c)?,
                Ss2d::load(cfg, ws, &format!("{p}.op"), c)?,
            ))
        } else {
            None
        };
        let hidden = cfg.mlp_hidden(c);
        let mlp = if hidden > 0 {
            Some((
                Norm::load(ws, &format!("{p}.norm2"), c)?,
                Linear::load(ws, &format!("{p}.mlp.fc1"), hidden, c, true)?,
                Linear::load(ws, &format!("{p}.mlp.fc2"), c, hidden, true)?,
            ))
        } else {
            None
        };
        Ok(VssBlock { ssm, mlp })
    }

    /// x (B, H, W, C) updated in place.
    pub fn forward(&self, x: &mut Map) {
        let rows = x.rows();
        if let Some((norm, op)) = &self.ssm {
            // x = x + SS2D(norm(x))
            let normed = norm.apply(&x.data);
            op.forward_add(&normed, (x.b, x.h, x.w), &mut x.data);
        }
        if let Some((norm2, fc1, fc2)) = &self.mlp {
            // x = x + fc2(GELU(fc1(norm2(x))))
            let normed = norm2.apply(&x.data);
            let mut hidden = fc1.forward(&normed, rows);
            act::gelu_inplace(&mut hidden);
            fc2.forward_into(&hidden, rows, &mut x.data, true);
        }
    }
}
