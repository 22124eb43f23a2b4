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
