//! The directory `cbs train-experts` writes and `cbs sample --experts` reads:
//!
//! ```text
//! DIR/splits.toml   the knots the experts were trained for
//! DIR/expert-<i>/   a run directory (checkpoints/, config.toml, metrics.jsonl) per expert
//! ```
//! Expert `i` is the base configuration trained only on segment `i` of the splits,
//! `[edges[i], edges[i+1]]`, with seed `base seed + i` (independent data order and noise per
//! expert); [`expert_config`] is that rule.

use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::splits::{SplitsFile, SPLITS_FILE};
use crate::{io_err, Result, RunError};

/// `DIR/splits.toml`.
pub fn splits_path(root: &Path) -> PathBuf {
    root.join(SPLITS_FILE)
}

/// `DIR/expert-<i>/`.
pub fn expert_dir(root: &Path, i: usize) -> PathBuf {
    root.join(format!("expert-{i}"))
}

/// Expert `i`'s time interval: segment `i` of the splits.
pub fn expert_interval(splits: &SplitsFile, i: usize) -> [f64; 2] {
    let e = splits.edges();
    [e[i], e[i + 1]]
}

/// Expert `i`'s seed: the base seed plus `i` (wrapping).
pub fn expert_seed(base_seed: u64, i: usize) -> u64 {
    base_seed.wrapping_add(i as u64)
}

/// The configuration expert `i` is trained with: `base` with `train.t_range` = its interval
/// and `train.seed` = its seed.
pub fn expert_config(base: &TrainConfig, splits: &SplitsFile, i: usize) -> TrainConfig {
    let mut cfg = base.clone();
    cfg.train.t_range = expert_interval(splits, i);
    cfg.train.seed = expert_seed(base.train.seed, i);
    cfg
}

/// Create the directory for `splits`: store its `splits.toml`, or, when one is there already,
/// check that it has the same knots (a directory holds the experts of one split only).
pub fn init_dir(root: &Path, splits: &SplitsFile) -> Result<()> {
    cbs_core::atomic::create_dir_all(root).map_err(io_err(root))?;
    let stored = splits_path(root);
    if stored.is_file() {
        let prev = SplitsFile::from_file(&stored)?;
        if prev.knots != splits.knots {
            return Err(RunError::ExpertsMismatch {
                dir: root.to_path_buf(),
                stored: prev.knots,
                given: splits.knots.clone(),
            });
        }
        return Ok(());
    }
    splits.write(&stored)
}

/// The splits stored in an experts directory.
pub fn read_splits(root: &Path) -> Result<SplitsFile> {
    SplitsFile::from_file(&splits_path(root))
}
