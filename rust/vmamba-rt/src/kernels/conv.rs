//! Convolutions on channel-last maps: im2col for the dense strided convolutions
//! of the stem and downsampling (the product then goes through `gemm`), and a
//! direct depthwise convolution for SS2D.

use rayon::prelude::*;

use super::act;
use super::simd::{dispatch_fma, Fma};
use crate::memory::elements;
use crate::variant::Act;

/// Output size of a convolution along one axis.
pub fn out_size(n: usize, k: usize, stride: usize, pad: usize) -> usize {
    (n + 2 * pad).saturating_sub(k) / stride + 1
}

#[allow(clippy::too_many_arguments)]
/// Gather patches: x (B, H, W, C) -> cols (B*Ho*Wo, k*k*C), patch order (ky, kx, c),
/// zeros where the window leaves the image.
pub fn im2col(
    x: &[f32],
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    cols: &mut [f32],
) {
    let (ho, wo) = (out_size(h, k, stride, pad), out_size(w, k, stride, pad));
    let kc = k * k * c;
    // Checked: a product that wrapped around must not pass for the buffer's length.
    assert_eq!(
        Some(cols.len()),
        elements(&[b, ho, wo, k, k, c]),
        "im2col: cols"
    );
    cols.par_chunks_mut(wo * kc)
        .enumerate()
        .for_each(|(row, out)| {
            if pad > 0 || k > h || k > w {
                out.fill(0.0); // windows leave the image only there
            }
            let (bi, oy) = (row / ho, row % ho);
            for ox in 0..wo {
                // The taps kx0..kx1 whose input column is inside the map.
                let left = ox * stride;
                let kx0 = pad.saturating_sub(left);
                let kx1 = k.min((w + pad).saturating_sub(left));
                if kx0 >= kx1 {
                    continue;
                }
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    // A window row's taps lie side by side in x and in the patch
                    // (order ky, kx, c): one copy for all of them.
                    let ix = left + kx0 - pad;
                    let src = ((bi * h + iy as usize) * w + ix) * c;
                    let dst = ox * kc + (ky * k + kx0) * c;
                    let len = (kx1 - kx0) * c;
                    out[dst..dst + len].copy_from_slice(&x[src..src + len]);
                }
            }
        });
}

/// Re-lay a PyTorch conv weight (Cout, Cin, k, k) as (Cout, k*k*Cin) in im2col order.
pub fn conv_weight_to_cols(w: &[f32], cout: usize, cin: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for o in 0..cout {
        for i in 0..cin {
            for t in 0..k * k {
                out[o * k * k * cin + t * cin + i] = w[(o * cin + i) * k * k + t];
            }
        }
    }
    out
}

/// One output row `y` of a depthwise k x k convolution, stride 1, "same"
/// padding, then the activation. x: one image (H, W, C) with pixel stride `x_stride`
/// (>= C); wt: (k*k, C) tap-major; out: (W, C).
///
/// Tap by tap over the whole row, each a multiply-add of one input row into
/// the output row (21 KB at 224, kept in cache): each pass is a plain vector
/// loop over channels, and no sum waits on the one before it, as it would
/// summing a pixel's taps in registers (the same order of additions: the
/// bias, then the taps).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dwconv_act_row<F: Fma>(
    x: &[f32],
    x_stride: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    y: usize,
    act: Act,
    out: &mut [f32],
) {
    let out = &mut out[..w * c];
    match bias {
        Some(b) => out
            .chunks_exact_mut(c)
            .for_each(|o| o.copy_from_slice(&b[..c])),
        None => out.fill(0.0),
    }
    let pad = k / 2;
    // Input rows y + ky - pad inside the map.
    for ky in pad.saturating_sub(y)..k.min((h + pad).saturating_sub(y)) {
        let row = &x[(y + ky - pad) * w * x_stride..];
        for kx in 0..k {
            let tap = &wt[(ky * k + kx) * c..][..c];
            // Output pixels whose input ox + kx - pad is inside the row.
            for ox in pad.saturating_sub(kx)..w.min((w + pad).saturating_sub(kx)) {
                let src = &row[(ox + kx - pad) * x_stride..][..c];
                for ((o, &v), &t) in out[ox * c..][..c].iter_mut().zip(src).zip(tap) {
                    *o = F::fma(v, t, *o);
                }
            }
        }
    }
    act::act_body::<F>(out, act);
}

