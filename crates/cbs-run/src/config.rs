//! The training configuration (TOML). Unknown fields are rejected; every error names the file
//! and the offending key.

use std::path::{Path, PathBuf};

use cbs_data::{MemoryLimit, Resize, Split};
use cbs_models::ModelSpec;
use serde::{Deserialize, Serialize};

use crate::{Result, RunError};

/// `[f64; 2]` fields from arrays of exactly two numbers: serde's own fixed-size arrays read
/// the first two elements and ignore the rest (`betas = [0.9, 0.99, 0.5]` would silently
/// lose a value).
mod pair {
    use serde::de::{Deserialize, Deserializer, Error};

    fn two<E: Error>(v: Vec<f64>) -> Result<[f64; 2], E> {
        <[f64; 2]>::try_from(v.as_slice())
            .map_err(|_| E::invalid_length(v.len(), &"an array of exactly 2 numbers"))
    }

    pub fn exact<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 2], D::Error> {
        two(Vec::<f64>::deserialize(d)?)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[f64; 2]>, D::Error> {
        Option::<Vec<f64>>::deserialize(d)?.map(two).transpose()
    }
}

/// Largest batch a step may draw (SiT's global batch is 256).
pub const MAX_BATCH: usize = 1 << 16;
/// Largest point set drawn from a mixture (`source = "gmm"`).
pub const MAX_POINTS: usize = 1 << 26;

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
    /// CIFAR-10 binary batches (`dir`: `data_batch_{1..5}.bin`, `test_batch.bin`), 3×32×32.
    Cifar10,
    /// CIFAR-100 binary files (`dir`: `train.bin`, `test.bin`), 100 fine classes, 3×32×32.
    Cifar100,
    /// `dir/<class>/*.{png,jpg,jpeg}` (or a flat folder: one class), ADM centre crop to
    /// `image_size`, `channels` 3 or 1.
    ImageFolder,
    /// ADM `.npz` (`path`): `arr_0` = uint8 `[N, H, W, C]`, labels in `arr_1` or `labels`.
    Npz,
    /// Precomputed VAE latents (`path`): `latents` (or `arr_0`) = float32 `[N, C, H, W]`,
    /// labels in `labels` or `arr_1`, multiplied by `latent_scale` (SiT on ImageNet-256).
    Latents,
}

impl DataSource {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            DataSource::FashionMnist => "fashion_mnist",
            DataSource::Gmm => "gmm",
            DataSource::Cifar10 => "cifar10",
            DataSource::Cifar100 => "cifar100",
            DataSource::ImageFolder => "image_folder",
            DataSource::Npz => "npz",
            DataSource::Latents => "latents",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub source: DataSource,
    /// Directory of the data files. Default for Fashion-MNIST: `/usr/share/datasets/fashion-mnist`;
    /// required for `cifar10`, `cifar100` and `image_folder`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// `train` or `test` (Fashion-MNIST and CIFAR).
    pub split: Split,
    /// Fashion-MNIST only: 28 → 32 by padding with background (`pad`, no interpolation) or
    /// keep 28 (`none`).
    pub resize: Resize,
    /// The `.npz` file for `source = "npz"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Side of the square centre crop for `source = "image_folder"` (required there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// `image_folder` only: 3 (RGB, the default) or 1 (grayscale).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// `npz` only: the number of classes (labels must be below it); default: largest label + 1,
    /// or 1 without labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// `latents` only: the factor latents are multiplied by (default 0.18215, SD-VAE's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latent_scale: Option<f64>,
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
    /// The most memory, in GiB, a reader may allocate for what a data file declares (an
    /// array, an IDX payload, a folder's decoded images), checked before reading. Default:
    /// half the machine's physical memory; raise it for large files (ImageNet-64's `.npz` is
    /// 15 GB). A property of the machine, not of the run: `--resume` accepts a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_gib: Option<MemoryLimit>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::FashionMnist,
            dir: None,
            split: Split::Train,
            resize: Resize::Pad,
            path: None,
            image_size: None,
            channels: None,
            num_classes: None,
            latent_scale: None,
            data_fraction: 1.0,
            hflip: true,
            gmm: None,
            num_samples: 65536,
            sample_seed: 1234,
            max_memory_gib: None,
        }
    }
}

