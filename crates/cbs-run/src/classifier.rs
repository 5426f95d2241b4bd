//! A `cbs train-classifier` run directory: `classifier.toml` (the config with the resolved
//! architecture: [`ClassifierRunConfig`]), `model.safetensors`, `summary.json`,
//! `reference.npz` and `train-sample.npz` (names in [`crate::outputs::classifier`]). The trainer
//! (`cbs-train`) writes it; `eval-fid --features classifier:RUN` loads the network from it
//! ([`load_classifier`]) without depending on the trainer.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use cbs_models::classifier::{Classifier, ClassifierConfig};
use cbs_models::weights;
use serde::{Deserialize, Serialize};

use crate::config::DataConfig;
use crate::outputs::classifier::{CONFIG_FILE, SUMMARY_FILE, WEIGHTS_FILE};
use crate::{Result, RunError};

/// `classifier.toml`: `[data]` (as in training configs) and `[classifier]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierRunConfig {
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub classifier: ClassifierSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierSection {
    /// Output channels of the 3×3 convolutions (each after the first halves the side).
    pub widths: Vec<usize>,
    /// Dimension of the feature space (the penultimate layer).
    pub feature_dim: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Training images written to `train-sample.npz` (the real-data floor of FID at that
    /// sample size; match it to the number of samples you evaluate).
    pub real_sample: usize,
    /// Filled in by training from the data: the network that was trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<ClassifierConfig>,
}

impl Default for ClassifierSection {
    fn default() -> Self {
        let small = ClassifierConfig::small(1, 32, 10);
        Self {
            widths: small.widths,
            feature_dim: small.feature_dim,
            steps: 1000,
            batch_size: 64,
            lr: 2e-3,
            weight_decay: 1e-4,
            seed: 0,
            real_sample: 1000,
            arch: None,
        }
    }
}

/// Settings given on the command line, applied over the config file.
#[derive(Clone, Debug, Default)]
pub struct ClassifierOverrides {
    pub steps: Option<u64>,
    pub seed: Option<u64>,
    pub real_sample: Option<usize>,
    pub data_dir: Option<PathBuf>,
}

impl ClassifierRunConfig {
    /// The config of `path` (default: Fashion-MNIST with the default classifier), with
    /// `overrides` applied.
    pub fn resolve(path: Option<&Path>, overrides: &ClassifierOverrides) -> Result<Self> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None => Self {
                data: DataConfig::default(),
                classifier: ClassifierSection::default(),
            },
        };
        let c = &mut cfg.classifier;
        if let Some(s) = overrides.steps {
            c.steps = s;
        }
        if let Some(s) = overrides.seed {
            c.seed = s;
        }
        if let Some(n) = overrides.real_sample {
            c.real_sample = n;
        }
        if let Some(d) = &overrides.data_dir {
            cfg.data.dir = Some(d.clone());
        }
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = cbs_core::read_text(path)?;
        let cfg: Self = toml::from_str(&text).map_err(|e| RunError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let c = &self.classifier;
        let bad = |field: &'static str, value: String, expected: &str| {
            Err(RunError::Invalid {
                field,
                value,
                expected: expected.into(),
            })
        };
        if c.steps == 0 {
            return bad("classifier.steps", "0".into(), "at least 1");
        }
        if c.batch_size == 0 {
            return bad("classifier.batch_size", "0".into(), "at least 1");
        }
        if c.real_sample < 2 {
            return bad(
                "classifier.real_sample",
                c.real_sample.to_string(),
                "at least 2 images",
            );
        }
        if !(c.lr.is_finite() && c.lr > 0.0) {
            return bad("classifier.lr", c.lr.to_string(), "a positive number");
        }
        if !(c.weight_decay.is_finite() && c.weight_decay >= 0.0) {
            return bad(
                "classifier.weight_decay",
                c.weight_decay.to_string(),
                "a non-negative number",
            );
        }
        Ok(())
    }
}

/// The variables of a `VarMap`, sorted by name (initialisation and saving visit them in this
/// order, so results depend on the seed alone).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A trained classifier loaded from its run directory.
pub fn load_classifier(run: &Path, device: &Device) -> Result<Classifier> {
    let missing = |what: &str| RunError::Checkpoint {
        path: run.to_path_buf(),
        message: format!(
            "{what} not found: not a `cbs train-classifier` run directory (expected \
             {CONFIG_FILE}, {WEIGHTS_FILE}, {SUMMARY_FILE})"
        ),
    };
    let cfg_path: PathBuf = run.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(missing(CONFIG_FILE));
    }
    if !run.join(SUMMARY_FILE).is_file() {
        return Err(missing(SUMMARY_FILE));
    }
    let cfg = ClassifierRunConfig::from_file(&cfg_path)?;
    let arch = cfg.classifier.arch.ok_or_else(|| RunError::Config {
        path: cfg_path.clone(),
        message: "no [classifier.arch] table: the file was not written by a finished \
                  `cbs train-classifier` run"
            .into(),
    })?;
    arch.validate()?;
    let varmap = VarMap::new();
    let net = Classifier::new(&arch, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    weights::load_into_vars(&run.join(WEIGHTS_FILE), &sorted_vars(&varmap), &[])?;
    Ok(net)
}
