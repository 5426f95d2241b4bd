//! The experiment file (TOML): which arms, which seeds, how each stage runs.
//!
//! Paths inside it are relative to the file's own directory. Unknown fields are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cbs_flow::solver::Solver;
use cbs_split::MonitorKind;
use serde::{Deserialize, Serialize};

use crate::{ExperimentError, Result};

/// A whole experiment: arms × seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Every arm runs once per seed; within a seed all arms share the data order, training
    /// noise (expert i: seed + i) and sampling noise, so arms are compared paired by seed.
    pub seeds: Vec<u64>,
    /// N, the default number of experts of split arms.
    #[serde(default = "default_experts")]
    pub experts: usize,
    pub train: TrainPlan,
    /// Auxiliary models by name (CBS arms pick one with `aux`; the default is "default").
    #[serde(default)]
    pub aux: BTreeMap<String, AuxPlan>,
    #[serde(default)]
    pub splits: SplitPlan,
    pub sample: SamplePlan,
    pub metrics: MetricsPlan,
    #[serde(rename = "arm")]
    pub arms: Vec<ArmSpec>,
    /// Paired differences to report, `[A, B]` for A − B; default: every CBS arm against every
    /// uniform and monolithic arm.
    #[serde(default)]
    pub compare: Vec<[String; 2]>,
}

fn default_experts() -> usize {
    3
}

/// The models of every arm (the monolithic model and each expert): one training config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainPlan {
    /// A `train-aux` / `train-experts` config (TOML with [model], [data], [train]).
    pub config: PathBuf,
    /// S, the training steps of each model (an arm may set its own).
    pub steps: u64,
}

/// An auxiliary model for the CBS arms, with optional overrides of its config (paper §4.5:
/// smaller, less data, fewer steps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuxPlan {
    pub config: PathBuf,
    pub steps: Option<u64>,
    pub preset: Option<String>,
    pub data_fraction: Option<f64>,
}

/// `estimate-splits` settings shared by every CBS arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPlan {
    #[serde(default = "default_trajectories")]
    pub trajectories: usize,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_grid")]
    pub grid: usize,
    /// Bootstrap resamples of the knot intervals.
    #[serde(default = "default_knot_bootstrap")]
    pub bootstrap: usize,
}

fn default_trajectories() -> usize {
    128
}
fn default_batch() -> usize {
    128
}
fn default_grid() -> usize {
    100
}
fn default_knot_bootstrap() -> usize {
    200
}

impl Default for SplitPlan {
    fn default() -> Self {
        Self {
            trajectories: default_trajectories(),
            batch: default_batch(),
            grid: default_grid(),
            bootstrap: default_knot_bootstrap(),
        }
    }
}

/// How every arm is sampled (the same for all).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplePlan {
    pub num: usize,
    pub steps: usize,
    #[serde(default = "default_solver")]
    pub solver: Solver,
    /// Every arm is sampled and evaluated once per scale (1 = no guidance).
    #[serde(default = "default_cfg_scales")]
    pub cfg_scales: Vec<f64>,
    #[serde(default = "default_sample_batch")]
    pub batch: usize,
}

fn default_solver() -> Solver {
    Solver::Heun
}
fn default_cfg_scales() -> Vec<f64> {
    vec![1.0]
}
fn default_sample_batch() -> usize {
    250
}

/// The metrics: a classifier feature space trained once, bootstrap intervals, per-t error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsPlan {
    /// A `train-classifier` config; trained once (its own seed) for all arms and seeds.
    pub classifier: PathBuf,
    #[serde(default = "default_replicates")]
    pub bootstrap: usize,
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Held-out (test split) images of the per-time velocity error.
    #[serde(default = "default_per_t_images")]
    pub per_t_images: usize,
    /// Times of the per-time error: midpoints of this many equal cells.
    #[serde(default = "default_per_t_times")]
    pub per_t_times: usize,
}