/// A file holding only a `[data]` table (`cbs encode-latents --config`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataFile {
    data: DataConfig,
}

impl DataConfig {
    /// The `[data]` table of `path`: a whole run config (then validated as one), or a file
    /// with only that table.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = cbs_core::read_text(path)?;
        let config_err = |message: String| RunError::Config {
            path: path.to_path_buf(),
            message,
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| config_err(e.to_string()))?;
        if table.contains_key("model") {
            return Ok(TrainConfig::from_toml(&text, path)?.data);
        }
        let file: DataFile = toml::from_str(&text).map_err(|e| config_err(e.to_string()))?;
        file.data.validate()?;
        Ok(file.data)
    }

    /// The data directory in effect.
    pub fn dir_or_default(&self) -> PathBuf {
        match (&self.dir, self.source) {
            (Some(d), _) => d.clone(),
            (None, DataSource::FashionMnist) => PathBuf::from(cbs_data::FASHION_MNIST_DEFAULT_DIR),
            // The other sources have no default folder (`DataConfig::validate` requires `dir`
            // where one is read).
            (None, _) => PathBuf::from("."),
        }
    }

    /// `max_memory_gib`, or the machine default.
    pub fn memory_limit(&self) -> MemoryLimit {
        self.max_memory_gib.unwrap_or_default()
    }

    /// Checks what serde cannot: ranges, the settings each source requires, and settings given
    /// to a source that does not use them (which would otherwise be silently ignored).
    pub fn validate(&self) -> Result<()> {
        let f = self.data_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return invalid("data.data_fraction", f.to_string(), "a value in (0, 1]");
        }
        if self.source == DataSource::Gmm && !(1..=MAX_POINTS).contains(&self.num_samples) {
            return invalid(
                "data.num_samples",
                self.num_samples.to_string(),
                &format!("from 1 to {MAX_POINTS} points"),
            );
        }
        if let Some(n) = self.num_classes {
            if n > cbs_models::spec::MAX_CLASSES {
                return invalid(
                    "data.num_classes",
                    n.to_string(),
                    &format!("at most {} classes", cbs_models::spec::MAX_CLASSES),
                );
            }
        }
        let src = self.source;
        let only = |field: &'static str, value: String, users: &str| {
            invalid(
                field,
                value,
                &format!(
                    "only read by source = {users}; remove it for source = \"{}\"",
                    src.name()
                ),
            )
        };
        let arrays = matches!(src, DataSource::Npz | DataSource::Latents);
        if let (Some(p), false) = (&self.path, arrays) {
            return only(
                "data.path",
                p.display().to_string(),
                "\"npz\" or \"latents\"",
            );
        }
        if let (Some(v), false) = (self.num_classes, arrays) {
            return only("data.num_classes", v.to_string(), "\"npz\" or \"latents\"");
        }
        if let (Some(v), false) = (self.latent_scale, src == DataSource::Latents) {
            return only("data.latent_scale", v.to_string(), "\"latents\"");
        }
        let folder = src == DataSource::ImageFolder;
        if let (Some(v), false) = (self.image_size, folder) {
            return only("data.image_size", v.to_string(), "\"image_folder\"");
        }
        if let (Some(v), false) = (self.channels, folder) {
            return only("data.channels", v.to_string(), "\"image_folder\"");
        }
        match src {
            DataSource::FashionMnist | DataSource::Gmm => {}
            DataSource::Cifar10 | DataSource::Cifar100 => {
                self.required_dir()?;
            }
            DataSource::ImageFolder => {
                self.required_dir()?;
                self.folder_image_size()?;
                self.folder_channels()?;
            }
            DataSource::Npz | DataSource::Latents => {
                self.npz_path()?;
                if let Some(v) = self.latent_scale {
                    if !(v.is_finite() && v > 0.0) {
                        return invalid("data.latent_scale", v.to_string(), "a positive factor");
                    }
                }
                if let Some(d) = &self.dir {
                    return invalid(
                        "data.dir",
                        d.display().to_string(),
                        "not read by this source; give the .npz file as data.path",
                    );
                }
                if self.num_classes == Some(0) {
                    return invalid("data.num_classes", "0".into(), "at least 1 class");
                }
            }
        }
        Ok(())
    }

    /// `dir`, for the sources that have no default location.
    pub fn required_dir(&self) -> Result<&Path> {
        let expected = match self.source {
            DataSource::Cifar10 => {
                "the folder of the CIFAR-10 binary batches (data_batch_1.bin … data_batch_5.bin, \
                 test_batch.bin; the cifar-10-batches-bin folder of cifar-10-binary.tar.gz)"
            }
            DataSource::Cifar100 => {
                "the folder of the CIFAR-100 binary files (train.bin, test.bin; the \
                 cifar-100-binary folder of cifar-100-binary.tar.gz)"
            }
            _ => "the image folder (root/<class>/*.png|jpg|jpeg, or a folder of images)",
        };
        self.dir
            .as_deref()
            .map_or_else(|| invalid("data.dir", "(unset)".into(), expected), Ok)
    }

    pub fn folder_image_size(&self) -> Result<usize> {
        match self.image_size {
            Some(s) if s > 0 && s <= cbs_models::spec::MAX_IMAGE_SIZE => Ok(s),
            other => invalid(
                "data.image_size",
                other.map_or("(unset)".into(), |s| s.to_string()),
                "the side of the square centre crop in pixels, from 1 to 4096 (e.g. 32 or 64), \
                 required for source = \"image_folder\"",
            ),
        }
    }

    pub fn folder_channels(&self) -> Result<usize> {
        match self.channels.unwrap_or(3) {
            c @ (1 | 3) => Ok(c),
            c => invalid("data.channels", c.to_string(), "1 (grayscale) or 3 (RGB)"),
        }
    }

    pub fn npz_path(&self) -> Result<&Path> {
        self.path.as_deref().map_or_else(
            || {
                invalid(
                    "data.path",
                    "(unset)".into(),
                    "the .npz file (npz: arr_0 = uint8 images [N, H, W, C]; latents: latents = \
                     float32 [N, C, H, W])",
                )
            },
            Ok,
        )
    }
}

