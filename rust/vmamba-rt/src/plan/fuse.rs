//! Fusion: an op folded into the one before it as the model pushes it, so that
//! every engine runs the same fused plan and none looks ahead on its own.
//!
//! One rule today: a linear op's activation. `Linear` (not accumulating, into
//! a work buffer) followed by `Act` over all of what it wrote becomes one
//! `Linear` whose `act` applies to each tile of the product (the CPU GEMM's
//! epilogue; the CUDA engine's bias-and-activation launch).

use super::{Buffer, Op, Role};
use crate::variant::Act;

/// Fold `next` into `prev` where a rule says so; true when it was folded (and
/// must not be pushed).
pub(super) fn fold(prev: &mut Op, next: &Op, buffers: &[Buffer]) -> bool {
    match (prev, next) {
        (
            Op::Linear {
                dst,
                rows,
                out,
                accumulate: false,
                act: act @ Act::None,
                ..
            },
            &Op::Act {
                buf,
                len,
                act: then,
            },
        ) if buf == *dst
            && Some(len) == rows.checked_mul(*out)
            && buffers[buf].role == Role::Work =>
        {
            *act = then;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Builder, DType, Outputs};
    use super::*;

    fn linear(src: usize, dst: usize, accumulate: bool) -> Op {
        Op::Linear {
            src,
            dst,
            rows: 4,
            inp: 3,
            out: 5,
            weight: 0,
            bias: None,
            accumulate,
            act: Act::None,
        }
    }

    #[test]
    fn an_activation_after_a_linear_op_is_folded_into_it() {
        let mut g = Builder::new([1, 3, 2, 2]);
        let (a, b, c) = (
            g.work(20, DType::Act),
            g.work(20, DType::Act),
            g.work(20, DType::Act),
        );
        g.push(linear(0, a, false));
        g.push(Op::Act {
            buf: a,
            len: 20,
            act: Act::Gelu,
        }); // folded
        g.push(linear(a, b, true));
        g.push(Op::Act {
            buf: b,
            len: 20,
            act: Act::Silu,
        }); // not: b accumulates
        g.push(linear(b, c, false));
        g.push(Op::Act {
            buf: c,
            len: 8,
            act: Act::Relu,
        }); // not: only part of c
        let out = g.output(vec![1, 20]);
        g.push(linear(c, out, false));
        g.push(Op::Act {
            buf: out,
            len: 20,
            act: Act::Sigmoid,
        }); // not: an output
        let plan = g.finish(Outputs::Logits);
        let kinds: Vec<&str> = plan.ops.iter().map(|op| op.kind()).collect();
        assert_eq!(
            kinds,
            ["linear", "linear", "act", "linear", "act", "linear", "act"]
        );
        assert!(matches!(plan.ops[0], Op::Linear { act: Act::Gelu, .. }));
        // The folded op's buffer lives as long as the op that wrote it.
        assert_eq!((plan.buffers[a].first, plan.buffers[a].last), (0, 1));
    }

    /// No plan of the released models holds an activation left unfolded after
    /// the GEMM it could join.
    #[test]
    fn released_plans_hold_no_foldable_pair() {
        for preset in ["vmamba-tiny-s1l8", "vanilla-vmamba-tiny"] {
            let mut cfg = crate::Config::preset(preset).unwrap();
            cfg.dims = 16;
            cfg.depths = vec![1, 1, 1, 1];
            let model = crate::VMamba::random(cfg, 0).unwrap();
            let plan = model.plan([1, 3, 64, 64], Outputs::Logits).unwrap();
            let fused = plan
                .ops
                .iter()
                .filter(|op| matches!(op, Op::Linear { act, .. } if *act != Act::None));
            // s1l8: each block's MLP fc1 carries its GELU (vanilla has no MLP).
            let want = if preset == "vmamba-tiny-s1l8" { 4 } else { 0 };
            assert!(fused.count() >= want, "{preset}");
            for pair in plan.ops.windows(2) {
                let mut prev = pair[0].clone();
                assert!(
                    !fold(&mut prev, &pair[1], &plan.buffers),
                    "{preset}: {pair:?}"
                );
            }
        }
    }
}
