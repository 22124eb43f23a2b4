//! LayerNorm over the channel axis of channel-last rows (eps = 1e-5).

use rayon::prelude::*;

use super::simd::dispatch;
use super::ROW_CHUNK;

/// LayerNorm epsilon of every norm in the model.
pub const EPS: f32 = 1e-5;
const LANES: usize = 8;

/// Sum with eight independent accumulators, so the loop vectorises without
/// reassociation licence from the compiler.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f32>() + tail
}

/// Mean and 1/sqrt(var + eps) of one row.
#[inline(always)]
fn row_stats(x: &[f32]) -> (f32, f32) {
    let c = x.len() as f32;
    let mean = lane_sum(x, |v| v) / c;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / c;
    (mean, 1.0 / (var + EPS).sqrt())
}

#[inline(always)]
fn norm_row(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32]) {
    // All four cut to one length: a loop without bounds checks, so it vectorises.
    let c = w.len();
    let (x, out, b) = (&x[..c], &mut out[..c], &b[..c]);
    let (mean, inv) = row_stats(x);
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * inv * w + b;
    }
}

#[inline(always)]
fn layer_norm_body(
    x: &[f32],
    x_stride: usize,
    out: &mut [f32],
    out_stride: usize,
    w: &[f32],
    b: &[f32],
) {
    for (xr, or) in x.chunks(x_stride).zip(out.chunks_mut(out_stride)) {
        norm_row(xr, or, w, b);
    }
}

dispatch!(fn layer_norm_chunk(x: &[f32], x_stride: usize, out: &mut [f32], out_stride: usize, w: &[f32], b: &[f32]) => layer_norm_body);

/// LayerNorm of `rows` rows of width `w.len()`: x (rows, x_stride) -> out (rows, out_stride).
pub fn layer_norm(
    x: &[f32],
    x_stride: usize,
    out: &mut [f32],
    out_stride: usize,
    rows: usize,
    w: &[f32],
    b: &[f32],
) {
    let c = w.len();
    assert!(c <= x_stride && c <= out_stride && b.len() == c);
    assert!(
        rows == 0
            || ((rows - 1) * x_stride + c <= x.len() && (rows - 1) * out_stride + c <= out.len())
    );
    out.par_chunks_mut(out_stride * ROW_CHUNK)
        .zip(x.par_chunks(x_stride * ROW_CHUNK))
        .take(rows.div_ceil(ROW_CHUNK))
        .for_each(|(o, xi)| layer_norm_chunk(xi, x_stride, o, out_stride, w, b));
}

/// Reference LayerNorm in f64.
pub fn layer_norm_ref(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32]) {
    let c = w.len();
    for (xr, or) in x.chunks(c).zip(out.chunks_mut(c)) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        for i in 0..c {
            or[i] = (((xr[i] as f64 - mean) / (var + EPS as f64).sqrt()) * w[i] as f64
                + b[i] as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_abs_diff, randn};

    #[test]
    fn layer_norm_matches_reference() {
        for c in [1usize, 7, 16, 45, 96] {
            let rows = 130;
            let x: Vec<f32> = randn(rows * c, 1).iter().map(|v| v * 3.0 + 1.5).collect();
            let w = randn(c, 2);
            let b = randn(c, 3);
            let mut want = vec![0.0; rows * c];
            layer_norm_ref(&x, &mut want, &w, &b);
            let mut got = vec![0.0; rows * c];
            layer_norm(&x, c, &mut got, c, rows, &w, &b);
            assert!(max_abs_diff(&got, &want) < 1e-5, "c={c}");
            // Rows inside wider ones (the strides it takes): what lies between stays untouched.
            let (xs, os) = (c + 3, c + 5);
            let mut wide = vec![7.0; rows * xs];
            for (dst, src) in wide.chunks_mut(xs).zip(x.chunks(c)) {
                dst[..c].copy_from_slice(src);
            }
            let mut got = vec![-1.0; rows * os];
            layer_norm(&wide, xs, &mut got, os, rows, &w, &b);
            for (r, row) in got.chunks(os).enumerate() {
                assert!(
                    max_abs_diff(&row[..c], &want[r * c..][..c]) < 1e-5,
                    "c={c} strided"
                );
                assert!(
                    row[c..].iter().all(|&v| v == -1.0),
                    "c={c}: wrote past the row"
                );
            }
        }
    }
}