fn invalid<T>(field: &'static str, value: String, expected: &str) -> Result<T> {
    Err(RunError::Invalid {
        field,
        value,
        expected: expected.to_string(),
    })
}

/// The distribution of training times (see [`TrainSection::time_sampling`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSampling {
    Uniform,
    LogitNormal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Total optimizer steps of the run.
    pub steps: u64,
    /// Op implementations: `fused` (the hand-written kernels where they apply: CPU f32/f64)
    /// or `composed` (candle's ops everywhere; the reference, and the baseline of timings).
    pub kernels: cbs_models::Kernels,
    /// Numeric precision: `f32`, `tf32` (TensorFloat-32 products on CUDA), `bf16` or `f16`
    /// (half-precision products and attention; f32 weights, optimizer state, EMA, norm
    /// statistics and loss).
    pub precision: cbs_models::Precision,
    /// Recompute each transformer block's activations in the backward pass instead of
    /// keeping them (SiT and JiT): less memory for one more forward pass of the blocks; the
    /// same gradients up to rounding.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
    pub batch_size: usize,
    pub lr: f64,
    /// AdamW decoupled weight decay (SiT trains with 0).
    pub weight_decay: f64,
    #[serde(deserialize_with = "pair::exact")]
    pub betas: [f64; 2],
    pub eps: f64,
    /// Linear warm-up of the learning rate from 0 over this many steps.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    pub grad_clip: f64,
    pub ema_decay: f64,
    pub seed: u64,
    /// Training times lie in [t_range[0], t_range[1]]; experts train on their interval.
    #[serde(deserialize_with = "pair::exact")]
    pub t_range: [f64; 2],
    /// How times are drawn within `t_range`: `uniform`, or `logit_normal` (t = sigmoid(n),
    /// n ~ N(mean, std), truncated to `t_range`). Default: the backbone's reference choice
    /// (logit-normal(−0.8, 0.8) for JiT, uniform for SiT, UNet and MLP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_sampling: Option<TimeSampling>,
    /// `[mean, std]` of the logit-normal. Default `[-0.8, 0.8]` (JiT's).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "pair::optional"
    )]
    pub logit_normal: Option<[f64; 2]>,
    /// Log (metrics.jsonl, tracing) every this many steps.
    pub log_every: u64,
    /// Write a checkpoint every this many steps (and always at the end).
    pub checkpoint_every: u64,
    /// How many step checkpoints to keep on disk (the newest ones).
    pub keep_checkpoints: usize,
    /// Start a fresh run from these weights instead of the reference initialisation: a cbs
    /// run or checkpoint directory, or a PyTorch checkpoint of the reference code, of the same
    /// architecture (experts fine-tuned from a monolithic model: eDiff-I's recipe). AdamW
    /// starts fresh; the EMA starts at the loaded weights. Ignored when resuming.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Which weights of `init_from`: `ema` (default) or `model`.
    #[serde(skip_serializing_if = "is_ema")]
    pub init_weights: crate::WeightsKind,
    /// The interpolation path `x_t = α·x1 + σ·x0`: `linear` (default), `gvp` or `vp` (SiT's
    /// three). The network learns that path's velocity; sampling and the monitors take the
    /// recorded path. JiT (clean-image prediction) trains on `linear` only.
    pub path: cbs_flow::path::Interpolant,
    /// Per-sample loss weight w(t): `none` (default), `erd_l1` / `erd_rms` (ERD: how much of
    /// the target x_t expresses, ω = |c_x|α + |c_ε|σ or √(c_x²α² + c_ε²σ²) for the target
    /// c_x·x1 + c_ε·x0), or `min_snr` (Min-SNR-γ for velocity targets, min(SNR, γ)/(SNR + 1)).
    /// Normalised to mean 1 under the run's time distribution.
    pub loss_weighting: LossWeighting,
    /// Where the weights have mean 1: over the run's interval (`interval`, the default: each
    /// expert on its own) or over [0, 1] with the same kind of time distribution (`global`).
    pub loss_weighting_norm: WeightNorm,
    /// γ of `min_snr` (5, as Hang et al.).
    pub min_snr_gamma: f64,
}