dispatch_fma!(#[allow(clippy::too_many_arguments)] fn dwconv_chunk(x: &[f32], x_stride: usize, h: usize, w: usize, c: usize, k: usize, wt: &[f32], bias: Option<&[f32]>, y: usize, act: Act, out: &mut [f32]) => dwconv_act_row);

/// Depthwise convolution + activation over a batch; see `dwconv_act_row` for layouts.
#[allow(clippy::too_many_arguments)]
pub fn dwconv_act(
    x: &[f32],
    x_stride: usize,
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    act: Act,
    out: &mut [f32],
) {
    assert_eq!(out.len(), b * h * w * c);
    assert!(x.len() >= (b * h * w - 1) * x_stride + c && wt.len() == k * k * c);
    out.par_chunks_mut(w * c).enumerate().for_each(|(row, o)| {
        let (bi, y) = (row / h, row % h);
        let img = &x[bi * h * w * x_stride..];
        dwconv_chunk(img, x_stride, h, w, c, k, wt, bias, y, act, o);
    });
}

/// Reference depthwise conv + activation on an NCHW map: x (C, H, W), w (C, k, k).
#[allow(clippy::too_many_arguments)]
pub fn dwconv_act_ref(
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    act: Act,
) -> Vec<f32> {
    let pad = (k / 2) as isize;
    let mut out = vec![0.0f32; c * h * w];
    for ch in 0..c {
        for y in 0..h as isize {
            for xx in 0..w as isize {
                let mut s = bias.map_or(0.0, |b| b[ch] as f64);
                for ky in 0..k as isize {
                    for kx in 0..k as isize {
                        let (iy, ix) = (y + ky - pad, xx + kx - pad);
                        if iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize {
                            s += x[(ch * h + iy as usize) * w + ix as usize] as f64
                                * wt[(ch * k + ky as usize) * k + kx as usize] as f64;
                        }
                    }
                }
                out[(ch * h + y as usize) * w + xx as usize] = act::act_ref(act, s as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_abs_diff, randn};

    #[test]
    fn dwconv_matches_reference() {
        // (c, k, h, w): kernels of 1, 3 and 5 taps, maps narrower and shorter
        // than the kernel, channel counts off the vector width.
        for (c, k, h, w) in [
            (11, 3, 5, 7),
            (40, 3, 5, 7),
            (16, 5, 6, 4),
            (9, 5, 2, 1),
            (24, 1, 3, 3),
        ] {
            check_dwconv(c, k, h, w);
        }
    }

    fn check_dwconv(c: usize, k: usize, h: usize, w: usize) {
        let b = 2;
        // Pixels wider than their channels (the conv reads the x half of [x, z]).
        let stride = c + 5;
        let x = randn(b * h * w * stride, 1);
        let wt_ref = randn(c * k * k, 2);
        let bias = randn(c, 3);
        // Tap-major copy of the weight.
        let mut wt = vec![0.0; c * k * k];
        for ch in 0..c {
            for t in 0..k * k {
                wt[t * c + ch] = wt_ref[ch * k * k + t];
            }
        }
        for (act, bias) in [
            (Act::Silu, Some(&bias[..])),
            (Act::Relu, Some(&bias[..])),
            (Act::None, None),
        ] {
            let mut got = vec![0.0; b * h * w * c];
            dwconv_act(&x, stride, b, h, w, c, k, &wt, bias, act, &mut got);
            for bi in 0..b {
                let mut nchw = vec![0.0; c * h * w];
                for p in 0..h * w {
                    for ch in 0..c {
                        nchw[ch * h * w + p] = x[(bi * h * w + p) * stride + ch];
                    }
                }
                let want = dwconv_act_ref(&nchw, h, w, c, k, &wt_ref, bias, act);
                let mut got_nchw = vec![0.0; c * h * w];
                for p in 0..h * w {
                    for ch in 0..c {
                        got_nchw[ch * h * w + p] = got[(bi * h * w + p) * c + ch];
                    }
                }
                assert!(
                    max_abs_diff(&got_nchw, &want) < 1e-5,
                    "{act:?} c{c} k{k} {h}x{w}"
                );
            }
        }
    }

    #[test]
    fn im2col_matches_a_direct_gather() {
        // (b, h, w, c, k, stride, pad): the stem's and the downsamples' shapes
        // in small, a patch embedding (k = stride, no pad), windows wider than the map.
        for (b, h, w, c, k, stride, pad) in [
            (2, 9, 7, 3, 3, 2, 1),
            (1, 8, 8, 5, 2, 2, 0),
            (1, 8, 12, 3, 4, 4, 0),
            (2, 2, 3, 4, 5, 1, 2),
            (1, 1, 1, 2, 3, 2, 1),
            (1, 2, 2, 1, 3, 1, 0),
        ] {
            let x = randn(b * h * w * c, 4);
            let (ho, wo) = (out_size(h, k, stride, pad), out_size(w, k, stride, pad));
            let mut got = vec![f32::NAN; b * ho * wo * k * k * c];
            im2col(&x, b, h, w, c, k, stride, pad, &mut got);
            let mut want = vec![0.0; got.len()];
            for (i, v) in want.iter_mut().enumerate() {
                // Output pixel (bi, oy, ox), tap (ky, kx), channel ch.
                let (pixel, tap) = (i / (k * k * c), i % (k * k * c));
                let (bi, oy, ox) = (pixel / (ho * wo), pixel / wo % ho, pixel % wo);
                let (ky, kx, ch) = (tap / (k * c), tap / c % k, tap % c);
                let iy = (oy * stride + ky) as isize - pad as isize;
                let ix = (ox * stride + kx) as isize - pad as isize;
                if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                    *v = x[((bi * h + iy as usize) * w + ix as usize) * c + ch];
                }
            }
            assert_eq!(got, want, "{h}x{w}x{c} k{k} s{stride} p{pad}");
        }
    }

    #[test]
    fn im2col_pads_with_zeros() {
        // One 2x2 single-channel image, 3x3 window, pad 1, stride 2 -> one output pixel.
        let mut cols = vec![f32::NAN; 9]; // stale values must not survive
        im2col(&[1.0, 2.0, 3.0, 4.0], 1, 2, 2, 1, 3, 2, 1, &mut cols);
        assert_eq!(cols, vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 4.0]);
    }
}