fn default_replicates() -> usize {
    200
}
fn default_confidence() -> f64 {
    0.95
}
fn default_per_t_images() -> usize {
    1000
}
fn default_per_t_times() -> usize {
    20
}

/// What an arm trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmKind {
    /// One model on all of [0, 1].
    Monolithic,
    /// N experts on equal segments.
    Uniform,
    /// N experts on the segments of `estimate-splits`.
    Cbs,
}

impl ArmKind {
    pub fn name(self) -> &'static str {
        match self {
            ArmKind::Monolithic => "monolithic",
            ArmKind::Uniform => "uniform",
            ArmKind::Cbs => "cbs",
        }
    }
}

/// One arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    /// A short name (letters, digits, `-`, `_`, `.`): the directory and the table's key.
    pub name: String,
    pub kind: ArmKind,
    /// N (split arms; default: the experiment's `experts`).
    pub experts: Option<usize>,
    /// Training steps of each model of the arm (default: `train.steps`).
    pub steps: Option<u64>,
    /// The monitor (CBS arms; default acceleration).
    pub monitor: Option<MonitorKind>,
    /// The auxiliary model (CBS arms; default "default").
    pub aux: Option<String>,
    /// Every interior knot moved by this much (CBS arms; paper Table 5's perturbation).
    #[serde(default)]
    pub knot_shift: f64,
}

impl ArmSpec {
    /// Number of models the arm trains.
    pub fn experts(&self, default: usize) -> usize {
        match self.kind {
            ArmKind::Monolithic => 1,
            _ => self.experts.unwrap_or(default),
        }
    }

    pub fn monitor(&self) -> MonitorKind {
        self.monitor.unwrap_or(MonitorKind::Acceleration)
    }

    pub fn aux(&self) -> &str {
        self.aux.as_deref().unwrap_or(DEFAULT_AUX)
    }
}

/// The auxiliary model CBS arms use unless they name another.
pub const DEFAULT_AUX: &str = "default";

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.')
}