/// How the per-sample training loss is weighted over time (`train.loss_weighting`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LossWeighting {
    #[default]
    None,
    ErdL1,
    ErdRms,
    MinSnr,
}

/// Where loss weights are normalised to mean 1 (`train.loss_weighting_norm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum WeightNorm {
    #[default]
    Interval,
    Global,
}

fn is_ema(w: &crate::WeightsKind) -> bool {
    *w == crate::WeightsKind::Ema
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            steps: 1000,
            kernels: cbs_models::Kernels::Fused,
            precision: cbs_models::Precision::F32,
            activation_checkpointing: false,
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
            time_sampling: None,
            logit_normal: None,
            log_every: 10,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            init_from: None,
            init_weights: crate::WeightsKind::Ema,
            path: cbs_flow::path::Interpolant::Linear,
            loss_weighting: LossWeighting::None,
            loss_weighting_norm: WeightNorm::Interval,
            min_snr_gamma: 5.0,
        }
    }
}

impl TrainConfig {
    /// Parse TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| RunError::Config {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = cbs_core::read_text(path)?;
        Self::from_toml(&text, path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises")
    }

    /// Write [`Self::to_toml`] to `path` (crash-safe).
    pub fn write(&self, path: &Path) -> Result<()> {
        Ok(cbs_core::atomic::write_text(path, &self.to_toml())?)
    }

