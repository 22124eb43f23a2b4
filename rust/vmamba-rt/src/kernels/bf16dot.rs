//! The dense layers' product in bf16 arithmetic, for CPUs with AVX512_BF16
//! (Zen 4 and later, Cooper Lake and later): `vdpbf16ps` multiplies pairs of
//! bf16 values and adds both products to an f32 sum, 32 products an
//! instruction, twice the multiply-adds of an f32 FMA on the same register.
//!
//! The weight is rounded to bf16 once, at load, and laid out in panels of
//! pairs: panel `p` holds columns `16p..16p+16` as `K/2` rows (K rounded up to
//! even, the last odd row padded with zero) of 16 pairs `(w[col][2t],
//! w[col][2t+1])`, one 512-bit register. Each task rounds its rows of x to bf16
//! pairs the same way, then every tile sums `acc += x[2t+1] w[2t+1]; acc +=
//! x[2t] w[2t]` per pair, as the instruction does (one rounding each, inputs
//! and results below the normal range taken as zero). The bias and the
//! activation are applied in f32 by the shared epilogue of [`super::gemm`].
//!
//! [`dot_ref`] is that arithmetic written plainly; [`gemm_ref`] the product
//! through it; the vector kernel is tested against it bit for bit where the
//! CPU has the instruction. Elsewhere (or with `VMAMBA_RT_BF16_DOT=0`) a bf16
//! weight keeps the f32-widening panels of `gemm` and this module is unused
//! but for its portable copy, which tests run everywhere.

use std::mem::MaybeUninit;

use super::gemm::{self, with_act, Bf16, Epilogue, Lhs, Out, Task, NR};
use super::simd::Separate;
use crate::memory::elements;

/// Set to `0` to keep bf16 weights on the f32-widening kernel even where the
/// CPU has AVX512_BF16 (for comparison: it rounds only the weights).
pub const DOT_ENV: &str = "VMAMBA_RT_BF16_DOT";

/// True where bf16 weights are packed for this module: the CPU has AVX512_BF16
/// (and the AVX-512 the rest of the kernel needs), and `VMAMBA_RT_BF16_DOT` is
/// not `0`. Read once.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| has_instruction() && std::env::var(DOT_ENV).as_deref() != Ok("0"))
}

/// True when the running CPU has AVX512_BF16 and AVX-512F/VL/BW.
pub fn has_instruction() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::has_avx512()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Zero for values below the normal range (sign kept): what the instruction
/// does with its inputs and with each sum.
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// One lane of `vdpbf16ps`: `acc + a[1] b[1] + a[0] b[0]`, the odd product
/// first, each addition rounded to nearest even, subnormal inputs and sums
/// flushed to zero (Intel SDM, VDPBF16PS; checked bit for bit on a Zen 5).
/// A product of two bf16 values is exact in f32 unless it leaves the normal
/// range.
pub fn dot_ref(acc: f32, a: [Bf16; 2], b: [Bf16; 2]) -> f32 {
    let v = |x: Bf16| flush(x.to_f32());
    let t = flush(flush(acc) + v(a[1]) * v(b[1]));
    flush(t + v(a[0]) * v(b[0]))
}

/// A pair of bf16 values as one 32-bit lane: `lo` in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    Bf16::from_f32(lo).0 as u32 | (Bf16::from_f32(hi).0 as u32) << 16
}

/// Pairs in a K of `k` values (rounded up).
pub fn pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// Elements of the pair panels of an (n, k) weight.
pub fn packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * NR * 2 * pairs(k)
}

/// The pair panels of W (N, K) given in `gemm`'s f32 panel layout (K rows of
/// 16 per panel), rounded to bf16.
pub fn pack(f32_panels: &[f32], n: usize, k: usize) -> Vec<Bf16> {
    let kp = pairs(k);
    let mut out = vec![Bf16(0); packed_len(n, k)];
    if k == 0 {
        return out;
    }
    for (src, dst) in f32_panels
        .chunks_exact(NR * k)
        .zip(out.chunks_exact_mut(2 * NR * kp))
    {
        for t in 0..kp {
            for j in 0..NR {
                let at = |kk: usize| if kk < k { src[kk * NR + j] } else { 0.0 };
                dst[(t * NR + j) * 2] = Bf16::from_f32(at(2 * t));
                dst[(t * NR + j) * 2 + 1] = Bf16::from_f32(at(2 * t + 1));
            }
        }
    }
    out
}

