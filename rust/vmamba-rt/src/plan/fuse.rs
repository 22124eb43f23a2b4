//! Fusion: ops folded into the one before them when the plan is finished, so
//! that every engine runs the same fused plan and none looks ahead on its own.
//! An engine may still lower a fused op to several launches.
//!
//! The rules, each on a pair of neighbouring ops:
//! - a linear op's activation: `Linear` (not accumulating, into a work buffer)
//!   then `Act` over all it wrote → `Linear.act` (the CPU GEMM's epilogue; the
//!   CUDA engine's bias-and-activation launch);
//! - the residual step and the next pre-norm: an accumulating `Linear` then a
//!   `LayerNorm` (with weights) of the sum → `Linear.norm_*` (one CUDA kernel
//!   adds and normalises);
//! - SS2D's gated out norm: `LayerNorm` then a `Pointwise` that multiplies its
//!   whole output, read by nothing else, by a gate → `LayerNorm.gate*`.

use super::{Buffer, Op, Role};
use crate::variant::Act;

/// The ops with every foldable pair folded.
pub(super) fn fuse(ops: Vec<Op>, buffers: &[Buffer]) -> Vec<Op> {
    // The last op that reads or writes each buffer, in the unfused order.
    let mut last = vec![0; buffers.len()];
    for (i, op) in ops.iter().enumerate() {
        for b in op.buffers() {
            last[b] = i;
        }
    }
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let folded = out
            .last_mut()
            .is_some_and(|prev| fold(prev, &op, buffers, |b| last[b] == i));
        if !folded {
            out.push(op);
        }
    }
    out
}

