//! Activations applied in place over a buffer.

use rayon::prelude::*;

use super::math;
use super::simd::dispatch;

const CHUNK: usize = 1 << 14;

#[inline(always)]
fn gelu_body(x: &mut [f32]) {
    // A plain loop, not a closure: closures are not compiled with the caller's target features.
    for v in x.iter_mut() {
        *v = math::gelu(*v);
    }
}

dispatch!(fn gelu_chunk(x: &mut [f32]) => gelu_body);

/// In-place exact GELU.
pub fn gelu_inplace(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(gelu_chunk);
}

/// Reference exact GELU through libm's erf.
pub fn gelu_ref(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::randn;

    #[test]
    fn gelu_matches_reference() {
        let x: Vec<f32> = randn(100_000, 9).iter().map(|v| v * 4.0).collect();
        let mut y = x.clone();
        gelu_inplace(&mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!(
                (gelu_ref(*a) - b).abs() <= 1e-6 * a.abs().max(1.0),
                "gelu({a})"
            );
        }
    }
}
