//! Matrix products through the `gemm` crate (packed, SIMD, rayon-parallel).

/// A dense row-major operand with an explicit row stride (elements).
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Elements from one row to the next (>= cols).
    pub stride: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            stride: cols,
        }
    }
    /// A matrix whose rows are `stride` elements apart.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            stride,
        }
    }
    fn check(&self, what: &str) {
        assert!(
            self.rows == 0
                || self.cols == 0
                || (self.rows - 1) * self.stride + self.cols <= self.data.len(),
            "{what}: {}x{} (stride {}) exceeds buffer of {}",
            self.rows,
            self.cols,
            self.stride,
            self.data.len()
        );
    }
}

/// `out[i, j] (+)= sum_k x[i, k] * w[j, k]`: x (M, K) times the transpose of a
/// weight stored PyTorch-style as (N, K). `out` is (M, N) with row stride `out_stride`.
/// With `accumulate` the product is added to what `out` holds (a fused residual).
pub fn matmul_nt(x: Mat, w: Mat, out: &mut [f32], out_stride: usize, accumulate: bool) {
    let (m, k, n) = (x.rows, x.cols, w.rows);
    assert_eq!(w.cols, k, "matmul_nt: inner sizes differ");
    x.check("matmul_nt lhs");
    w.check("matmul_nt rhs");
    assert!(
        m == 0 || n == 0 || (m - 1) * out_stride + n <= out.len(),
        "matmul_nt: output too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.chunks_mut(out_stride)
                .take(m)
                .for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    // SAFETY: every operand's extent was checked against its slice above, and
    // `out` is borrowed mutably, so nothing aliases the destination.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_stride as isize,
            accumulate,
            x.data.as_ptr(),
            1,
            x.stride as isize,
            w.data.as_ptr(),
            w.stride as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// Plain triple loop, the reference for `matmul_nt`.
pub fn matmul_nt_ref(x: Mat, w: Mat, out: &mut [f32], out_stride: usize, accumulate: bool) {
    for i in 0..x.rows {
        for j in 0..w.rows {
            let mut s = 0.0f64;
            for kk in 0..x.cols {
                s += x.data[i * x.stride + kk] as f64 * w.data[j * w.stride + kk] as f64;
            }
            let o = &mut out[i * out_stride + j];
            *o = if accumulate { *o + s as f32 } else { s as f32 };
        }
    }
}

/// Add `bias` (N) to every row of `out` (M rows of stride `stride`).
pub fn add_bias(out: &mut [f32], stride: usize, bias: &[f32]) {
    use rayon::prelude::*;
    out.par_chunks_mut(stride * super::ROW_CHUNK).for_each(|c| {
        for row in c.chunks_mut(stride) {
            row[..bias.len()]
                .iter_mut()
                .zip(bias)
                .for_each(|(o, b)| *o += b);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_abs_diff, randn};

    #[test]
    fn gemm_matches_reference_with_strides_and_accumulation() {
        let (m, k, n) = (37, 19, 23);
        let x = randn(m * 25, 1);
        let w = randn(n * k, 2);
        let init = randn(m * 30, 3);
        let (lhs, rhs) = (Mat::strided(&x, m, k, 25), Mat::new(&w, n, k));
        for acc in [false, true] {
            let mut a = init.clone();
            let mut b = init.clone();
            matmul_nt(lhs, rhs, &mut a, 30, acc);
            matmul_nt_ref(lhs, rhs, &mut b, 30, acc);
            assert!(max_abs_diff(&a, &b) < 1e-4, "acc={acc}");
        }
    }
}