/// W back as (N, K) row-major f32 from its pair panels.
pub fn unpack(panels: &[Bf16], n: usize, k: usize) -> Vec<f32> {
    let kp = pairs(k);
    let mut w = vec![0.0; n * k];
    for col in 0..n {
        let (p, j) = (col / NR, col % NR);
        for kk in 0..k {
            w[col * k + kk] = panels[p * 2 * NR * kp + ((kk / 2) * NR + j) * 2 + kk % 2].to_f32();
        }
    }
    w
}

/// `out (+)= act(a Wᵀ + bias)` in bf16 arithmetic, W as the pair panels of an
/// (n, k) weight, on the current rayon pool (the task split of `gemm`).
///
/// x is rounded to bf16 pairs as the tasks need it: by each task, its own rows
/// just before it multiplies them (still in cache), or, where tasks share rows
/// (the split divides the panels), once before they start: a 49-row layer's x
/// would otherwise be converted by every one of its tasks.
pub fn gemm(a: Lhs, panels: &[Bf16], n: usize, k: usize, ep: Epilogue, out: Out) {
    let fits = elements(&[n.div_ceil(NR), NR, 2, pairs(k)]).is_some_and(|e| e <= panels.len());
    assert!(fits, "bf16 gemm: panels too small");
    #[cfg(target_arch = "x86_64")]
    let vector = has_instruction();
    // Where tasks share rows, x is converted once, after `split` checked it.
    let share = |shared: bool| shared.then(|| lhs_as_pairs(&a, k));
    gemm::split(a, panels.as_ptr(), n, k, ep, out, share, |t, shared| {
        let own;
        let x = match shared {
            Some(all) => &all[t.rows.start * pairs(k)..t.rows.end * pairs(k)],
            None => {
                // SAFETY: `split` checked that x holds the task's rows.
                own = unsafe { task_rows_as_pairs(t) };
                &own
            }
        };
        // SAFETY: `split` checked the operands and the panels are checked above;
        // `x` holds the task's rows as pairs; `vector` only where the CPU has the instruction.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if vector {
                return avx512::run(t, x);
            }
            portable(t, x)
        }
    });
}

/// The rows of x as bf16 pairs, (rows, K/2) (each pair `lo | hi << 16`, an odd
/// K's last padded with zero), converted in parallel.
fn lhs_as_pairs(a: &Lhs, k: usize) -> Vec<u32> {
    use rayon::prelude::*;
    let kp = pairs(k);
    let row_len = kp.max(1); // a K of 0 has no pairs (and no chunks of them)
    let chunk = (1 << 14) / row_len + 1; // rows a task converts: about 16K pairs
    rows_as_pairs(a.rows, kp, |x| {
        x.par_chunks_mut(chunk * row_len)
            .enumerate()
            .for_each(|(c, dst)| {
                for (i, row) in dst.chunks_exact_mut(row_len).enumerate() {
                    let r = c * chunk + i;
                    round_row(&a.data[r * a.stride..r * a.stride + k], row);
                }
            })
    })
}

/// A task's rows of x as bf16 pairs, (rows, K/2).
///
/// # Safety
/// `t.a` holds the task's rows, `t.lda` apart, each of `t.k` values.
unsafe fn task_rows_as_pairs(t: &Task<Bf16>) -> Vec<u32> {
    let kp = pairs(t.k);
    rows_as_pairs(t.rows.len(), kp, |x| {
        for (r, dst) in t.rows.clone().zip(x.chunks_exact_mut(kp.max(1))) {
            round_row(std::slice::from_raw_parts(t.a.add(r * t.lda), t.k), dst);
        }
    })
}

