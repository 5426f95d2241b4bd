//! The files that pass between the stages of a `cbs` pipeline, and the one place that knows
//! their names, formats and rules:
//!
//! - [`config`]: the resolved run configuration (`config.toml`: `[model]`, `[data]`, `[train]`);
//! - [`checkpoint`]: a run's checkpoint directory (`checkpoints/step-N/`, `latest`), its state,
//!   and loading a checkpoint for inference;
//! - [`splits`]: `splits.toml` (knots, settings, bootstrap intervals) and `monitor.csv`;
//! - [`experts`]: the `train-experts` directory (`splits.toml`, `expert-<i>/`) and the rule that
//!   gives expert `i` its interval and seed;
//! - [`outputs`]: the names of `cbs sample` outputs and of a classifier run's files;
//! - [`classifier`]: a `train-classifier` run's config and loading its network;
//! - [`torch_checkpoint`]: checkpoints of the reference PyTorch code, loaded for inference.
//!
//! Every write that must survive a crash goes through [`cbs_core::atomic`]. The trainer
//! (`cbs-train`) writes checkpoints; sampling and split estimation read them without depending
//! on the trainer.

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod experts;
pub mod lock;
pub mod outputs;
pub mod splits;
pub mod torch_checkpoint;

pub use cbs_models::Precision;
pub use checkpoint::{LoadedModel, RngState, WeightsKind};
pub use config::{
    DataConfig, DataSource, LossWeighting, TimeSampling, TrainConfig, TrainSection, WeightNorm,
};
pub use lock::RunLock;
pub use splits::{KnotIntervalEntry, SplitSettings, SplitsFile};

use std::path::PathBuf;

/// Errors of reading, checking and writing run files.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file is unreadable as what it should be (TOML syntax, unknown keys, …).
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("invalid setting `{field}` = {value}: {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: String,
    },
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "{} is in use by {holder} (one writer per run directory; wait for it, stop it, or use \
         another --out)",
        dir.display()
    )]
    Locked { dir: PathBuf, holder: String },
    #[error(
        "{} already holds experts for knots {stored:?}; these splits have {given:?}. Use \
         another --out",
        dir.display()
    )]
    ExpertsMismatch {
        dir: PathBuf,
        stored: Vec<f64>,
        given: Vec<f64>,
    },
    /// A checkpoint write ran out of disk space: what it needs, what is free, what is left.
    #[error(
        "{}",
        checkpoint::disk_full_message(checkpoint, *needed, *free, previous.as_deref())
    )]
    DiskFull {
        /// The checkpoint directory that could not be written.
        checkpoint: PathBuf,
        /// Bytes of the checkpoint's tensors and state (headers aside).
        needed: u64,
        /// Bytes free on that file system after the failed write was removed, if known.
        free: Option<u64>,
        /// The checkpoint `latest` still names, if any.
        previous: Option<PathBuf>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] cbs_core::AtomicError),
    #[error(transparent)]
    Text(#[from] cbs_core::TextError),
    #[error(transparent)]
    Model(#[from] cbs_models::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A PyTorch file the bounded reader refused (its message names the file).
    #[error(transparent)]
    Torch(Box<cbs_torch::TorchError>),
}

pub type Result<T> = std::result::Result<T, RunError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.into();
    move |source| RunError::Io { path, source }
}
