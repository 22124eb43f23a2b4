//! Elementwise transcendental functions written as straight-line f32 arithmetic
//! (no libm calls), so loops that use them vectorise. Accuracy is within a few
//! ulp of libm over the ranges the model uses; the tests check it.

use super::simd::{Fma, Separate};

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Bits of `ROUND_MAGIC` (1.5 * 2^23); `n + ROUND_MAGIC` carries the integer n in its low bits.
const ROUND_MAGIC_BITS: u32 = 0x4B40_0000;

/// e^x for finite x in [-87.3, 88.3] (inputs outside are clamped; NaN reads as
/// -87.3). Integer-only scaling, so it vectorises: no float-to-int conversion.
#[inline(always)]
pub fn exp_core(x: f32) -> f32 {
    exp_core_with::<Separate>(x)
}

/// `exp_core` with the multiply-adds of `F` (fused ones round once: as exact or better).
#[inline(always)]
#[allow(clippy::manual_clamp)] // clamp() would keep NaN; max/min return the other operand
pub(crate) fn exp_core_with<F: Fma>(x: f32) -> f32 {
    // max/min return the non-NaN operand, so the bit tricks below never see NaN.
    let xc = x.max(-87.336_54).min(88.3);
    let nf = F::fma(xc, LOG2E, ROUND_MAGIC);
    let n = nf - ROUND_MAGIC;
    let r = F::fma(-n, LN2_LO, F::fma(-n, LN2_HI, xc));
    // e^r by a polynomial of degree 7 wholly in Estrin's scheme: after r² and
    // r⁴, three dependent multiply-adds, where 1 + r + r² P(r) took five; the
    // selective scan's speed is its chain's length (see `softplus_with`).
    let (r2, q01) = (r * r, r + 1.0);
    let r4 = r2 * r2;
    let q23 = F::fma(1.666_666_5e-1, r, 5e-1);
    let q45 = F::fma(8.333_452e-3, r, 4.166_579_6e-2);
    let q67 = F::fma(1.987_569_1e-4, r, 1.398_199_9e-3);
    let e = F::fma(F::fma(q67, r2, q45), r4, F::fma(q23, r2, q01));
    // 2^n from n's bits: exponent field n + 127.
    let pow2 = f32::from_bits(
        nf.to_bits()
            .wrapping_sub(ROUND_MAGIC_BITS)
            .wrapping_add(127)
            << 23,
    );
    e * pow2
}

/// e^x with the IEEE edge cases: 0 below -87.3, +inf from 88.3 on (where f32
/// is within 2x of overflowing), NaN through.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let y = exp_core(x);
    if x >= 88.3 {
        f32::INFINITY
    } else if x < -87.336_54 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// softplus(x) = log(1 + e^x), and x itself above 20 (the reference threshold);
/// NaN goes through.
///
/// As max(x, 0) + log1p(e^-|x|): the log1p argument is in (0, 1], where a
/// polynomial of degree 8 fitted for this crate (t P(t), relative error 2e-7
/// in f32) replaces a logarithm and a division. It is half the selective scan's
/// work, once per channel and pixel and direction.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    softplus_with::<Separate>(x)
}

/// `softplus` with the multiply-adds of `F`.
#[inline(always)]
pub(crate) fn softplus_with<F: Fma>(x: f32) -> f32 {
    let t = exp_core_with::<F>(-x.abs());
    // P(t) of degree 8 by Estrin's scheme, pairs then quads in parallel: a chain
    // of 4 dependent steps instead of Horner's 9, for the selective scan, whose
    // speed its chain of dependent operations per step sets (kernels/scan.rs).
    let t2 = t * t;
    let t4 = t2 * t2;
    let p01 = F::fma(-4.999_953_2e-1, t, 1.0);
    let p23 = F::fma(-2.484_954_3e-1, t, 3.331_991_7e-1);
    let p45 = F::fma(-1.371_818_3e-1, t, 1.913_176_9e-1);
    let p67 = F::fma(-2.990_448_3e-2, t, 7.887_496e-2);
    let p03 = F::fma(p23, t2, p01);
    let p47 = F::fma(p67, t2, p45);
    let p48 = F::fma(5.332_472e-3, t4, p47);
    let p = F::fma(p48, t4, p03);
    let y = F::fma(t, p, x.max(0.0));
    if x > 20.0 || x.is_nan() {
        x
    } else {
        y
    }
}