/// `rows` rows of `kp` pairs, written by `fill` (through `round_row`, which
/// writes every pair of a row) into memory not zeroed first: zeroing it cost
/// a third of the time of converting x before the tasks start (0.35 of 0.97 ms
/// of a bf16 VMamba-T pass on two threads, on a Zen 5), and on one thread
/// while the other waits.
fn rows_as_pairs(rows: usize, kp: usize, fill: impl FnOnce(&mut [MaybeUninit<u32>])) -> Vec<u32> {
    let len = rows.checked_mul(kp).expect("bf16 gemm: x too large");
    let mut x = Vec::with_capacity(len);
    fill(&mut x.spare_capacity_mut()[..len]);
    // SAFETY: `fill` gave each of the `rows` rows of `kp` pairs to `round_row`,
    // which wrote all of them (K/2 whole pairs and an odd K's last).
    unsafe { x.set_len(len) };
    x
}

crate::kernels::simd::dispatch! {
    /// One row of x as bf16 pairs (vectorised for the running CPU): every one
    /// of `dst`'s `pairs(src.len())` values written.
    fn round_row(src: &[f32], dst: &mut [MaybeUninit<u32>]) => round_row_body
}

#[inline(always)]
fn round_row_body(src: &[f32], dst: &mut [MaybeUninit<u32>]) {
    assert_eq!(dst.len(), pairs(src.len()), "bf16 gemm: a row of pairs");
    let whole = src.chunks_exact(2);
    let last = whole.remainder().first().copied();
    for (d, v) in dst.iter_mut().zip(whole) {
        d.write(pair(v[0], v[1]));
    }
    if let Some(v) = last {
        dst[src.len() / 2].write(pair(v, 0.0));
    }
}

/// The tiles without the instruction: [`dot_ref`] lane by lane. `x` holds
/// the task's rows as pairs (as for the vector kernel).
unsafe fn portable(t: &Task<Bf16>, x: &[u32]) {
    with_act!(t.ep.act, ACT => portable_with::<ACT>(t, x))
}

