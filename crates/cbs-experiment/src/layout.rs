//! Where an experiment's files live, under its output directory `OUT`:
//!
//! ```text
//! OUT/experiment.toml                 the configuration it runs (a rerun must match it)
//! OUT/classifier/                     the feature network (trained once)
//! OUT/seed-<s>/aux-<name>/            an auxiliary model (train-aux run)
//! OUT/seed-<s>/splits-<aux>-<monitor>-n<N>/   estimate-splits output
//! OUT/seed-<s>/<arm>/model/           a monolithic arm's run, or
//! OUT/seed-<s>/<arm>/experts/         a split arm's train-experts directory
//! OUT/seed-<s>/<arm>/samples-cfg<c>/  samples, features.safetensors
//! OUT/seed-<s>/<arm>/per-t.csv        the per-time velocity error
//! OUT/seed-<s>/<arm>/result-cfg<c>.json   the arm's result (its presence: finished)
//! OUT/results.tsv, summary.md, paired.json, *.png
//! ```

use std::path::{Path, PathBuf};

use cbs_split::MonitorKind;

use crate::config::ArmSpec;

pub const CONFIG_COPY: &str = "experiment.toml";
pub const RESULTS_TSV: &str = "results.tsv";
pub const SUMMARY_MD: &str = "summary.md";
pub const PAIRED_JSON: &str = "paired.json";
pub const PER_T_CSV: &str = "per-t.csv";
pub const FEATURES_FILE: &str = "features.safetensors";
/// Marker of a finished stage directory without a natural last file.
pub const DONE: &str = "DONE";

/// A guidance scale as a file-name part (`1`, `1.5`).
pub fn scale_tag(c: f64) -> String {
    format!("cfg{c}")
}

pub fn classifier_dir(out: &Path) -> PathBuf {
    out.join("classifier")
}

pub fn seed_dir(out: &Path, seed: u64) -> PathBuf {
    out.join(format!("seed-{seed}"))
}

pub fn aux_dir(out: &Path, seed: u64, aux: &str) -> PathBuf {
    seed_dir(out, seed).join(format!("aux-{aux}"))
}

/// A monitor as the command line and the file names spell it.
pub fn monitor_name(monitor: MonitorKind) -> &'static str {
    match monitor {
        MonitorKind::Acceleration => "acceleration",
        MonitorKind::Dirichlet => "dirichlet",
    }
}

pub fn splits_dir(out: &Path, seed: u64, aux: &str, monitor: MonitorKind, n: usize) -> PathBuf {
    let m = monitor_name(monitor);
    seed_dir(out, seed).join(format!("splits-{aux}-{m}-n{n}"))
}

pub fn arm_dir(out: &Path, seed: u64, arm: &ArmSpec) -> PathBuf {
    seed_dir(out, seed).join(&arm.name)
}

pub fn samples_dir(arm_dir: &Path, cfg: f64) -> PathBuf {
    arm_dir.join(format!("samples-{}", scale_tag(cfg)))
}

pub fn result_file(arm_dir: &Path, cfg: f64) -> PathBuf {
    arm_dir.join(format!("result-{}.json", scale_tag(cfg)))
}
