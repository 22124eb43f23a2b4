//! Helpers for the unit tests: deterministic random data and error measures.

/// `n` standard-normal numbers from a fixed seed (xorshift + Box-Muller).
pub fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (next(), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// Largest elementwise |a - b|; infinite where only one of a pair is NaN (an
/// output left unwritten in a NaN-filled buffer must fail a test, and f32::max
/// would skip it); panics if the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| {
        let d = match (x.is_nan(), y.is_nan()) {
            (false, false) => (x - y).abs(),
            (true, true) => 0.0,
            _ => f32::INFINITY,
        };
        m.max(d)
    })
}
