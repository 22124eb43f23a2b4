//! Activations applied in place over a buffer.

use rayon::prelude::*;

use super::math;

const CHUNK: usize = 1 << 14;

/// Exact (erf) GELU, as the reference uses.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// In-place exact GELU.
pub fn gelu_inplace(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = gelu(*v)));
}

/// In-place SiLU over `rows` rows of width `width` taken from a buffer with row stride `stride`.
pub fn silu_rows(x: &mut [f32], stride: usize, width: usize) {
    x.par_chunks_mut(stride * 64).for_each(|c| {
        for row in c.chunks_mut(stride) {
            row[..width].iter_mut().for_each(|v| *v = math::silu(*v));
        }
    });
}
