//! Flow-matching training for `cbs`: AdamW with savable state, EMA, exact resume from
//! checkpoints, and the training loop itself ([`train`]).
//!
//! The same loop trains the auxiliary model, monolithic baselines and each time-specialised
//! expert (an expert is a run whose `train.t_range` is its interval). All randomness comes from
//! per-step counter-based generators (`cbs_core::rng`, `Purpose::TrainStep`), so a run resumed
//! from step `s` draws exactly the batches, times, noise and label drops that an uninterrupted
//! run draws after step `s`. The run configuration and the checkpoint format belong to
//! `cbs-run` (re-exported here as [`config`] and [`checkpoint`]).

pub mod batches;
pub mod checkpointing;
pub mod classifier;
mod data;
pub mod dist;
pub mod ema;
pub mod floor;
pub mod optim;
mod options;
pub mod step;
pub mod times;
mod trainer;
pub mod weighting;

pub use cbs_run::config::{DataConfig, DataSource, TimeSampling, TrainConfig, TrainSection};
pub use cbs_run::{checkpoint, config};
pub use data::{load_data, load_dataset};
pub use options::{Dist, HostReads, TrainOptions};
pub use trainer::{train, StepReport, TrainSummary, LOSS_T_BINS};

use std::path::PathBuf;

/// Errors of configuration, data, checkpoints and training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid setting `{field}` = {value}: {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: String,
    },
    #[error(transparent)]
    Run(#[from] cbs_run::RunError),
    #[error(transparent)]
    Write(#[from] cbs_core::AtomicError),
    #[error(transparent)]
    Data(#[from] cbs_data::DataError),
    #[error(transparent)]
    Model(#[from] cbs_models::ModelError),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "{} at step {step}; training stopped before applying it. {}",
        match .grad_norm {
            Some(g) => format!("the gradient norm became {g} (loss {loss})"),
            None => format!("loss became {loss}"),
        },
        match .last_checkpoint {
            Some(p) => format!("The last good checkpoint is kept at {}.", p.display()),
            None => "No checkpoint had been written yet.".to_string(),
        }
    )]
    NonFinite {
        step: u64,
        loss: f64,
        /// Set when the loss was finite but the gradient norm was not.
        grad_norm: Option<f64>,
        last_checkpoint: Option<PathBuf>,
    },
    #[error(
        "interrupted at step {step}; {}",
        match .checkpoint {
            Some(p) => format!(
                "its checkpoint is {}. Continue with the same command and --resume",
                p.display()
            ),
            None => "no checkpoint had been written yet".to_string(),
        }
    )]
    Interrupted {
        step: u64,
        checkpoint: Option<PathBuf>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
