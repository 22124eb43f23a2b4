//! Moving values between layouts: NCHW <-> NHWC, the H/W transpose of a
//! channel-last map, and the 2x2 patch merge of the v1 downsample. Each kernel
//! walks its output in parallel rows; each `*_ref` computes every output
//! element from its index alone, and the tests hold the two together.

use rayon::prelude::*;

/// Transpose each of `b` images from (rows, cols) to (cols, rows):
/// NCHW -> NHWC with (rows, cols) = (C, H*W), and back with (H*W, C).
pub fn transpose_images(x: &[f32], b: usize, rows: usize, cols: usize, out: &mut [f32]) {
    out.par_chunks_mut(rows * cols)
        .zip(x.par_chunks(rows * cols))
        .take(b)
        .for_each(|(o, i)| {
            for r in 0..rows {
                for c in 0..cols {
                    o[c * rows + r] = i[r * cols + c];
                }
            }
        });
}

/// Plain reference for [`transpose_images`].
pub fn transpose_images_ref(x: &[f32], b: usize, rows: usize, cols: usize) -> Vec<f32> {
    (0..b * rows * cols)
        .map(|o| {
            let (img, at) = (o / (rows * cols), o % (rows * cols));
            let (c, r) = (at / rows, at % rows);
            x[img * rows * cols + r * cols + c]
        })
        .collect()
}

/// (B, H, W, C) -> (B, W, H, C): output row `col` of image `bi` is input column `col`.
pub fn transpose_hw(x: &[f32], b: usize, h: usize, w: usize, c: usize, out: &mut [f32]) {
    out[..b * h * w * c]
        .par_chunks_mut(h * c)
        .enumerate()
        .for_each(|(row, out)| {
            let (bi, col) = (row / w, row % w);
            for r in 0..h {
                out[r * c..(r + 1) * c].copy_from_slice(&x[((bi * h + r) * w + col) * c..][..c]);
            }
        });
}

/// Plain reference for [`transpose_hw`].
pub fn transpose_hw_ref(x: &[f32], b: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    (0..b * h * w * c)
        .map(|o| {
            let (bi, rest) = (o / (h * w * c), o % (h * w * c));
            let (col, r, ch) = (rest / (h * c), rest / c % h, rest % c);
            x[((bi * h + r) * w + col) * c + ch]
        })
        .collect()
}

/// The official channel groups of a 2x2 patch, as (row, column) offsets.
const PATCH: [(usize, usize); 4] = [(0, 0), (1, 0), (0, 1), (1, 1)];

/// (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C), zero-padding an odd last row / column.
/// Channel groups in the official order: (0,0), (1,0), (0,1), (1,1) as (row, col) offsets.
pub fn patch_merge(x: &[f32], b: usize, h: usize, w: usize, c: usize, out: &mut [f32]) {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    out.par_chunks_mut(wo * 4 * c)
        .take(b * ho)
        .enumerate()
        .for_each(|(row, out)| {
            let (bi, oy) = (row / ho, row % ho);
            for ox in 0..wo {
                for (g, (dy, dx)) in PATCH.into_iter().enumerate() {
                    let (iy, ix) = (2 * oy + dy, 2 * ox + dx);
                    let dst = &mut out[(ox * 4 + g) * c..][..c];
                    if iy < h && ix < w {
                        let src = ((bi * h + iy) * w + ix) * c;
                        dst.copy_from_slice(&x[src..src + c]);
                    } else {
                        dst.fill(0.0);
                    }
                }
            }
        });
}

/// Plain reference for [`patch_merge`].
pub fn patch_merge_ref(x: &[f32], b: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    (0..b * ho * wo * 4 * c)
        .map(|o| {
            let (pixel, ch) = (o / (4 * c), o % (4 * c));
            let (bi, oy, ox) = (pixel / (ho * wo), pixel / wo % ho, pixel % wo);
            let (dy, dx) = PATCH[ch / c];
            let (iy, ix) = (2 * oy + dy, 2 * ox + dx);
            if iy < h && ix < w {
                x[((bi * h + iy) * w + ix) * c + ch % c]
            } else {
                0.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::randn;

    #[test]
    fn kernels_match_their_references() {
        for (b, h, w, c) in [(1, 1, 1, 1), (2, 3, 5, 4), (1, 7, 2, 3), (3, 4, 4, 2)] {
            let x = randn(b * h * w * c, 21);
            let mut out = vec![f32::NAN; b * h * w * c];
            transpose_images(&x, b, c, h * w, &mut out);
            assert_eq!(
                out,
                transpose_images_ref(&x, b, c, h * w),
                "{b}x{h}x{w}x{c}"
            );
            transpose_images(&x, b, h * w, c, &mut out);
            assert_eq!(out, transpose_images_ref(&x, b, h * w, c));
            transpose_hw(&x, b, h, w, c, &mut out);
            assert_eq!(out, transpose_hw_ref(&x, b, h, w, c));
            let mut merged = vec![f32::NAN; b * h.div_ceil(2) * w.div_ceil(2) * 4 * c];
            patch_merge(&x, b, h, w, c, &mut merged);
            assert_eq!(merged, patch_merge_ref(&x, b, h, w, c));
        }
    }

    #[test]
    fn references_are_the_layouts_they_name() {
        // One 2x3 image of 2 channels, NCHW: channel 0 holds 0..6, channel 1 holds 10..16.
        let x: Vec<f32> = (0..6).chain(10..16).map(|v| v as f32).collect();
        let nhwc = transpose_images_ref(&x, 1, 2, 6);
        assert_eq!(nhwc[..4], [0.0, 10.0, 1.0, 11.0]);
        // (H, W) = (2, 3) channel-last, transposed to (3, 2): pixel (0, 1) becomes (1, 0).
        let t = transpose_hw_ref(&nhwc, 1, 2, 3, 2);
        assert_eq!(t[2 * 2..2 * 2 + 2], nhwc[2..4]);
        // The 2x2 patch at the origin: (0,0), (1,0), (0,1), (1,1), then the padded column.
        let m = patch_merge_ref(&nhwc, 1, 2, 3, 2);
        assert_eq!(m[..8], [0.0, 10.0, 3.0, 13.0, 1.0, 11.0, 4.0, 14.0]);
        assert_eq!(m[8..16], [2.0, 12.0, 5.0, 15.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