    /// Range checks that serde cannot express, and upper bounds: a value far beyond any real
    /// run (a typo such as `1e18`) is an error naming the field, never an allocation that
    /// aborts the process.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let bad = |field: &'static str, value: String, expected: &str| {
            Err(RunError::Invalid {
                field,
                value,
                expected: expected.to_string(),
            })
        };
        if t.steps == 0 {
            return bad("train.steps", "0".into(), "a positive number of steps");
        }
        if !(t.min_snr_gamma.is_finite() && t.min_snr_gamma > 0.0) {
            return bad(
                "train.min_snr_gamma",
                t.min_snr_gamma.to_string(),
                "a positive number (5 is the usual)",
            );
        }
        if t.path != cbs_flow::path::Interpolant::Linear {
            // JiT predicts the clean image and turns it into the linear path's velocity.
            let jit = self
                .model
                .default_geometry()
                .and_then(|(shape, classes)| self.model.resolve(&shape, classes))
                .is_ok_and(|a| matches!(a, cbs_models::Architecture::Jit(_)));
            if jit {
                return bad(
                    "train.path",
                    t.path.name().into(),
                    "\"linear\" for JiT (its clean-image prediction is turned into a velocity \
                     on the linear path)",
                );
            }
        }
        if t.batch_size == 0 || t.batch_size > MAX_BATCH {
            return bad(
                "train.batch_size",
                t.batch_size.to_string(),
                &format!("a batch size from 1 to {MAX_BATCH}"),
            );
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
        if let Some([m, sd]) = t.logit_normal {
            if !(m.is_finite() && sd.is_finite() && sd > 0.0) {
                return bad(
                    "train.logit_normal",
                    format!("{:?}", [m, sd]),
                    "[mean, std] with a finite mean and std > 0",
                );
            }
        }
        if t.log_every == 0 || t.checkpoint_every == 0 || t.keep_checkpoints == 0 {
            return bad(
                "train.log_every / checkpoint_every / keep_checkpoints",
                "0".into(),
                "positive values",
            );
        }
        self.data.validate()
    }

    /// The data directory in effect.
    pub fn data_dir(&self) -> PathBuf {
        self.data.dir_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[model]\npreset = \"sit-nano-4\"\n[data]\nsource = \"fashion_mnist\"\n";

    #[test]
    fn max_memory_gib_is_optional_typed_and_round_trips() {
        let plain = TrainConfig::from_toml(BASE, Path::new("a.toml")).unwrap();
        assert_eq!(plain.data.max_memory_gib, None);
        assert!(!plain.to_toml().contains("max_memory_gib"));
        assert!(plain.data.memory_limit().bytes > 0);
        for (value, bytes) in [("24", 24u64 << 30), ("0.5", 1 << 29)] {
            let text = format!("{BASE}max_memory_gib = {value}\n");
            let cfg = TrainConfig::from_toml(&text, Path::new("b.toml")).unwrap();
            assert_eq!(cfg.data.memory_limit().bytes, bytes);
            let again = TrainConfig::from_toml(&cfg.to_toml(), Path::new("c.toml")).unwrap();
            assert_eq!(again, cfg);
        }
        for bad in ["0", "-1", "nan", "\"16G\""] {
            let text = format!("{BASE}max_memory_gib = {bad}\n");
            let e = TrainConfig::from_toml(&text, Path::new("d.toml")).unwrap_err();
            assert!(e.to_string().contains("max_memory_gib"), "{bad}: {e}");
        }
    }
}
