//! Elementwise transcendental functions written as straight-line f32 arithmetic
//! (no libm calls), so loops that use them vectorise. Accuracy is within a few
//! ulp of libm over the ranges the model uses; the tests check it.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x. Inputs below -87.3 give 0 and above 88.7 give +inf, as f32 must.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(-87.336_54, 88.722_84);
    let n = (xc * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    let scaled = e * f32::from_bits(((n as i32 + 127) << 23) as u32);
    // Keep the IEEE edge cases: overflow to inf, underflow to 0, NaN through.
    if x > 88.722_84 {
        f32::INFINITY
    } else if x < -87.336_54 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        scaled
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
    p = p * f + 3.333_333_1e-1;
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
        while x < 88.0 {
            assert!(rel(exp(x), x.exp()) < 4e-7, "exp({x}) = {} vs {}", exp(x), x.exp());
            x += 0.0137;
        }
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn ln_and_softplus_match_libm() {
        let mut x = 1e-30f32;
        while x < 1e30 {
            assert!((ln(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0), "ln({x})");
            x *= 1.37;
        }
        let mut x = -40.0f32;
        while x < 40.0 {
            let want = if x > 20.0 { x } else { (x as f64).exp().ln_1p() as f32 };
            assert!(rel(softplus(x), want) < 1e-6, "softplus({x}) = {} vs {want}", softplus(x));
            x += 0.01;
        }
    }
}