/// Fold `next` into `prev` where a rule says so; true when it was folded.
/// `dies(b)`: buffer `b` is touched by no op after `next`.
fn fold(prev: &mut Op, next: &Op, buffers: &[Buffer], dies: impl Fn(usize) -> bool) -> bool {
    match (prev, next) {
        (
            Op::Linear {
                dst,
                rows,
                out,
                accumulate: false,
                act: act @ Act::None,
                norm_dst: None,
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
        (
            Op::Linear {
                dst,
                rows,
                out,
                accumulate: true,
                norm_dst: norm_dst @ None,
                norm_weight,
                norm_bias,
                ..
            },
            &Op::LayerNorm {
                src,
                dst: normed,
                rows: n_rows,
                c,
                weight: Some(w),
                bias: Some(b),
                gate: None,
                ..
            },
        ) if src == *dst && n_rows == *rows && c == *out => {
            (*norm_dst, *norm_weight, *norm_bias) = (Some(normed), Some(w), Some(b));
            true
        }
        (
            Op::LayerNorm {
                dst,
                rows,
                c,
                gate: gate @ None,
                gate_stride,
                gate_offset,
                gate_act,
                ..
            },
            &Op::Pointwise {
                src,
                src_stride,
                src_offset: 0,
                dst: gated,
                rows: p_rows,
                c: p_c,
                act: Act::None,
                gate: Some(z),
                gate_stride: z_stride,
                gate_offset: z_offset,
                gate_act: z_act,
            },
        ) if src == *dst
            && (p_rows, p_c, src_stride) == (*rows, *c, *c)
            && buffers[src].role == Role::Work
            && dies(src) =>
        {
            *dst = gated;
            (*gate, *gate_stride, *gate_offset, *gate_act) = (Some(z), z_stride, z_offset, z_act);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Builder, DType, Outputs, Plan};
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
            norm_dst: None,
            norm_weight: None,
            norm_bias: None,
        }
    }

    fn norm(src: usize, dst: usize, affine: bool) -> Op {
        Op::LayerNorm {
            src,
            dst,
            rows: 4,
            c: 5,
            weight: affine.then_some(1),
            bias: affine.then_some(2),
            gate: None,
            gate_stride: 0,
            gate_offset: 0,
            gate_act: Act::None,
        }
    }

    fn gated(src: usize, dst: usize, gate: usize) -> Op {
        Op::Pointwise {
            src,
            src_stride: 5,
            src_offset: 0,
            dst,
            rows: 4,
            c: 5,
            act: Act::None,
            gate: Some(gate),
            gate_stride: 10,
            gate_offset: 5,
            gate_act: Act::Silu,
        }
    }

    fn act(buf: usize, len: usize, act: Act) -> Op {
        Op::Act { buf, len, act }
    }

    fn kinds(plan: &Plan) -> Vec<&str> {
        plan.ops.iter().map(|op| op.kind()).collect()
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
        g.push(act(a, 20, Act::Gelu)); // folded
        g.push(linear(a, b, true));
        g.push(act(b, 20, Act::Silu)); // not: b accumulates
        g.push(linear(b, c, false));
        g.push(act(c, 8, Act::Relu)); // not: only part of c
        let out = g.output(vec![1, 20]);
        g.push(linear(c, out, false));
        g.push(act(out, 20, Act::Sigmoid)); // not: an output
        let plan = g.finish(Outputs::Logits);
        assert_eq!(
            kinds(&plan),
            ["linear", "linear", "act", "linear", "act", "linear", "act"]
        );
        assert!(matches!(plan.ops[0], Op::Linear { act: Act::Gelu, .. }));
        // The folded op's buffer lives as long as the op that wrote it.
        assert_eq!((plan.buffers[a].first, plan.buffers[a].last), (0, 1));
    }

    #[test]
    fn a_residual_step_takes_the_norm_after_it() {
        let mut g = Builder::new([1, 3, 2, 2]);
        let (x, h, y, z) = (
            g.work(20, DType::Act),
            g.work(20, DType::Act),
            g.work(20, DType::Act),
            g.work(20, DType::Act),
        );
        g.push(linear(h, x, true));
        g.push(norm(x, y, true)); // folded
        g.push(linear(y, x, true));
        g.push(norm(x, z, false)); // not: a plain norm keeps its own op
        g.push(linear(h, y, false));
        g.push(norm(y, z, true)); // not: the linear op does not accumulate
        let plan = g.finish(Outputs::Logits);
        assert_eq!(
            kinds(&plan),
            ["linear", "linear", "layer_norm", "linear", "layer_norm"]
        );
        assert!(matches!(
            plan.ops[0],
            Op::Linear { dst, norm_dst: Some(n), norm_weight: Some(1), norm_bias: Some(2), .. }
                if dst == x && n == y
        ));
    }

    #[test]
    fn a_norm_takes_the_gate_after_it_when_nothing_else_reads_its_output() {
        let mut g = Builder::new([1, 3, 2, 2]);
        let scan = g.work(20, DType::F32);
        let (y, z, out) = (
            g.work(20, DType::Act),
            g.work(40, DType::Act),
            g.work(20, DType::Act),
        );
        g.push(norm(scan, y, true));
        g.push(gated(y, out, z)); // folded: y dies here
        let (y2, out2) = (g.work(20, DType::Act), g.work(20, DType::Act));
        g.push(norm(out, y2, true));
        g.push(gated(y2, out2, z)); // not: y2 is read again
        g.push(linear(y2, out, false));
        let plan = g.finish(Outputs::Logits);
        assert_eq!(
            kinds(&plan),
            ["layer_norm", "layer_norm", "pointwise", "linear"]
        );
        assert!(matches!(
            plan.ops[0],
            Op::LayerNorm { dst, gate: Some(g), gate_stride: 10, gate_offset: 5, gate_act: Act::Silu, .. }
                if dst == out && g == z
        ));
        // The norm's own output is gone: no op touches it, and it takes no arena space.
        assert_eq!(plan.buffers[y].first, usize::MAX);
        assert!(plan.ops.iter().all(|op| !op.buffers().contains(&y)));
    }

    /// The released plans hold every fused form and no pair left that a rule
    /// would fold.
    #[test]
    fn released_plans_hold_no_foldable_pair() {
        for preset in ["vmamba-tiny-s1l8", "vanilla-vmamba-tiny"] {
            let mut cfg = crate::Config::preset(preset).unwrap();
            cfg.dims = 16;
            cfg.depths = vec![1, 1, 1, 1];
            let model = crate::VMamba::random(cfg, 0).unwrap();
            let plan = model.plan([1, 3, 64, 64], Outputs::Logits).unwrap();
            let count = |f: fn(&Op) -> bool| plan.ops.iter().filter(|op| f(op)).count();
            // s1l8: each block's MLP fc1 carries its GELU (vanilla has no MLP).
            let acts = count(|op| matches!(op, Op::Linear { act, .. } if *act != Act::None));
            assert!(acts >= if preset == "vmamba-tiny-s1l8" { 4 } else { 0 });
            // A residual step carries the norm after it: each s1l8 block's first
            // (then norm2), and the last block's before the classifier's norm.
            let norms = count(|op| {
                matches!(
                    op,
                    Op::Linear {
                        norm_dst: Some(_),
                        ..
                    }
                )
            });
            assert_eq!(norms, if preset == "vmamba-tiny-s1l8" { 5 } else { 1 });
            // vanilla's gated out norm.
            let gates = count(|op| matches!(op, Op::LayerNorm { gate: Some(_), .. }));
            assert_eq!(
                gates,
                if preset == "vanilla-vmamba-tiny" {
                    4
                } else {
                    0
                }
            );
            let mut last = vec![0; plan.buffers.len()];
            for (i, op) in plan.ops.iter().enumerate() {
                op.buffers().into_iter().for_each(|b| last[b] = i);
            }
            for (i, pair) in plan.ops.windows(2).enumerate() {
                let mut prev = pair[0].clone();
                assert!(
                    !fold(&mut prev, &pair[1], &plan.buffers, |b| last[b] == i + 1),
                    "{preset}: {pair:?}"
                );
            }
        }
    }
}
