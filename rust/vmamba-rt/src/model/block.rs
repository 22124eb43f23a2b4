//! The VSS block (docs/model.md §4): pre-norm residual SS2D, then an optional MLP.

use super::layers::{pointwise, Linear, Map, Norm};
use super::ss2d::Ss2d;
use crate::config::Config;
use crate::error::Result;
use crate::plan::{Builder, Op, Params};
use crate::variant::Act;
use crate::weights::Weights;

pub struct VssBlock {
    /// norm + SS2D, present when ssm_ratio > 0.
    ssm: Option<(Norm, Ss2d)>,
    /// norm2 + fc1 + fc2, present when mlp_ratio > 0.
    mlp: Option<(Norm, Linear, Linear)>,
    /// The MLP's activation.
    act: Act,
    /// A gated MLP: fc1 yields [x, z], fc2 reads x * act(z).
    gated: bool,
}

impl VssBlock {
    pub fn load(cfg: &Config, ws: &Weights, ps: &mut Params, p: &str, c: usize) -> Result<Self> {
        let ssm = if cfg.ssm_ratio > 0.0 {
            Some((
                Norm::load(ws, ps, &format!("{p}.norm"), c)?,
                Ss2d::load(cfg, ws, ps, &format!("{p}.op"), c)?,
            ))
        } else {
            None
        };
        let hidden = cfg.mlp_hidden(c);
        let mlp = if hidden > 0 {
            Some((
                Norm::load(ws, ps, &format!("{p}.norm2"), c)?,
                Linear::load(
                    ws,
                    ps,
                    &format!("{p}.mlp.fc1"),
                    if cfg.gmlp { 2 * hidden } else { hidden },
                    c,
                    true,
                )?,
                Linear::load(ws, ps, &format!("{p}.mlp.fc2"), c, hidden, true)?,
            ))
        } else {
            None
        };
        Ok(VssBlock {
            ssm,
            mlp,
            act: cfg.mlp_act_layer,
            gated: cfg.gmlp,
        })
    }

    /// x (B, H, W, C) updated in place.
    pub fn emit(&self, g: &mut Builder, x: Map) {
        let rows = x.rows();
        if let Some((norm, op)) = &self.ssm {
            // x = x + SS2D(norm(x))
            let normed = norm.emit_map(g, x);
            op.emit_add(g, normed, x.buf);
        }
        if let Some((norm2, fc1, fc2)) = &self.mlp {
            // x = x + fc2(act(fc1(norm2(x)))), or with the gated MLP
            // x = x + fc2(a * act(z)) where [a, z] = fc1(norm2(x))
            let normed = norm2.emit(g, x.buf, rows);
            let mut hidden = fc1.emit(g, normed, rows);
            if self.gated {
                let h = fc1.out / 2;
                let gate = Some((hidden, fc1.out, h, self.act));
                hidden = pointwise(g, (hidden, fc1.out, 0), rows, h, Act::None, gate);
            } else {
                g.push(Op::Act {
                    buf: hidden,
                    len: rows * fc1.out,
                    act: self.act,
                });
            }
            fc2.emit_into(g, hidden, rows, x.buf, true);
        }
    }
}