impl ExperimentConfig {
    /// Reads and validates `path`; relative paths become relative to its directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |message: String| ExperimentError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = cbs_core::read_text(path).map_err(|e| err(e.to_string()))?;
        let mut cfg: ExperimentConfig = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut cfg.train.config);
        rebase(&mut cfg.metrics.classifier);
        for a in cfg.aux.values_mut() {
            rebase(&mut a.config);
        }
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Every check that needs no file: names, counts, references between sections.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.seeds.is_empty() {
            return Err("seeds: give at least one seed".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(s) = self.seeds.iter().find(|s| !seen.insert(**s)) {
            return Err(format!("seeds: {s} appears twice"));
        }
        if self.experts == 0 {
            return Err("experts: expected at least 1".into());
        }
        if self.train.steps == 0 {
            return Err("train.steps: expected at least 1".into());
        }
        if self.arms.is_empty() {
            return Err("no [[arm]]: declare at least one arm".into());
        }
        let s = &self.sample;
        if s.num < 2 || s.steps == 0 || s.batch == 0 || s.cfg_scales.is_empty() {
            return Err(format!(
                "sample: num = {}, steps = {}, batch = {}, {} cfg_scales (expected num ≥ 2, \
                 steps ≥ 1, batch ≥ 1, at least one scale)",
                s.num,
                s.steps,
                s.batch,
                s.cfg_scales.len()
            ));
        }
        if let Some(c) = s.cfg_scales.iter().find(|c| !c.is_finite() || **c < 0.0) {
            return Err(format!(
                "sample.cfg_scales: {c} (expected a finite scale ≥ 0)"
            ));
        }
        let m = &self.metrics;
        if m.bootstrap == 0 || !(m.confidence > 0.0 && m.confidence < 1.0) {
            return Err(format!(
                "metrics: bootstrap = {}, confidence = {} (expected ≥ 1 and in (0, 1))",
                m.bootstrap, m.confidence
            ));
        }
        if m.per_t_images == 0 || m.per_t_times == 0 {
            return Err("metrics.per_t_images and per_t_times: expected at least 1".into());
        }
        for (name, a) in &self.aux {
            if !safe_name(name) {
                return Err(format!(
                    "aux.{name}: a name of letters, digits, '-', '_' or '.' expected"
                ));
            }
            if let Some(f) = a.data_fraction.filter(|f| !(*f > 0.0 && *f <= 1.0)) {
                return Err(format!("aux.{name}.data_fraction = {f}: expected (0, 1]"));
            }
            if a.steps == Some(0) {
                return Err(format!("aux.{name}.steps: expected at least 1"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for a in &self.arms {
            let n = &a.name;
            if !safe_name(n) {
                return Err(format!(
                    "arm `{n}`: a name of letters, digits, '-', '_' or '.' expected (it names \
                     a directory)"
                ));
            }
            if !names.insert(n.clone()) {
                return Err(format!("arm `{n}` is declared twice"));
            }
            if a.steps == Some(0) {
                return Err(format!("arm `{n}`: steps must be at least 1"));
            }
            let cbs_only = a.monitor.is_some() || a.aux.is_some() || a.knot_shift != 0.0;
            match a.kind {
                ArmKind::Monolithic if a.experts.is_some() || cbs_only => {
                    return Err(format!(
                        "arm `{n}`: a monolithic arm takes no experts, monitor, aux or \
                         knot_shift"
                    ))
                }
                ArmKind::Uniform if cbs_only => {
                    return Err(format!(
                        "arm `{n}`: monitor, aux and knot_shift apply to cbs arms only"
                    ))
                }
                ArmKind::Uniform | ArmKind::Cbs if a.experts(self.experts) < 2 => {
                    return Err(format!(
                        "arm `{n}`: a split arm needs at least 2 experts (got {})",
                        a.experts(self.experts)
                    ))
                }
                ArmKind::Cbs if !self.aux.contains_key(a.aux()) => {
                    return Err(format!(
                        "arm `{n}`: auxiliary model `{}` is not declared (add [aux.{}])",
                        a.aux(),
                        a.aux()
                    ))
                }
                ArmKind::Cbs if !a.knot_shift.is_finite() || a.knot_shift.abs() >= 0.5 => {
                    return Err(format!(
                        "arm `{n}`: knot_shift = {} (expected |δ| < 0.5)",
                        a.knot_shift
                    ))
                }
                _ => {}
            }
        }
        for [x, y] in &self.compare {
            for v in [x, y] {
                if !names.contains(v) {
                    return Err(format!("compare: no arm named `{v}`"));
                }
            }
            if x == y {
                return Err(format!("compare: `{x}` against itself"));
            }
        }
        Ok(())
    }

    /// The paired differences to report: `compare`, or by default every CBS arm against every
    /// uniform and monolithic arm.
    pub fn comparisons(&self) -> Vec<[String; 2]> {
        if !self.compare.is_empty() {
            return self.compare.clone();
        }
        let mut out = Vec::new();
        for a in self.arms.iter().filter(|a| a.kind == ArmKind::Cbs) {
            for b in self.arms.iter().filter(|b| b.kind != ArmKind::Cbs) {
                out.push([a.name.clone(), b.name.clone()]);
            }
        }
        out
    }

    pub fn arm(&self, name: &str) -> Option<&ArmSpec> {
        self.arms.iter().find(|a| a.name == name)
    }
}

/// Interior knots moved by `shift`; an error names the knot that would leave (0, 1) or cross
/// its neighbour.
pub fn shift_knots(knots: &[f64], shift: f64) -> std::result::Result<Vec<f64>, String> {
    let out: Vec<f64> = knots.iter().map(|k| k + shift).collect();
    let mut edges = vec![0.0];
    edges.extend(&out);
    edges.push(1.0);
    if edges.windows(2).all(|w| w[1] > w[0]) {
        Ok(out)
    } else {
        Err(format!(
            "knots {knots:?} moved by {shift} give {out:?}, outside (0, 1) or out of order"
        ))
    }
}
