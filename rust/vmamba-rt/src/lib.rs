//! # vmamba-rt
//!
//! A torch-free CPU runtime for VMamba, the Visual State Space Model
//! (Liu et al., "VMamba: Visual State Space Model", arXiv 2401.10166), running
//! weights converted from the official checkpoints to safetensors.
//!
//! The network is described once, in `model/`, which emits an execution
//! [`plan`] for each input shape; the CPU engine runs it on all cores (set
//! `VMAMBA_RT_NUM_THREADS` or call [`VMamba::set_num_threads`]) with SIMD kernels
//! chosen at run time (AVX-512, AVX2+FMA, or portable code elsewhere), and the
//! Python package's CUDA engine runs the same plan on a GPU. Weights are read
//! into memory ([`VMamba::load`]) or mapped ([`VMamba::load_mmap`]).
//!
//! ```
//! use vmamba_rt::VMamba;
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v0_small.safetensors");
//! let model = VMamba::load(path)?; // e.g. "weights/digits.safetensors"
//! let batch = vec![0.0f32; 2 * 3 * 64 * 64]; // NCHW, already normalised
//! let logits = model.forward(&batch, [2, 3, 64, 64])?;
//! assert_eq!(logits.len(), 2 * model.config().num_classes);
//! let best = model.top_k(&logits[..10], 1);
//! println!("first image: {} ({:.1}%)", best[0].0, 100.0 * best[0].1);
//! # Ok::<(), vmamba_rt::Error>(())
//! ```
//!
//! Bad input is an [`Error`], never a panic:
//!
//! ```
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v0_small.safetensors");
//! let model = vmamba_rt::VMamba::load(path)?;
//! let err = model.forward(&[0.0; 12], [1, 4, 1, 3]).unwrap_err();
//! assert_eq!(err.to_string(), "bad input: expected 3 input channels, got 4 (input shape [1, 4, 1, 3])");
//! # Ok::<(), vmamba_rt::Error>(())
//! ```

#![warn(missing_docs, missing_debug_implementations)]

pub mod config;
pub mod error;
pub mod exec;
pub mod format;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod plan;
pub mod preprocess;
pub mod variant;
pub mod weights;

#[cfg(test)]
mod testutil;

pub use config::Config;
pub use error::{Error, Result};
pub use kernels::simd::{cpu_info, CpuInfo};
pub use model::{FeatureMap, VMamba};
pub use weights::Weights;
