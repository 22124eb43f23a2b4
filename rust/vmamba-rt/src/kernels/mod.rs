//! Compute kernels, kept apart from the model so each can be tested alone.
//! Layout convention: activations are channel-last, `(rows, C)` with
//! `rows = B*H*W`; a spatial map is `(B, H, W, C)`.
//!
//! Each optimised kernel has a plain reference beside it (`*_ref`), and the
//! tests hold the two together.
//!
//! **Not part of the stable API.** These functions are public so that the
//! Python bindings' op tests and the benchmarks can call them one by one; their
//! signatures and layouts may change in any release. Applications use
//! [`crate::VMamba`].

pub mod act;
pub mod bf16dot;
pub mod conv;
pub mod cross_scan;
pub mod gemm;
pub mod layout;
pub mod limits;
pub mod math;
pub mod norm;
pub mod pool;
pub mod scan;
pub(crate) mod simd;

/// Raw pointer that may cross rayon tasks. Each task writes a disjoint part of the
/// buffer; the call sites say which.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
// SAFETY: only used where tasks write disjoint elements (see each call site).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Rows handed to one rayon task by the row-wise kernels.
pub(crate) const ROW_CHUNK: usize = 64;
