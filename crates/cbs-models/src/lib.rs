//! Backbones for `cbs`: velocity networks with PyTorch-identical parameter names.
//!
//! Every backbone is built by `fn new(cfg, vb)` from a candle `VarBuilder`, so the same
//! constructor serves fresh training (a `VarMap`), checkpoint loading and shape inspection
//! ([`shapes::parameter_shapes`], which allocates nothing). Initialisation lives in one place per
//! backbone (`sit::init`), drawn from a seeded Rust RNG because candle's CPU RNG cannot be seeded.
//!
//! The ops under the layers (fused kernels with hand-written backward, and the composed
//! reference) are chosen by the [`Kernels`] policy each backbone config carries (set by
//! [`Model::new`], never serialised with the architecture), as candle's models carry
//! `use_flash_attn`.
//!
//! [`ModelSpec`] is what configs name (`preset = "sit-b-2"` plus image geometry); [`Model`] is
//! the built network behind the [`cbs_flow::VelocityField`] trait.

pub mod backbone;
pub mod classifier;
pub mod common;
pub mod jit;
pub mod mlp;
pub mod nn;
pub mod shapes;
pub mod sit;
pub mod spec;
pub mod unet;
pub mod vae;
pub mod weights;

pub use backbone::{all_preset_names, Backbone};
pub use cbs_kernels::{Kernels, Precision};
pub use sit::{Sit, SitConfig};
pub use spec::{Architecture, Model, ModelSpec, Staged, Trainable};

/// Errors of model construction and weight I/O.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model preset `{name}`; known presets: {known}")]
    UnknownPreset { name: String, known: String },
    #[error("invalid model configuration: {0}")]
    Invalid(String),
    #[error("{path}: {reason}")]
    Weights { path: String, reason: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
