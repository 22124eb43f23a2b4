//! # vmamba-rt
//!
//! A torch-free CPU runtime for VMamba, the Visual State Space Model
//! (Liu et al., "VMamba: Visual State Space Model", arXiv 2401.10166), running
//! weights converted from the official checkpoints to safetensors.
//!
//! ```no_run
//! use vmamba_rt::VMamba;
//! let model = VMamba::load("weights/digits.safetensors")?;
//! let image = vec![0.0f32; 3 * 64 * 64];
//! let logits = model.forward(&image, [1, 3, 64, 64])?;
//! # Ok::<(), vmamba_rt::Error>(())
//! ```

pub mod config;
pub mod error;
pub mod kernels;
pub mod model;
pub mod weights;

#[cfg(test)]
mod testutil;

pub use config::Config;
pub use error::{Error, Result};
pub use model::{FeatureMap, VMamba};
pub use weights::Weights;
