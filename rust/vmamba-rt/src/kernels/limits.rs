//! The arithmetic limit of the cores, measured: how many FLOPs a second the
//! multiply-add instructions the GEMM kernels use can retire, each timed on
//! independent chains held in registers, so that neither memory nor the
//! instruction's latency holds it back. numpy's sgemm is one implementation's
//! reach; this is the instruction's, the ceiling of every GEMM (benchmarks
//! only: nothing in a forward pass calls it).

use std::num::NonZeroUsize;
use std::sync::{Barrier, OnceLock};
use std::time::Instant;

/// An instruction whose rate [`gflops`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// The f32 multiply-add of the running kernels: `vfmadd231ps` on 512-bit
    /// registers where they are the AVX-512 copy, on 256-bit with AVX2+FMA.
    Fma,
    /// `vdpbf16ps` (AVX512_BF16), the bf16 GEMM's: two products a lane.
    Bf16Dot,
}

/// One unit's measured rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// The instruction and register width timed, e.g. "vdpbf16ps zmm".
    pub instruction: &'static str,
    /// FLOPs a second (a multiply-add is two), in billions, all threads together.
    pub gflops: f64,
}

/// Loop trips a timing: 24 instructions each, some 3 ms at two a cycle and 4 GHz.
const TRIPS: u64 = 1_000_000;
/// Rounds timed after a first one that warms the unit up; the best counts.
const ROUNDS: usize = 10;

/// The rate of `unit` with `threads` threads running it at once, `None`
/// where the CPU (or this build's target) lacks it, an error where the
/// threads cannot be started. Each round starts the threads together and
/// lasts until the last one ends; the best round counts (so that threads
/// beyond the cores share them, as they would in a GEMM).
pub fn gflops(unit: Unit, threads: NonZeroUsize) -> std::io::Result<Option<Limit>> {
    let Some(kernel) = kernel(unit) else {
        return Ok(None);
    };
    // SAFETY: `kernel` returns a loop only where the CPU has its instructions.
    unsafe { measure(kernel, threads) }.map(Some)
}

/// The rate of `kernel`'s loop on `threads` threads at once (see [`gflops`]).
///
/// # Safety
/// The CPU must have the loop's instructions.
unsafe fn measure(kernel: Kernel, threads: NonZeroUsize) -> std::io::Result<Limit> {
    let (instruction, flops_per_trip, run) = kernel;
    // The rounds' barrier, set once every thread has started (or `None`, and
    // the ones started return, if one could not be): a barrier for threads
    // that never come would hold the others for ever.
    let gate: OnceLock<Option<Barrier>> = OnceLock::new();
    // When each round began and ended on one thread.
    let time_one = || -> Vec<(Instant, Instant)> {
        let Some(start) = gate.wait() else {
            return Vec::new();
        };
        (0..=ROUNDS)
            .map(|_| {
                start.wait();
                let begun = Instant::now();
                // SAFETY: the caller's promise.
                unsafe { run(TRIPS) };
                (begun, Instant::now())
            })
            .collect()
    };
    let spans = std::thread::scope(|s| {
        let others: Vec<_> = (1..threads.get())
            .map(|_| std::thread::Builder::new().spawn_scoped(s, time_one))
            .collect();
        let started = others.iter().all(Result::is_ok);
        let _ = gate.set(started.then(|| Barrier::new(threads.get())));
        let mine = time_one();
        let mut spans = vec![mine];
        for other in others {
            // A thread that panicked (it cannot: it only times a loop) is as one not started.
            spans.push(
                other?
                    .join()
                    .map_err(|_| std::io::Error::other("a thread panicked"))?,
            );
        }
        Ok::<_, std::io::Error>(spans)
    })?;
    // Round 0 warms the unit up.
    let best = (1..=ROUNDS)
        .filter_map(|round| {
            let begun = spans.iter().map(|t| t[round].0).min()?;
            let ended = spans.iter().map(|t| t[round].1).max()?;
            Some(ended.duration_since(begun).as_secs_f64())
        })
        .fold(f64::INFINITY, f64::min);
    Ok(Limit {
        instruction,
        gflops: threads.get() as f64 * flops_per_trip * TRIPS as f64 / best / 1e9,
    })
}

