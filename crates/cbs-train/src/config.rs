//! The training configuration (TOML). Unknown fields are rejected; every error names the file
//! and the offending key.

use std::path::{Path, PathBuf};

use cbs_data::{Resize, Split};
use cbs_models::ModelSpec;
use serde::{Deserialize, Serialize};

use crate::{io_err, Result, TrainError};

/// A whole run: `[model]`, `[data]`, `[train]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSpec,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub train: TrainSection,
}

/// Which data set feeds training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// Fashion-MNIST IDX files (`dir`).
    #[default]
    FashionMnist,
    /// Points drawn from a Gaussian mixture JSON (`gmm`): toy runs in seconds.
    Gmm,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub source: DataSource,
    /// Directory of the data files. Default for Fashion-MNIST: `/usr/share/datasets/fashion-mnist`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    pub split: Split,
    /// 28 → 32 by padding with background (`pad`, no interpolation) or keep 28 (`none`).
    pub resize: Resize,
    /// Fraction of the images used (a seeded subset); the auxiliary model needs about 0.1.
    pub data_fraction: f64,
    /// Random horizontal flips (images only).
    pub hflip: bool,
    /// Mixture JSON (`means`, `stds`, `weights`) for `source = "gmm"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gmm: Option<PathBuf>,
    /// Points drawn from the mixture for `source = "gmm"` (before `data_fraction`).
    pub num_samples: usize,
    /// Seed of those points (fixed, so every run sees the same data set).
    pub sample_seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::FashionMnist,
            dir: None,
            split: Split::Train,
            resize: Resize::Pad,
            data_fraction: 1.0,
            hflip: true,
            gmm: None,
            num_samples: 65536,
            sample_seed: 1234,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Total optimizer steps of the run.
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    /// AdamW decoupled weight decay (SiT trains with 0).
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Linear warm-up of the learning rate from 0 over this many steps.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    pub grad_clip: f64,
    pub ema_decay: f64,
    pub seed: u64,
    /// Times are drawn from U[t_range[0], t_range[1]]; experts train on their interval.
    pub t_range: [f64; 2],
    /// Log (metrics.jsonl, tracing) every this many steps.
    pub log_every: u64,
    /// Write a checkpoint every this many steps (and always at the end).
    pub checkpoint_every: u64,
    /// How many step checkpoints to keep on disk (the newest ones).
    pub keep_checkpoints: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 64,
            lr: 1e-4,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            warmup_steps: 0,
            grad_clip: 0.0,
            ema_decay: 0.9999,
            seed: 0,
            t_range: [0.0, 1.0],
            log_every: 10,
            checkpoint_every: 500,
            keep_checkpoints: 2,
        }
    }
}

impl TrainConfig {
    /// Parse TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| TrainError::Config {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Self::from_toml(&text, path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises")
    }

    /// Range checks that serde cannot express.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let bad = |field: &'static str, value: String, expected: &str| {
            Err(TrainError::Invalid {
                field,
                value,
                expected: expected.to_string(),
            })
        };
        if t.steps == 0 {
            return bad("train.steps", "0".into(), "a positive number of steps");
        }
        if t.batch_size == 0 {
            return bad("train.batch_size", "0".into(), "a positive batch size");
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return bad("train.lr", t.lr.to_string(), "a positive learning rate");
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return bad("train.weight_decay", t.weight_decay.to_string(), "≥ 0");
        }
        if !t.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return bad(
                "train.betas",
                format!("{:?}", t.betas),
                "two values in [0, 1)",
            );
        }
        if t.eps.is_nan() || t.eps <= 0.0 {
            return bad("train.eps", t.eps.to_string(), "> 0");
        }
        if t.grad_clip.is_nan() || t.grad_clip < 0.0 {
            return bad(
                "train.grad_clip",
                t.grad_clip.to_string(),
                "≥ 0 (0 disables)",
            );
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            return bad(
                "train.ema_decay",
                t.ema_decay.to_string(),
                "a value in [0, 1)",
            );
        }
        let [a, b] = t.t_range;
        if !(0.0 <= a && a < b && b <= 1.0) {
            return bad(
                "train.t_range",
                format!("{:?}", t.t_range),
                "0 ≤ start < end ≤ 1",
            );
        }
        if t.log_every == 0 || t.checkpoint_every == 0 || t.keep_checkpoints == 0 {
            return bad(
                "train.log_every / checkpoint_every / keep_checkpoints",
                "0".into(),
                "positive values",
            );
        }
        let f = self.data.data_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return bad("data.data_fraction", f.to_string(), "a value in (0, 1]");
        }
        Ok(())
    }

    /// The data directory in effect.
    pub fn data_dir(&self) -> PathBuf {
        match (&self.data.dir, self.data.source) {
            (Some(d), _) => d.clone(),
            (None, DataSource::FashionMnist) => PathBuf::from(cbs_data::FASHION_MNIST_DEFAULT_DIR),
            (None, DataSource::Gmm) => PathBuf::from("."),
        }
    }
}