/// erf(x) within 4e-7: x P(x²) / Q(x²), P of degree 6 and Q of degree 5, fitted
/// for this crate on [0, 4] (least squares reweighted towards minimax; 2e-9 in
/// exact arithmetic, the rest is f32 rounding). One division and eleven
/// multiply-adds, no branch: the GELU of every MLP runs through it.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_with::<Separate>(x)
}

/// `erf` with the multiply-adds of `F`: fused, they are half the instructions
/// of the GELU that ends every MLP's first GEMM.
#[inline(always)]
pub(crate) fn erf_with<F: Fma>(x: f32) -> f32 {
    // Beyond |x| = 4, erf is ±1 to f32 precision; NaN fails the test and goes through.
    let x = if x.abs() > 4.0 { 4.0f32.copysign(x) } else { x };
    let z = x * x;
    let mut p = -1.371_438_8e-8_f32;
    p = F::fma(p, z, 4.789_109e-6);
    p = F::fma(p, z, 3.830_216e-4);
    p = F::fma(p, z, 3.841_438_3e-3);
    p = F::fma(p, z, 5.434_327_2e-2);
    p = F::fma(p, z, 1.847_353_9e-1);
    p = F::fma(p, z, std::f32::consts::FRAC_2_SQRT_PI); // the fit gives erf'(0) itself
    let mut q = 6.408_911e-5_f32;
    q = F::fma(q, z, 1.310_396_1e-3);
    q = F::fma(q, z, 1.545_863_7e-2);
    q = F::fma(q, z, 1.138_431_3e-1);
    q = F::fma(q, z, 4.970_510_3e-1);
    q = F::fma(q, z, 1.0);
    (x * p / q).clamp(-1.0, 1.0)
}

/// Exact (erf) GELU: x/2 * (1 + erf(x / sqrt 2)).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    gelu_with::<Separate>(x)
}

/// `gelu` with the multiply-adds of `F`.
#[inline(always)]
pub(crate) fn gelu_with<F: Fma>(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_with::<F>(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// SiLU(x) = x * sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::Fused;

    fn rel(a: f32, b: f32) -> f32 {
        (a - b).abs() / b.abs().max(1e-30)
    }

    #[test]
    fn exp_matches_libm() {
        let mut x = -87.0f32;
        while x < 88.3 {
            for (got, how) in [(exp(x), "separate"), (exp_core_with::<Fused>(x), "fused")] {
                assert!(
                    rel(got, x.exp()) < 4e-7,
                    "exp({x}) = {got} ({how} multiply-adds) vs {}",
                    x.exp()
                );
            }
            x += 0.0137;
        }
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_matches_libm() {
        let mut x = -6.0f32;
        while x < 6.0 {
            for (got, how) in [(erf(x), "separate"), (erf_with::<Fused>(x), "fused")] {
                assert!(
                    (got - libm::erff(x)).abs() < 4e-7 * libm::erff(x).abs().max(0.1),
                    "erf({x}) = {got} ({how} multiply-adds) vs {}",
                    libm::erff(x)
                );
            }
            x += 0.001;
        }
        assert!(erf(f32::NAN).is_nan());
        assert_eq!((erf(1e30), erf(-f32::INFINITY)), (1.0, -1.0));
    }

    #[test]
    fn softplus_matches_libm() {
        let mut x = -40.0f32;
        while x < 40.0 {
            let want = if x > 20.0 {
                x
            } else {
                (x as f64).exp().ln_1p() as f32
            };
            for (got, how) in [
                (softplus(x), "separate"),
                (softplus_with::<Fused>(x), "fused"),
            ] {
                assert!(
                    rel(got, want) < 1e-6,
                    "softplus({x}) = {got} ({how} multiply-adds) vs {want}"
                );
            }
            x += 0.01;
        }
        assert!(softplus(f32::NAN).is_nan());
        assert_eq!(softplus(-200.0).max(0.0), softplus(-200.0)); // tiny, never negative
    }
}
