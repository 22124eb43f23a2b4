//! Elementwise transcendental functions written as straight-line f32 arithmetic
//! (no libm calls), so loops that use them vectorise. Accuracy is within a few
//! ulp of libm over the ranges the model uses; the tests check it.

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
#[allow(clippy::manual_clamp)] // clamp() would keep NaN; max/min return the other operand
pub fn exp_core(x: f32) -> f32 {
    // max/min return the non-NaN operand, so the bit tricks below never see NaN.
    let xc = x.max(-87.336_54).min(88.3);
    let nf = xc * LOG2E + ROUND_MAGIC;
    let n = nf - ROUND_MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
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

/// Natural log for x > 0 (Cephes polynomial on the mantissa in [sqrt(1/2), sqrt(2))).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits() as i32;
    let mut e = ((bits >> 23) & 0xff) - 126;
    let mut m = f32::from_bits(((bits & 0x007f_ffff) | 0x3f00_0000) as u32); // in [0.5, 1)
    if m < std::f32::consts::FRAC_1_SQRT_2 {
        m = m + m;
        e -= 1;
    }
    let f = m - 1.0;
    let z = f * f;
    let mut p = 7.037_683_6e-2_f32;
    p = p * f - 1.151_461e-1;
    p = p * f + 1.167_699_9e-1;
    p = p * f - 1.242_014_1e-1;
    p = p * f + 1.424_932_3e-1;
    p = p * f - 1.666_805_8e-1;
    p = p * f + 2.000_071_4e-1;
    p = p * f - 2.499_999_4e-1;
    p = p * f + 3.333_333e-1;
    let ef = e as f32;
    let y = f * z * p + ef * -2.121_944_4e-4 - 0.5 * z;
    f + y + ef * 0.693_359_4
}

/// softplus(x) = log(1 + e^x), and x itself above 20 (the reference threshold).
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    // log1p(t) = ln(u) * t / (u - 1) with u = 1 + t keeps full precision for tiny t.
    let t = exp(x);
    let u = 1.0 + t;
    let d = u - 1.0;
    let l = if d == 0.0 { t } else { ln(u) * (t / d) };
    if x > 20.0 {
        x
    } else {
        l
    }
}

/// erf(x) within 5e-7: the Maclaurin series below |x| = 0.8 (where the tail
/// formula would lose digits to cancellation), Abramowitz & Stegun 7.1.26 above.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let z = x * x;
    let mut s = 1.0_f32 / 658_944.0;
    s = s * z - 1.0 / 75_600.0;
    s = s * z + 1.0 / 9_360.0;
    s = s * z - 1.0 / 1_320.0;
    s = s * z + 1.0 / 216.0;
    s = s * z - 1.0 / 42.0;
    s = s * z + 1.0 / 10.0;
    s = s * z - 1.0 / 3.0;
    s = s * z + 1.0;
    let series = x * s * std::f32::consts::FRAC_2_SQRT_PI;
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4_f32;
    p = p * t - 1.453_152_1;
    p = p * t + 1.421_413_8;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let r = 1.0 - p * t * exp(-a * a);
    if a < 0.8 {
        series
    } else if x < 0.0 {
        -r
    } else {
        r
    }
}

/// Exact (erf) GELU: x/2 * (1 + erf(x / sqrt 2)).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// SiLU(x) = x * sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f32, b: f32) -> f32 {
        (a - b).abs() / b.abs().max(1e-30)
    }

    #[test]
    fn exp_matches_libm() {
        let mut x = -87.0f32;
        while x < 88.3 {
            assert!(
                rel(exp(x), x.exp()) < 4e-7,
                "exp({x}) = {} vs {}",
                exp(x),
                x.exp()
            );
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
            assert!(
                (erf(x) - libm::erff(x)).abs() < 4e-7 * libm::erff(x).abs().max(0.1),
                "erf({x}) = {} vs {}",
                erf(x),
                libm::erff(x)
            );
            x += 0.001;
        }
    }

    #[test]
    fn ln_and_softplus_match_libm() {
        let mut x = 1e-30f32;
        while x < 1e30 {
            assert!(
                (ln(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0),
                "ln({x})"
            );
            x *= 1.37;
        }
        let mut x = -40.0f32;
        while x < 40.0 {
            let want = if x > 20.0 {
                x
            } else {
                (x as f64).exp().ln_1p() as f32
            };
            assert!(
                rel(softplus(x), want) < 1e-6,
                "softplus({x}) = {} vs {want}",
                softplus(x)
            );
            x += 0.01;
        }
    }
}
