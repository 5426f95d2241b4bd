//! Bootstrap intervals of the sample metrics, and paired differences between two sample sets.
//!
//! A replicate draws the sample indices with replacement (ChaCha8, `Purpose::MetricBootstrap`,
//! counter = replicate number), recomputes the metric on those rows, and the interval is the
//! percentile interval of the replicates. The reference side stays fixed: the intervals say how
//! much a metric moves with the draw of the *samples*, not of the test set.
//!
//! - FID: mean and covariance of the resampled features against the reference statistics.
//! - Inception Score: of the resampled logits (same splits).
//! - Precision: the mean of the per-sample "inside the reference manifold" indicators over the
//!   resampled rows (the reference radii do not depend on the samples).
//! - Recall: the per-reference-point indicators depend on the samples' own k-NN radii, which
//!   duplicated rows would shrink to 0; so recall is bootstrapped over the reference points'
//!   indicators instead (its sampling error from the finite reference set).
//!
//! Paired differences: two sample sets drawn from the same noise and labels, row for row (two
//! arms of an experiment sampled with one seed), are resampled with the *same* indices, so the
//! interval of `FID(a) − FID(b)` excludes the noise they share.

use candle_core::{Device, Tensor};
use cbs_core::rng::{stream, Purpose};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::features::Features;
use crate::fid::Stats;
use crate::metrics::{covered, inception_score, knn_sq_radii};
use crate::{EvalError, Result};

/// A point estimate and its bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// How many replicates, at which confidence, from which seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapOptions {
    pub replicates: usize,
    /// E.g. 0.95 for a 95% interval.
    pub confidence: f64,
    pub seed: u64,
    /// k of the precision/recall radii.
    pub k: usize,
    /// Inception Score splits.
    pub splits: usize,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self {
            replicates: 200,
            confidence: 0.95,
            seed: 0,
            k: 3,
            splits: 10,
        }
    }
}

/// The metrics of one sample set with their intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapReport {
    pub fid: Interval,
    pub inception_score: Option<Interval>,
    pub precision: Interval,
    pub recall: Interval,
    pub num_samples: usize,
    pub num_reference: usize,
    pub replicates: usize,
    pub confidence: f64,
}

/// Replicate `r`'s indices: `n` draws with replacement from `0..n`.
pub fn resample_indices(n: usize, replicate: usize, seed: u64) -> Vec<u32> {
    let mut rng = stream(seed, Purpose::MetricBootstrap, replicate as u64);
    (0..n).map(|_| rng.random_range(0..n as u32)).collect()
}

/// The percentile interval of `values` at `confidence` (linear interpolation between order
/// statistics, numpy's default); NaN-free input expected.
pub fn percentile_interval(values: &[f64], confidence: f64) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let pos = p * (v.len() - 1) as f64;
        let (i, f) = (pos.floor() as usize, pos - pos.floor());
        let j = (i + 1).min(v.len() - 1);
        v[i] * (1.0 - f) + v[j] * f
    };
    let a = (1.0 - confidence) / 2.0;
    (q(a), q(1.0 - a))
}

fn check(opts: &BootstrapOptions) -> Result<()> {
    if opts.replicates == 0 || !(opts.confidence > 0.0 && opts.confidence < 1.0) {
        return Err(EvalError::Invalid(format!(
            "bootstrap: {} replicates at confidence {} (expected ≥ 1 and a confidence in (0, 1))",
            opts.replicates, opts.confidence
        )));
    }
    Ok(())
}

fn interval(value: f64, reps: &[f64], confidence: f64) -> Interval {
    let (lo, hi) = percentile_interval(reps, confidence);
    Interval { value, lo, hi }
}

fn mean_of(ind: &[bool], idx: &[u32]) -> f64 {
    idx.iter().filter(|&&i| ind[i as usize]).count() as f64 / idx.len().max(1) as f64
}

/// The fixed side of [`bootstrap_metrics`], computed once for many sample sets: features,
/// their statistics and k-NN radii.
pub struct Reference {
    pub features: Features,
    pub stats: Stats,
    pub sq_radii: Vec<f64>,
    pub k: usize,
}

impl Reference {
    pub fn new(features: Features, k: usize, device: &Device) -> Result<Self> {
        let stats = Stats::from_features(&features.pool)?;
        let sq_radii = knn_sq_radii(&features.pool, k, device)?;
        Ok(Self {
            features,
            stats,
            sq_radii,
            k,
        })
    }
}