unsafe fn portable_with<const ACT: usize>(t: &Task<Bf16>, x: &[u32]) {
    let kp = pairs(t.k);
    for (i, r) in t.rows.clone().enumerate() {
        for p in t.cols.clone() {
            let w = t.panels.add(p * 2 * NR * kp);
            let mut acc = [[[0.0f32; NR]; 1]; 1];
            for (tt, &xp) in x[i * kp..(i + 1) * kp].iter().enumerate() {
                let xs = [Bf16(xp as u16), Bf16((xp >> 16) as u16)];
                for (j, a) in acc[0][0].iter_mut().enumerate() {
                    let wp = w.add((tt * NR + j) * 2);
                    *a = dot_ref(*a, xs, [*wp, *wp.add(1)]);
                }
            }
            t.store::<Separate, 1, 1, ACT>(&acc, r, 1, p);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{pairs, with_act, Bf16, Task, NR};
    use crate::kernels::gemm::{tail_in_small_tiles, Ahead, TAIL_ROWS};
    use crate::kernels::simd::Fused;

    /// Rows a tile takes (24 sums, 2 weights and a broadcast: 27 of 32 registers).
    const MR: usize = 12;
    /// Panels a tile takes.
    const NP: usize = 2;
    /// Panels a single-row tile takes (the classifier's one row).
    const ROW_PANELS: usize = 4;

    /// # Safety
    /// The CPU has AVX512_BF16 and AVX-512F/VL/BW; the task's operands are as
    /// `gemm` checks and `x` holds its rows as pairs.
    pub(super) unsafe fn run(t: &Task<Bf16>, x: &[u32]) {
        run_avx512(t, x)
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")]
    unsafe fn run_avx512(t: &Task<Bf16>, x: &[u32]) {
        with_act!(t.ep.act, ACT => run_with::<ACT>(t, x))
    }

    #[inline(always)]
    unsafe fn run_with<const ACT: usize>(t: &Task<Bf16>, x: &[u32]) {
        let rows = t.rows.len();
        if rows < MR {
            for i in 0..rows {
                let mut p = t.cols.start;
                while p + ROW_PANELS <= t.cols.end {
                    tile_at::<1, ROW_PANELS, ACT>(t, x, i, 1, p, Ahead::NONE);
                    p += ROW_PANELS;
                }
                while p < t.cols.end {
                    tile_at::<1, 1, ACT>(t, x, i, 1, p, Ahead::NONE);
                    p += 1;
                }
            }
            return;
        }
        let kp = pairs(t.k);
        let panel_bytes = 2 * NR * kp * std::mem::size_of::<Bf16>();
        let mut p = t.cols.start;
        while p < t.cols.end {
            let step = if p + NP <= t.cols.end { NP } else { 1 };
            let ahead = |i: usize| t.ahead(t.rows.start + i, MR, p, step, panel_bytes, kp);
            let mut i = 0;
            while i + MR <= rows {
                if step == NP {
                    tile_at::<MR, NP, ACT>(t, x, i, MR, p, ahead(i));
                } else {
                    tile_at::<MR, 1, ACT>(t, x, i, MR, p, ahead(i));
                }
                i += MR;
            }
            let rest = rows - i;
            if rest > 0 && !tail_in_small_tiles(rest, MR) {
                if step == NP {
                    tile_at::<MR, NP, ACT>(t, x, i, rest, p, ahead(i));
                } else {
                    tile_at::<MR, 1, ACT>(t, x, i, rest, p, ahead(i));
                }
                i = rows;
            }
            while i < rows {
                let live = TAIL_ROWS.min(rows - i);
                if step == NP {
                    tile_at::<TAIL_ROWS, NP, ACT>(t, x, i, live, p, ahead(i));
                } else {
                    tile_at::<TAIL_ROWS, 1, ACT>(t, x, i, live, p, ahead(i));
                }
                i += TAIL_ROWS;
            }
            p += step;
        }
    }

    /// The tile at task row `i` (`live` rows of it real), panel `p`: computed and stored.
    #[inline(always)]
    unsafe fn tile_at<const R: usize, const P: usize, const ACT: usize>(
        t: &Task<Bf16>,
        x: &[u32],
        i: usize,
        live: usize,
        p: usize,
        ahead: Ahead,
    ) {
        t.prefetch_out::<P>(t.rows.start + i, live, p);
        let kp = pairs(t.k);
        let mut rows = [x.as_ptr(); R];
        for (q, r) in rows.iter_mut().enumerate() {
            *r = x.as_ptr().add((i + q.min(live - 1)) * kp);
        }
        // One panel is `kp` registers of 16 pairs.
        let w = t.panels.add(p * 2 * NR * kp) as *const __m512i;
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for tt in 0..kp {
            ahead.step(tt, P);
            let mut b = [_mm512_setzero_si512(); P];
            for (q, bq) in b.iter_mut().enumerate() {
                *bq = _mm512_loadu_si512(w.add(q * kp + tt));
            }
            for r in 0..R {
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*rows[r].add(tt) as i32));
                for q in 0..P {
                    acc[r][q] = _mm512_dpbf16_ps(
                        acc[r][q],
                        a,
                        std::mem::transmute::<__m512i, __m512bh>(b[q]),
                    );
                }
            }
        }
        let mut sums = [[[0.0f32; NR]; P]; R];
        for r in 0..R {
            for q in 0..P {
                _mm512_storeu_ps(sums[r][q].as_mut_ptr(), acc[r][q]);
            }
        }
        t.store::<Fused, R, P, ACT>(&sums, t.rows.start + i, live, p);
    }
}

/// Plain loops, the reference for [`gemm`]: `out (+)= act(a Wᵀ + bias)` with W
/// (n, k) row-major, x and W rounded to bf16 and each pair summed by [`dot_ref`].
pub fn gemm_ref(a: Lhs, w: &[f32], n: usize, k: usize, ep: Epilogue, out: Out) {
    let bf = |v: f32| Bf16::from_f32(v);
    for i in 0..a.rows {
        let x = &a.data[i * a.stride..i * a.stride + k];
        for j in 0..n {
            let wj = &w[j * k..(j + 1) * k];
            let mut s = 0.0f32;
            for t in 0..pairs(k) {
                let at = |v: &[f32], kk: usize| bf(if kk < k { v[kk] } else { 0.0 });
                s = dot_ref(
                    s,
                    [at(x, 2 * t), at(x, 2 * t + 1)],
                    [at(wj, 2 * t), at(wj, 2 * t + 1)],
                );
            }
            let v = super::act::act_ref(ep.act, s + ep.bias.map_or(0.0, |b| b[j]));
            let o = &mut out.data[i * out.stride + j];
            *o = if out.accumulate { *o + v } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::{PackedWeight, WeightType};
    use crate::testutil::{max_abs_diff, randn};
    use crate::variant::Act;

    #[test]
    fn dot_ref_is_the_instructions_arithmetic() {
        let b = |v: f32| Bf16::from_f32(v);
        // Exact sums, odd product first.
        assert_eq!(
            dot_ref(1.0, [b(2.0), b(3.0)], [b(4.0), b(5.0)]),
            1.0 + 15.0 + 8.0
        );
        // One rounding per addition, in that order: 2^24 + 1 is lost, then 1 + 1 is kept.
        let big = 16_777_216.0f32;
        assert_eq!(dot_ref(big, [b(1.0), b(1.0)], [b(1.0), b(1.0)]), big);
        assert_eq!(dot_ref(0.0, [b(1.0), b(big)], [b(1.0), b(1.0)]), big);
        assert_eq!(dot_ref(1.0, [b(1.0), b(-1.0)], [b(big), b(1.0)]), big);
        // Subnormal inputs and results are zero; signs stay.
        let tiny = f32::from_bits(0x0040_0000);
        assert_eq!(dot_ref(tiny, [b(0.0); 2], [b(0.0); 2]).to_bits(), 0);
        assert_eq!(
            dot_ref(0.0, [Bf16(0x0040), b(0.0)], [b(2f32.powi(100)), b(0.0)]),
            0.0
        );
        assert_eq!(dot_ref(0.0, [b(1e-20), b(0.0)], [b(1e-20), b(0.0)]), 0.0);
        assert_eq!(
            dot_ref(1.5e-38, [b(-1.4e-38), b(0.0)], [b(1.0), b(0.0)]),
            0.0
        );
    }

    /// The kernel that runs here against the reference, bit for bit, on shapes
    /// that cover every edge of its tiling (rows short of a tile, a lone panel,
    /// odd K, columns short of a panel), strided operands, bias and accumulation.
    #[test]
    fn gemm_matches_reference_bit_for_bit() {
        eprintln!(
            "bf16 dot kernel tested here: {}",
            if has_instruction() {
                "AVX512_BF16"
            } else {
                "portable (this CPU has no AVX512_BF16)"
            }
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (m, k, n) in [
            (1, 1, 1),
            (5, 3, 17),
            (37, 19, 23),
            (13, 96, 48),
            (200, 41, 70),
            (1, 300, 100),
            (30, 8, 16),
            (23, 17, 20),
        ] {
            let (lda, ldo) = (k + 3, n + 5);
            let x = randn(m * lda, 11);
            let w = randn(n * k, 12);
            let bias = randn(n, 13);
            let panels = pack(
                &PackedWeight::new(&w, n, k, WeightType::F32).f32_panels(),
                n,
                k,
            );
            for (ep, accumulate) in [
                (Epilogue::NONE, false),
                (
                    Epilogue {
                        bias: Some(&bias),
                        act: Act::Gelu,
                    },
                    true,
                ),
            ] {
                let start = randn(m * ldo, 14);
                let (mut got, mut want) = (start.clone(), start.clone());
                let a = Lhs {
                    data: &x,
                    rows: m,
                    stride: lda,
                };
                gemm_ref(
                    a,
                    &w,
                    n,
                    k,
                    ep,
                    Out {
                        data: &mut want,
                        stride: ldo,
                        accumulate,
                    },
                );
                pool.install(|| {
                    gemm(
                        a,
                        &panels,
                        n,
                        k,
                        ep,
                        Out {
                            data: &mut got,
                            stride: ldo,
                            accumulate,
                        },
                    )
                });
                if ep.bias.is_none() {
                    assert_eq!(got, want, "{m}x{k}x{n}");
                } else {
                    assert!(max_abs_diff(&got, &want) < 1e-5, "{m}x{k}x{n}");
                }
            }
        }
    }

    /// The portable tiles (what runs without the instruction) against the
    /// reference, on every CPU.
    #[test]
    fn portable_tiles_match_reference_bit_for_bit() {
        for (m, k, n) in [(1, 1, 1), (14, 37, 40), (300, 9, 20)] {
            let x = randn(m * k, 18);
            let w = randn(n * k, 19);
            let panels = pack(
                &PackedWeight::new(&w, n, k, WeightType::F32).f32_panels(),
                n,
                k,
            );
            let (mut got, mut want) = (vec![0.0; m * n], vec![0.0; m * n]);
            let a = Lhs {
                data: &x,
                rows: m,
                stride: k,
            };
            gemm_ref(
                a,
                &w,
                n,
                k,
                Epilogue::NONE,
                Out {
                    data: &mut want,
                    stride: n,
                    accumulate: false,
                },
            );
            let out = Out {
                data: &mut got,
                stride: n,
                accumulate: false,
            };
            gemm::split(
                a,
                panels.as_ptr(),
                n,
                k,
                Epilogue::NONE,
                out,
                |_| (),
                |t, _| unsafe { portable(t, &task_rows_as_pairs(t)) },
            );
            assert_eq!(got, want, "{m}x{k}x{n}");
        }
    }

    /// A row count past what x holds is refused before anything is sized by it
    /// (the task split would otherwise plan for 2^62 rows).
    #[test]
    #[should_panic(expected = "gemm: lhs too small")]
    fn too_many_rows_are_refused() {
        let (n, k) = (32, 8);
        let panels = pack(
            &PackedWeight::new(&randn(n * k, 1), n, k, WeightType::F32).f32_panels(),
            n,
            k,
        );
        let (x, mut out) = (vec![1.0; 4 * k], vec![0.0; 4 * n]);
        let a = Lhs {
            data: &x,
            rows: 1 << 62,
            stride: k,
        };
        let o = Out {
            data: &mut out,
            stride: n,
            accumulate: false,
        };
        gemm(a, &panels, n, k, Epilogue::NONE, o);
    }

    #[test]
    fn pair_panels_hold_the_rounded_weight() {
        for (n, k) in [(1, 1), (17, 5), (32, 64)] {
            let w = randn(n * k, 15);
            let rounded: Vec<f32> = w.iter().map(|&v| Bf16::from_f32(v).to_f32()).collect();
            let f32_panels = PackedWeight::new(&w, n, k, WeightType::F32).f32_panels();
            assert_eq!(unpack(&pack(&f32_panels, n, k), n, k), rounded);
        }
    }

    /// Against the f32 product, the bf16 one is off by the rounding of x and W
    /// (about 2^-9 each, relative): a bound that fails if a pair is dropped.
    #[test]
    fn bf16_product_is_close_to_f32() {
        let (m, k, n) = (40, 384, 96);
        let x = randn(m * k, 16);
        let w = randn(n * k, 17);
        let f32w = PackedWeight::new(&w, n, k, WeightType::F32);
        let panels = pack(&f32w.clone().f32_panels(), n, k);
        let (mut got, mut want) = (vec![0.0; m * n], vec![0.0; m * n]);
        gemm(
            Lhs {
                data: &x,
                rows: m,
                stride: k,
            },
            &panels,
            n,
            k,
            Epilogue::NONE,
            Out {
                data: &mut got,
                stride: n,
                accumulate: false,
            },
        );
        f32w.apply(&x, m, Epilogue::NONE, &mut want, false);
        let scale = want.iter().fold(0.0f32, |s, v| s.max(v.abs()));
        let err = max_abs_diff(&got, &want) / scale;
        assert!(err < 2e-2 && err > 1e-5, "{err}");
    }
}
