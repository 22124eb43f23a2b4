//! Reductions over the pixels of a channel-last map, channel by channel: the
//! classifier's mean pool, and the softmax over positions of the `_onsoftmax`
//! output norm. Each has an f64 reference beside it.

use rayon::prelude::*;

use super::math;

/// out (B, C) = the mean of each image's `hw` pixels of x (B, hw, C).
pub fn mean_pool(x: &[f32], b: usize, hw: usize, c: usize, out: &mut [f32]) {
    for (img, o) in x.chunks(hw * c).zip(out.chunks_mut(c)).take(b) {
        o.fill(0.0);
        for px in img.chunks(c) {
            o.iter_mut().zip(px).for_each(|(a, v)| *a += v);
        }
        o.iter_mut().for_each(|v| *v /= hw as f32);
    }
}

/// Plain reference for [`mean_pool`], summed in f64.
pub fn mean_pool_ref(x: &[f32], b: usize, hw: usize, c: usize) -> Vec<f32> {
    (0..b * c)
        .map(|o| {
            let (bi, ch) = (o / c, o % c);
            let sum: f64 = (0..hw).map(|p| x[(bi * hw + p) * c + ch] as f64).sum();
            (sum / hw as f64) as f32
        })
        .collect()
}

/// y (B, hw, C) = softmax over the `hw` positions of x, per image and channel
/// (max subtracted first; the sum in f64).
pub fn spatial_softmax(x: &[f32], b: usize, hw: usize, c: usize, y: &mut [f32]) {
    y[..b * hw * c]
        .par_chunks_mut(hw * c)
        .zip(x.par_chunks(hw * c))
        .for_each(|(yi, xi)| {
            for ch in 0..c {
                let max = (0..hw).fold(f32::NEG_INFINITY, |m, p| m.max(xi[p * c + ch]));
                let mut sum = 0.0f64;
                for p in 0..hw {
                    let e = math::exp(xi[p * c + ch] - max);
                    yi[p * c + ch] = e;
                    sum += e as f64;
                }
                let inv = (1.0 / sum) as f32;
                (0..hw).for_each(|p| yi[p * c + ch] *= inv);
            }
        });
}

/// Plain reference for [`spatial_softmax`], in f64 with the standard `exp`.
pub fn spatial_softmax_ref(x: &[f32], b: usize, hw: usize, c: usize) -> Vec<f32> {
    let mut y = vec![0.0; b * hw * c];
    for bi in 0..b {
        for ch in 0..c {
            let at = |p: usize| (bi * hw + p) * c + ch;
            let max = (0..hw)
                .map(|p| x[at(p)] as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..hw).map(|p| (x[at(p)] as f64 - max).exp()).sum();
            for p in 0..hw {
                y[at(p)] = ((x[at(p)] as f64 - max).exp() / sum) as f32;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_abs_diff, randn};

    #[test]
    fn kernels_match_their_references() {
        for (b, hw, c) in [(1, 1, 1), (2, 49, 8), (3, 5, 17)] {
            let x: Vec<f32> = randn(b * hw * c, 22).iter().map(|v| 4.0 * v).collect();
            let mut pooled = vec![f32::NAN; b * c];
            mean_pool(&x, b, hw, c, &mut pooled);
            assert!(
                max_abs_diff(&pooled, &mean_pool_ref(&x, b, hw, c)) < 1e-6,
                "{b}x{hw}x{c}"
            );
            let mut y = vec![f32::NAN; b * hw * c];
            spatial_softmax(&x, b, hw, c, &mut y);
            assert!(
                max_abs_diff(&y, &spatial_softmax_ref(&x, b, hw, c)) < 1e-6,
                "{b}x{hw}x{c}"
            );
        }
    }

    #[test]
    fn references_compute_what_they_say() {
        // Two pixels, one channel: mean 2, softmax of (ln 1, ln 3) = (1/4, 3/4).
        assert_eq!(mean_pool_ref(&[1.0, 3.0], 1, 2, 1), [2.0]);
        let y = spatial_softmax_ref(&[0.0, 3f32.ln()], 1, 2, 1);
        assert!(
            (y[0] - 0.25).abs() < 1e-7 && (y[1] - 0.75).abs() < 1e-7,
            "{y:?}"
        );
    }
}
