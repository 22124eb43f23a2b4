//! Runtime CPU-feature dispatch. The kernels are written once as plain loops over
//! fixed-width lane arrays; this module compiles them a second time with AVX2+FMA
//! enabled, and a third with AVX-512, and picks the best copy the CPU runs. Other targets (NEON on
//! aarch64 is part of the baseline) use the portable copy.

/// Wrap an `#[inline(always)]` kernel body in an AVX-512 copy, an AVX2 copy
/// and a portable copy, and dispatch on the running CPU.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) => $body:path) => {
        $crate::kernels::simd::dispatch!(@copies $(#[$m])* $vis fn $name($($arg: $ty),*)
            => [$body] [$body] [$body]);
    };
    // The one expansion: `fused` for the AVX copies, `baseline` for x86-64
    // without them, `other` for other targets (NEON on aarch64 is baseline).
    (@copies $(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),*)
        => [$($fused:tt)*] [$($baseline:tt)*] [$($other:tt)*]) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $($fused)*($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $($fused)*($($arg),*)
                }
                if $crate::kernels::simd::has_avx512() {
                    // SAFETY: the CPU supports AVX-512F/VL, AVX2 and FMA (checked above).
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::kernels::simd::has_avx2() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked above).
                    return unsafe { avx2($($arg),*) };
                }
                $($baseline)*($($arg),*)
            }
            #[cfg(not(target_arch = "x86_64"))]
            $($other)*($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// Like `dispatch!`, for a body generic over [`Fma`]: the AVX copies (and
/// aarch64, whose baseline has it) fuse multiply-adds, baseline x86-64 does not.
macro_rules! dispatch_fma {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) => $body:ident) => {
        $crate::kernels::simd::dispatch!(@copies $(#[$m])* $vis fn $name($($arg: $ty),*)
            => [$body::<$crate::kernels::simd::Fused>]
               [$body::<$crate::kernels::simd::Separate>]
               [$body::<$crate::kernels::simd::Fused>]);
    };
}
pub(crate) use dispatch_fma;

/// Multiply-add, `a * b + c`, fused where the instruction set has it.
pub(crate) trait Fma {
    fn fma(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding: x86 with FMA, and aarch64.
pub(crate) struct Fused;
impl Fma for Fused {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Two roundings: baseline x86-64 has no FMA instruction (`mul_add` would call libm).
pub(crate) struct Separate;
impl Fma for Separate {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// True when the running CPU has AVX-512F/VL besides AVX2 and FMA (cached by std).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx512() -> bool {
    has_avx2()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// True when the running CPU has AVX2 and FMA (cached by std).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// What the CPU engine finds on this CPU ([`cpu_info`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// Which copy of the kernels runs: "avx512", "avx2+fma", "x86-64" (the
    /// baseline, without FMA), "neon" (aarch64) or "portable".
    pub kernels: &'static str,
    /// The CPU's bf16 arithmetic, by name: "avx512_bf16" and "amx_bf16" on
    /// x86-64, "bf16" on aarch64; empty where it has none.
    pub bf16_instructions: Vec<&'static str>,
    /// How bf16 weights are multiplied: "avx512_bf16" (`vdpbf16ps`: activations
    /// rounded to bf16 too, products summed in f32; see `kernels::bf16dot`) or
    /// "widened" (the weights widened to f32, activations f32): where the CPU
    /// lacks AVX512_BF16, or `VMAMBA_RT_BF16_DOT=0` says so.
    pub bf16_kernel: &'static str,
}

/// What this CPU runs and has (see [`CpuInfo`]).
pub fn cpu_info() -> CpuInfo {
    #[allow(unused_mut)] // nothing to add on targets other than x86-64 and aarch64
    let mut bf16_instructions = Vec::new();
    #[cfg(target_arch = "x86_64")]
    let kernels = {
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            bf16_instructions.push("avx512_bf16");
        }
        // AMX-BF16 (std cannot detect it on stable Rust): CPUID leaf 7, EDX bit
        // 22, and, as std requires for AVX-512, an OS that saves the state: the
        // tile registers' bits (17, 18) set in XCR0, which Linux does from 5.16.
        use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
        let tiles = 0b11 << 17;
        // SAFETY: XGETBV runs only where CPUID says the OS enabled it (OSXSAVE).
        let os_saves_tiles =
            __cpuid(1).ecx & (1 << 27) != 0 && unsafe { _xgetbv(0) } & tiles == tiles;
        if __cpuid(0).eax >= 7 && __cpuid_count(7, 0).edx & (1 << 22) != 0 && os_saves_tiles {
            bf16_instructions.push("amx_bf16");
        }
        if has_avx512() {
            "avx512"
        } else if has_avx2() {
            "avx2+fma"
        } else {
            "x86-64"
        }
    };
    #[cfg(target_arch = "aarch64")]
    let kernels = {
        if std::arch::is_aarch64_feature_detected!("bf16") {
            bf16_instructions.push("bf16");
        }
        "neon"
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let kernels = "portable";
    CpuInfo {
        kernels,
        bf16_instructions,
        bf16_kernel: if super::bf16dot::available() {
            "avx512_bf16"
        } else {
            "widened"
        },
    }
}

#[cfg(test)]
mod tests {
    /// What `cpu_info` finds agrees with the flags Linux lists for the CPU
    /// (which use the same names for the bf16 instructions).
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn cpu_info_agrees_with_proc_cpuinfo() {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let flags: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, f)| f.split_whitespace().collect())
            .unwrap();
        let has = |f: &str| flags.contains(&f);
        let info = super::cpu_info();
        let bf16: Vec<&str> = ["avx512_bf16", "amx_bf16"]
            .into_iter()
            .filter(|f| has(f))
            .collect();
        assert_eq!(info.bf16_instructions, bf16);
        let want = if has("avx512f") && has("avx512vl") && has("avx2") && has("fma") {
            "avx512"
        } else if has("avx2") && has("fma") {
            "avx2+fma"
        } else {
            "x86-64"
        };
        assert_eq!(info.kernels, want);
        let dot = has("avx512_bf16") && has("avx512bw") && want == "avx512";
        let forced_off = std::env::var(super::super::bf16dot::DOT_ENV).as_deref() == Ok("0");
        let kernel = if dot && !forced_off {
            "avx512_bf16"
        } else {
            "widened"
        };
        assert_eq!(info.bf16_kernel, kernel);
    }
}
