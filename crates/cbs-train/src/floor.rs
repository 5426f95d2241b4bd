//! The excess training loss of a run on Gaussian-mixture data: the per-time-bin losses of
//! `metrics.jsonl` next to the exact Bayes floor of each bin ([`GmmOracle::bayes_floor`] on
//! the run's mixture and path), so that "loss − floor" shows where a model still has
//! something to learn.

use std::path::Path;

use cbs_split::GmmOracle;
use serde::Serialize;

use crate::config::{DataSource, TrainConfig};
use crate::trainer::LOSS_T_BINS;
use crate::{Result, TrainError};

/// Times per bin at which the floor is evaluated (midpoints of equal parts of the bin).
const FLOOR_TIMES_PER_BIN: usize = 8;

/// One time bin of [`loss_floor`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FloorRow {
    /// The bin `[lo, hi)` of `[0, 1]`.
    pub lo: f64,
    pub hi: f64,
    /// Mean training loss per element of the samples whose time fell in the bin, over the
    /// log lines read (`None`: no sample fell there).
    pub loss: Option<f64>,
    /// The Bayes floor averaged over the part of the bin inside the run's `t_range` (`None`
    /// outside it).
    pub floor: Option<f64>,
    /// `loss − floor`.
    pub excess: Option<f64>,
}

/// The last `last` log lines of the run in `run_dir` against the floor (`points` exact draws
/// of `x_t` per evaluation time).
pub fn loss_floor(run_dir: &Path, last: usize, points: usize) -> Result<Vec<FloorRow>> {
    let cfg = TrainConfig::from_file(&run_dir.join(crate::checkpoint::CONFIG_FILE))?;
    let invalid = |value: String, expected: &str| TrainError::Invalid {
        field: "data.source",
        value,
        expected: expected.into(),
    };
    if cfg.data.source != DataSource::Gmm {
        return Err(invalid(
            cfg.data.source.name().into(),
            "\"gmm\": the Bayes floor is known in closed form for Gaussian-mixture data only",
        ));
    }
    let gmm = cfg
        .data
        .gmm
        .as_ref()
        .ok_or_else(|| invalid("gmm without a mixture file".into(), "data.gmm set"))?;
    let oracle = GmmOracle::from_file(gmm)
        .map_err(|e| TrainError::Config {
            path: gmm.clone(),
            message: e.to_string(),
        })?
        .with_path(cfg.train.path);
    let losses = read_bins(&run_dir.join(crate::checkpoint::METRICS_FILE), last)?;
    let [a, b] = cfg.train.t_range;
    let mut rows = Vec::with_capacity(LOSS_T_BINS);
    for (j, loss) in losses.into_iter().enumerate() {
        let lo = j as f64 / LOSS_T_BINS as f64;
        let hi = (j + 1) as f64 / LOSS_T_BINS as f64;
        let (l, h) = (lo.max(a), hi.min(b));
        let floor = if l < h {
            let mut sum = 0.0;
            for k in 0..FLOOR_TIMES_PER_BIN {
                let t = l + (h - l) * (k as f64 + 0.5) / FLOOR_TIMES_PER_BIN as f64;
                sum += oracle
                    .bayes_floor(t, points, k as u64)
                    .map_err(|e| invalid(e.to_string(), "a valid mixture"))?;
            }
            Some(sum / FLOOR_TIMES_PER_BIN as f64)
        } else {
            None
        };
        let excess = loss.zip(floor).map(|(l, f)| l - f);
        rows.push(FloorRow {
            lo,
            hi,
            loss,
            floor,
            excess,
        });
    }
    Ok(rows)
}

/// Each bin's mean over the last `last` lines of `metrics.jsonl` that report it.
fn read_bins(path: &Path, last: usize) -> Result<Vec<Option<f64>>> {
    let text = cbs_core::read_text(path).map_err(|e| TrainError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut sum = [0.0; LOSS_T_BINS];
    let mut count = [0usize; LOSS_T_BINS];
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("loss_t_bins")).collect();
    if lines.is_empty() {
        return Err(TrainError::Config {
            path: path.to_path_buf(),
            message: "no line with loss_t_bins (written by training since this version)".into(),
        });
    }
    for line in &lines[lines.len().saturating_sub(last.max(1))..] {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| TrainError::Config {
            path: path.to_path_buf(),
            message: format!("not a JSON line: {e}"),
        })?;
        let Some(bins) = v["loss_t_bins"]
            .as_array()
            .filter(|b| b.len() == LOSS_T_BINS)
        else {
            return Err(TrainError::Config {
                path: path.to_path_buf(),
                message: format!("loss_t_bins is not an array of {LOSS_T_BINS} entries"),
            });
        };
        for (j, b) in bins.iter().enumerate() {
            if let Some(x) = b.as_f64() {
                sum[j] += x;
                count[j] += 1;
            }
        }
    }
    Ok(sum
        .iter()
        .zip(count)
        .map(|(&s, c)| (c > 0).then(|| s / c as f64))
        .collect())
}
