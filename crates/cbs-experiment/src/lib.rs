//! Experiments for `cbs experiment`: a declared grid of arms × seeds (monolithic, uniform
//! split, CBS with either monitor, perturbed knots, other N, other auxiliary models), its
//! directory layout, and the tables it reports.
//!
//! The stages themselves (training, split estimation, sampling, metrics) are the commands'
//! own; this crate says *what* runs where and summarises what came out. Every stage leaves a
//! file whose presence means "finished", so a killed experiment resumes where it stopped.

pub mod config;
pub mod layout;
pub mod results;
pub mod stats;

use std::path::PathBuf;

pub use config::{ArmKind, ArmSpec, ExperimentConfig};
pub use results::{ArmResult, Estimate, PairedFid};

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, ExperimentError>;
