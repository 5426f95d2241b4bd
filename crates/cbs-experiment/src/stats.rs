//! Summaries over seeds: mean, standard deviation and Student-t intervals.

use serde::{Deserialize, Serialize};

/// Mean, sample standard deviation (n − 1) and the two-sided Student-t interval of the mean.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedSummary {
    pub n: usize,
    pub mean: f64,
    /// NaN for one value.
    pub std: f64,
    /// The interval of the mean (NaN for one value).
    pub lo: f64,
    pub hi: f64,
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (95% two-sided), from the
/// standard table; the normal quantile beyond 30.
pub fn t_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.960,
    }
}

/// Mean ± 95% Student-t interval of `values` (NaNs are not expected; an empty input gives NaN).
pub fn summarize(values: &[f64]) -> SeedSummary {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        f64::NAN
    };
    let half = t_975(n.saturating_sub(1)) * std / (n as f64).sqrt();
    SeedSummary {
        n,
        mean,
        std,
        lo: mean - half,
        hi: mean + half,
    }
}
