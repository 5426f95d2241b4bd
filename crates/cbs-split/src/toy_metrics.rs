//! Sample quality on toy mixtures: mean log-likelihood under the true mixture and the sliced
//! Wasserstein-2 distance to true samples.

use cbs_core::rng::{stream, Purpose};
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::{GmmOracle, Result, SplitError};

#[derive(Clone, Debug, Serialize)]
pub struct ToyMetrics {
    pub samples: usize,
    /// Mean of `log p(x)` over the samples, `p` the true mixture density.
    pub mean_log_likelihood: f64,
    /// Same for fresh true samples: the value a perfect sampler reaches (up to noise).
    pub reference_log_likelihood: f64,
    /// Sliced W2 to as many fresh true samples, over `projections` random directions.
    pub sliced_w2: f64,
    pub projections: usize,
}

/// `SW2(X, Y) = sqrt(mean_θ W2²(θᵀX, θᵀY))`, each 1-D W2 from sorted projections (equal sizes).
pub fn sliced_w2(x: &[f64], y: &[f64], dim: usize, projections: usize, seed: u64) -> f64 {
    let n = x.len() / dim;
    let mut rng = stream(seed, Purpose::ToyMetrics, 0);
    let mut total = 0.0;
    for _ in 0..projections {
        let mut theta: Vec<f64> = (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect();
        let norm = theta.iter().map(|v| v * v).sum::<f64>().sqrt();
        theta.iter_mut().for_each(|v| *v /= norm);
        let project = |p: &[f64]| -> Vec<f64> {
            let mut v: Vec<f64> = p
                .chunks_exact(dim)
                .map(|r| r.iter().zip(&theta).map(|(a, b)| a * b).sum())
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v
        };
        let (px, py) = (project(x), project(y));
        total += px
            .iter()
            .zip(&py)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            / n as f64;
    }
    (total / projections as f64).sqrt()
}

/// Evaluate `n × dim` samples (row-major) against the mixture.
pub fn evaluate(
    oracle: &GmmOracle,
    samples: &[f64],
    projections: usize,
    seed: u64,
) -> Result<ToyMetrics> {
    let d = oracle.dim();
    if samples.is_empty() || !samples.len().is_multiple_of(d) {
        return Err(SplitError::DimensionMismatch {
            what: "samples".into(),
            expected: d,
            got: samples.len(),
        });
    }
    let n = samples.len() / d;
    let mean_ll = |pts: &[f64]| -> Result<f64> {
        let mut s = 0.0;
        for p in pts.chunks_exact(d) {
            s += oracle.log_density(p)?;
        }
        Ok(s / (pts.len() / d) as f64)
    };
    let reference = oracle.sample(n, seed ^ 0x5eed);
    Ok(ToyMetrics {
        samples: n,
        mean_log_likelihood: mean_ll(samples)?,
        reference_log_likelihood: mean_ll(&reference)?,
        sliced_w2: sliced_w2(samples, &reference, d, projections, seed),
        projections,
    })
}