/// What one trip of `unit`'s loop is, for the running CPU: the instruction's
/// name, its FLOPs, and the loop.
type Kernel = (&'static str, f64, unsafe fn(u64));

#[cfg(target_arch = "x86_64")]
fn kernel(unit: Unit) -> Option<Kernel> {
    use super::simd::{has_avx2, has_avx512};
    match unit {
        Unit::Fma if has_avx512() => Some(x86::FMA_ZMM),
        Unit::Fma if has_avx2() => Some(x86::FMA_YMM),
        Unit::Bf16Dot if super::bf16dot::has_instruction() => Some(x86::DOT_ZMM),
        _ => None,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel(_unit: Unit) -> Option<Kernel> {
    None
}

/// The loops: `trips` times 24 multiply-adds into independent accumulators
/// from two operands held at zero. 24 chains, not fewer: `vdpbf16ps` takes
/// about six cycles and issues two a cycle on a Zen 5, where 12 chains reach
/// only 1.86 a cycle. With 16 registers (AVX2), 12 chains written twice a trip.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;

    use super::Kernel;

    /// One trip: `$insn acc, $a, $b` for each accumulator in turn, `$times`
    /// times over (the assembler's `.rept`). Every register written is named
    /// as an output (`clobber_abi` would leave out those a Windows caller
    /// expects kept).
    macro_rules! trips {
        ($trips:expr, $insn:literal, $a:tt, $b:tt, $times:literal, $($acc:tt),*) => {
            asm!(
                concat!("vxorps ", $a, ", ", $a, ", ", $a),
                concat!("vxorps ", $b, ", ", $b, ", ", $b),
                "2:",
                concat!(".rept ", $times),
                $(concat!($insn, " ", $acc, ", ", $a, ", ", $b),)*
                ".endr",
                "dec rcx",
                "jnz 2b",
                inout("rcx") $trips.max(1) => _,
                out($a) _,
                out($b) _,
                $(out($acc) _,)*
                options(nostack),
            )
        };
    }

    // 24 instructions a trip: 16 lanes (zmm) or 8 (ymm), 2 FLOPs a lane, or
    // two multiply-adds a lane for `vdpbf16ps`.
    pub(super) const FMA_ZMM: Kernel = ("vfmadd231ps zmm", 24.0 * 32.0, fma_zmm);
    pub(super) const FMA_YMM: Kernel = ("vfmadd231ps ymm", 24.0 * 16.0, fma_ymm);
    pub(super) const DOT_ZMM: Kernel = ("vdpbf16ps zmm", 24.0 * 64.0, dot_zmm);

    /// `trips!` on 24 of AVX-512's 32 registers.
    macro_rules! zmm_trips {
        ($trips:expr, $insn:literal) => {
            trips!(
                $trips, $insn, "zmm30", "zmm31", 1, "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5",
                "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", "zmm13", "zmm14",
                "zmm15", "zmm16", "zmm17", "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23"
            )
        };
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma_zmm(trips: u64) {
        zmm_trips!(trips, "vfmadd231ps");
    }

    /// # Safety
    /// The CPU must have AVX-512F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn dot_zmm(trips: u64) {
        zmm_trips!(trips, "vdpbf16ps");
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[rustfmt::skip]
    pub(super) unsafe fn fma_ymm(trips: u64) {
        trips!(trips, "vfmadd231ps", "ymm14", "ymm15", 2,
            "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9",
            "ymm10", "ymm11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Measured where the CPU has the unit, `None` where it has not, as
    /// `cpu_info` reports it.
    #[test]
    fn measured_where_the_cpu_has_it() {
        let info = crate::cpu_info();
        let fma = gflops(Unit::Fma, NonZeroUsize::MIN).unwrap();
        let dot = gflops(Unit::Bf16Dot, NonZeroUsize::MIN).unwrap();
        assert_eq!(fma.is_some(), matches!(info.kernels, "avx512" | "avx2+fma"));
        assert_eq!(
            dot.is_some(),
            info.bf16_instructions.contains(&"avx512_bf16") && info.kernels == "avx512"
        );
        for limit in [fma, dot].into_iter().flatten() {
            assert!(sane(&limit), "{limit:?}");
        }
    }

    /// Above 1 GFLOP/s and below what a core at 10 GHz could issue (four 512-bit units).
    fn sane(limit: &Limit) -> bool {
        limit.gflops > 1.0 && limit.gflops < 10.0 * 4.0 * 64.0
    }

    /// Threads beyond the cores share them: four times as many threads as
    /// cores reach no more than the cores do (with a margin for load), where a
    /// sum of each thread's best alone would count every core four times.
    #[cfg(target_arch = "x86_64")] // elsewhere nothing is measured
    #[test]
    fn threads_beyond_the_cores_share_them() {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let Some(one) = gflops(Unit::Fma, NonZeroUsize::MIN).unwrap() else {
            eprintln!("skipped: this CPU has no FMA the kernels use");
            return;
        };
        let over = gflops(Unit::Fma, NonZeroUsize::new(4 * cores).unwrap())
            .unwrap()
            .unwrap();
        assert!(
            over.gflops < 2.0 * cores as f64 * one.gflops,
            "{over:?} on {} threads against {one:?} on one",
            4 * cores
        );
    }

    /// The AVX2 loop, which an AVX-512 CPU never picks, runs at a sane rate too.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_loop_runs() {
        if !crate::kernels::simd::has_avx2() {
            eprintln!("skipped: this CPU has no AVX2+FMA");
            return;
        }
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        let limit = unsafe { measure(x86::FMA_YMM, NonZeroUsize::MIN) }.unwrap();
        assert!(sane(&limit), "{limit:?}");
    }
}
