//! Bootstrap confidence intervals of the knots.
//!
//! Trajectories are resampled with replacement; each resample's mean monitor curve is
//! equidistributed again, and the interval of each knot is the central `confidence` percentile
//! range of its resampled values (linear interpolation between order statistics).

use cbs_core::rng::{stream, Purpose};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::equidistribute::{check_knots, cumulative, knots_from_cumulative, SplitMode};
use crate::error::{Result, SplitError};

/// A knot with its bootstrap interval, `lo ≤ knot ≤ hi`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnotInterval {
    /// Point estimate from all trajectories.
    pub knot: f64,
    pub lo: f64,
    pub hi: f64,
}

impl KnotInterval {
    /// `hi − lo`.
    pub fn width(&self) -> f64 {
        self.hi - self.lo
    }
}

/// Default confidence level of [`bootstrap_knots`].
pub const DEFAULT_CONFIDENCE: f64 = 0.9;

/// Percentile (in `[0, 1]`) of sorted values, interpolating linearly between order statistics.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(sorted.len() - 1);
    sorted[i] + (pos - i as f64) * (sorted[j] - sorted[i])
}

/// Knots of the mean curve over trajectories `idx` (`None`: all).
fn mean_curve(per: &[f32], k: usize, g: usize, idx: Option<&[usize]>) -> Vec<f64> {
    let mut sum = vec![0f64; g];
    let mut add = |row: usize| {
        for (s, &m) in sum.iter_mut().zip(&per[row * g..(row + 1) * g]) {
            *s += m as f64;
        }
    };
    match idx {
        Some(idx) => idx.iter().for_each(|&r| add(r)),
        None => (0..k).for_each(add),
    }
    sum.iter_mut().for_each(|s| *s /= k as f64);
    sum
}

/// Bootstrap the knots of `n_experts` experts from per-trajectory cell masses.
///
/// `per_trajectory` is `K × G` row-major (`G = grid.len() − 1`). `knot` is the estimate from
/// all `K` trajectories; `[lo, hi]` is the central `confidence` percentile interval over
/// `resamples` resamples, widened if needed so that it contains `knot` (a percentile interval
/// need not contain the point estimate when the bootstrap distribution is skewed). A resample
/// whose knots coincide is an error, like for the point estimate.
pub fn bootstrap_knots(
    grid: &[f64],
    per_trajectory: &[f32],
    n_experts: usize,
    mode: SplitMode,
    resamples: usize,
    confidence: f64,
    seed: u64,
) -> Result<Vec<KnotInterval>> {
    if n_experts < 1 {
        return Err(SplitError::NoExperts(n_experts));
    }
    if grid.len() < 2 {
        return Err(SplitError::GridTooShort(grid.len()));
    }
    let g = grid.len() - 1;
    if per_trajectory.is_empty() || !per_trajectory.chunks_exact(g).remainder().is_empty() {
        return Err(SplitError::InvalidOption {
            name: "per_trajectory",
            value: format!("{} values", per_trajectory.len()),
            reason: format!(
                "must be a non-empty K × {g} matrix (one mass per trajectory and grid cell)"
            ),
        });
    }
    if resamples == 0 {
        return Err(SplitError::InvalidOption {
            name: "resamples",
            value: "0".into(),
            reason: "need at least one resample".into(),
        });
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(SplitError::InvalidOption {
            name: "confidence",
            value: confidence.to_string(),
            reason: "must be strictly between 0 and 1".into(),
        });
    }
    let k = per_trajectory.len() / g;
    let point = {
        let mass = mean_curve(per_trajectory, k, g, None);
        let c = cumulative(grid, &mass)?;
        let knots = knots_from_cumulative(grid, &c, n_experts, mode);
        check_knots(grid, &knots, n_experts)?;
        knots
    };
    let mut rng = stream(seed, Purpose::Bootstrap, 0);
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); point.len()];
    let mut idx = vec![0usize; k];
    for _ in 0..resamples {
        idx.iter_mut().for_each(|i| *i = rng.random_range(0..k));
        let mass = mean_curve(per_trajectory, k, g, Some(&idx));
        let c = cumulative(grid, &mass)?;
        let knots = knots_from_cumulative(grid, &c, n_experts, mode);
        check_knots(grid, &knots, n_experts)?;
        for (s, kn) in samples.iter_mut().zip(knots) {
            s.push(kn);
        }
    }
    let alpha = 0.5 * (1.0 - confidence);
    Ok(point
        .into_iter()
        .zip(samples)
        .map(|(knot, mut s)| {
            s.sort_by(f64::total_cmp);
            KnotInterval {
                knot,
                lo: percentile(&s, alpha).min(knot),
                hi: percentile(&s, 1.0 - alpha).max(knot),
            }
        })
        .collect())
}
