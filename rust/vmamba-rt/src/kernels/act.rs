//! Activations applied in place over a buffer.

use rayon::prelude::*;

use super::math;
use super::simd::{dispatch_fma, Fma, Separate};
use crate::variant::Act;

/// `act(v)`.
#[inline(always)]
pub fn apply(act: Act, v: f32) -> f32 {
    apply_with::<Separate>(act, v)
}

/// `act(v)` with the multiply-adds of `F` (where the activation has any).
#[inline(always)]
pub(crate) fn apply_with<F: Fma>(act: Act, v: f32) -> f32 {
    match act {
        Act::None => v,
        Act::Silu => math::silu(v),
        Act::Gelu => math::gelu_with::<F>(v),
        // NaN stays NaN, as in PyTorch.
        Act::Relu => {
            if v < 0.0 {
                0.0
            } else {
                v
            }
        }
        Act::Sigmoid => 1.0 / (1.0 + math::exp(-v)),
    }
}

/// `x = act(x)` over a slice, one thread (inlined into callers' SIMD copies).
/// One loop per kind: `apply` of a constant kind folds into straight vector
/// code, where a kind read inside the loop would branch per element. Plain
/// loops, not closures: closures are not compiled with the caller's target
/// features.
#[inline(always)]
pub(super) fn act_body<F: Fma>(x: &mut [f32], act: Act) {
    macro_rules! each {
        ($kind:expr) => {
            for v in x.iter_mut() {
                *v = apply_with::<F>($kind, *v);
            }
        };
    }
    match act {
        Act::None => {}
        Act::Silu => each!(Act::Silu),
        Act::Gelu => each!(Act::Gelu),
        Act::Relu => each!(Act::Relu),
        Act::Sigmoid => each!(Act::Sigmoid),
    }
}

dispatch_fma!(fn act_chunk(x: &mut [f32], act: Act) => act_body);

/// `x = act(x)` in place.
pub fn act_inplace(x: &mut [f32], act: Act) {
    if act != Act::None {
        x.par_chunks_mut(CHUNK).for_each(|c| act_chunk(c, act));
    }
}

/// y (rows, c) *= act(gate), the gate of row i read at `z[i * stride + offset..][..c]`:
/// SS2D's gated output (a `Pointwise` op's gate, or a gated `LayerNorm`'s).
pub fn gate_rows(y: &mut [f32], c: usize, z: &[f32], stride: usize, offset: usize, act: Act) {
    y.par_chunks_mut(c).enumerate().for_each(|(i, yr)| {
        let zr = &z[i * stride + offset..][..c];
        yr.iter_mut()
            .zip(zr)
            .for_each(|(o, g)| *o *= apply(act, *g));
    });
}

/// Reference activations in f64 (libm's erf for GELU).
pub fn act_ref(act: Act, v: f32) -> f32 {
    let x = v as f64;
    match act {
        Act::None => v,
        Act::Silu => (x / (1.0 + (-x).exp())) as f32,
        Act::Gelu => gelu_ref(v),
        Act::Relu => v.max(0.0),
        Act::Sigmoid => (1.0 / (1.0 + (-x).exp())) as f32,
    }
}

const CHUNK: usize = 1 << 14;

/// Reference exact GELU through libm's erf.
pub fn gelu_ref(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::randn;

    #[test]
    fn every_activation_matches_its_reference() {
        let x: Vec<f32> = randn(10_000, 3).iter().map(|v| v * 6.0).collect();
        for act in [Act::Silu, Act::Gelu, Act::Relu, Act::Sigmoid] {
            let mut y = x.clone();
            act_inplace(&mut y, act);
            for (a, b) in x.iter().zip(&y) {
                assert!(
                    (act_ref(act, *a) - b).abs() <= 1e-6 * a.abs().max(1.0),
                    "{act:?}({a})"
                );
            }
        }
    }

    #[test]
    fn gelu_matches_reference() {
        let x: Vec<f32> = randn(100_000, 9).iter().map(|v| v * 4.0).collect();
        let mut y = x.clone();
        act_inplace(&mut y, Act::Gelu);
        for (a, b) in x.iter().zip(&y) {
            assert!(
                (gelu_ref(*a) - b).abs() <= 1e-6 * a.abs().max(1.0),
                "gelu({a})"
            );
        }
    }
}