/// FID, Inception Score (when `samples.logits` has at least `splits` rows), precision and
/// recall of `samples` against `reference`, each with its bootstrap interval.
pub fn bootstrap_metrics(
    samples: &Features,
    reference: &Reference,
    opts: &BootstrapOptions,
    device: &Device,
) -> Result<BootstrapReport> {
    check(opts)?;
    if reference.k != opts.k {
        return Err(EvalError::Invalid(format!(
            "the reference radii are for k = {}, the options ask for k = {}",
            reference.k, opts.k
        )));
    }
    let reference_stats = &reference.stats;
    let (n, _) = samples.pool.dims2()?;
    let (nr, _) = reference.features.pool.dims2()?;
    if n <= opts.k || nr <= opts.k {
        return Err(EvalError::Invalid(format!(
            "bootstrap metrics need more than k = {} rows on each side (samples {n}, reference \
             {nr})",
            opts.k
        )));
    }
    let fid_of =
        |x: &Tensor| -> Result<f64> { Stats::from_features(x)?.frechet_distance(reference_stats) };
    let is_of = |l: &Tensor| -> Result<f64> { Ok(inception_score(l, opts.splits)?.mean) };
    let logits = samples
        .logits
        .as_ref()
        .filter(|l| l.dims()[0] >= opts.splits);
    let smp_r = knn_sq_radii(&samples.pool, opts.k, device)?;
    let prec_ind = covered(
        &samples.pool,
        &reference.features.pool,
        &reference.sq_radii,
        device,
    )?;
    let rec_ind = covered(&reference.features.pool, &samples.pool, &smp_r, device)?;
    let all: Vec<u32> = (0..n as u32).collect();
    let all_ref: Vec<u32> = (0..nr as u32).collect();
    let fid = fid_of(&samples.pool)?;
    let is = logits.map(is_of).transpose()?;
    let (mut fids, mut iss, mut precs, mut recs) = (vec![], vec![], vec![], vec![]);
    for r in 0..opts.replicates {
        let idx = resample_indices(n, r, opts.seed);
        let it = Tensor::from_slice(&idx, n, samples.pool.device())?;
        fids.push(fid_of(&samples.pool.index_select(&it, 0)?)?);
        if let Some(l) = logits {
            iss.push(is_of(&l.index_select(&it.to_device(l.device())?, 0)?)?);
        }
        precs.push(mean_of(&prec_ind, &idx));
        recs.push(mean_of(&rec_ind, &resample_indices(nr, r, opts.seed ^ 1)));
    }
    Ok(BootstrapReport {
        fid: interval(fid, &fids, opts.confidence),
        inception_score: is.map(|v| interval(v, &iss, opts.confidence)),
        precision: interval(mean_of(&prec_ind, &all), &precs, opts.confidence),
        recall: interval(mean_of(&rec_ind, &all_ref), &recs, opts.confidence),
        num_samples: n,
        num_reference: nr,
        replicates: opts.replicates,
        confidence: opts.confidence,
    })
}

/// `FID(a) − FID(b)` against `reference`, and the replicates of that difference with both
/// sets resampled by the same indices (rows of `a` and `b` paired: same noise and label).
pub fn paired_fid_difference(
    a: &Tensor,
    b: &Tensor,
    reference: &Stats,
    opts: &BootstrapOptions,
) -> Result<(f64, Vec<f64>)> {
    check(opts)?;
    let (n, _) = a.dims2()?;
    if b.dims2()?.0 != n {
        return Err(EvalError::Invalid(format!(
            "paired sample sets differ in size: {n} and {}",
            b.dims2()?.0
        )));
    }
    let fid = |x: &Tensor| -> Result<f64> { Stats::from_features(x)?.frechet_distance(reference) };
    let value = fid(a)? - fid(b)?;
    let mut reps = Vec::with_capacity(opts.replicates);
    for r in 0..opts.replicates {
        let idx = Tensor::from_vec(resample_indices(n, r, opts.seed), n, a.device())?;
        reps.push(fid(&a.index_select(&idx, 0)?)? - fid(&b.index_select(&idx, 0)?)?);
    }
    Ok((value, reps))
}
