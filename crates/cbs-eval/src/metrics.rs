//! Inception Score, precision/recall, KID, and the whole evaluation of two sides.
//!
//! All arithmetic is `f64`. Pairwise products of feature rows (precision/recall, KID, the
//! covariances) run in blocks on the given device, so 50 000 × 2048 features never need an
//! N × N matrix in memory.
//!
//! - **Inception Score** (Salimans et al. 2016, their `inception_score.py`): softmax of the
//!   logits, rows split into `splits` consecutive parts with boundaries ⌊i·N/splits⌋ (no row
//!   dropped, no shuffling), per part exp(mean KL(p(y|x) ‖ p(y))) with p(y) the part's mean;
//!   reported as mean and standard deviation (ddof = 0, numpy's default) over the parts.
//! - **Precision / recall** (Kynkäänniemi et al. 2019): the radius of a point is the distance
//!   to its k-th nearest neighbour within its own set (k = 3; the point itself is the 0-th).
//!   Precision = fraction of samples within the radius of some reference point; recall =
//!   fraction of reference points within the radius of some sample. Euclidean distances.
//! - **KID** (Bińkowski et al. 2018): unbiased MMD² with the kernel k(x, y) = (xᵀy/d + 1)³,
//!   averaged over `kid_subsets` random subsets (without replacement) of min(`kid_subset_size`,
//!   N_samples, N_reference) rows from each side; standard deviation over subsets (ddof = 0),
//!   as torch-fidelity reports them. Subsets come from ChaCha8 seeded with `seed`.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::features::Features;
use crate::fid::Stats;
use crate::{EvalError, Result};

/// Rows per block of pairwise computations (queries).
const ROW_BLOCK: usize = 1024;
/// Columns per block of pairwise computations (references): ROW_BLOCK × COL_BLOCK f64 = 32 MB.
const COL_BLOCK: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

fn mean_std(v: &[f64]) -> MeanStd {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    MeanStd {
        mean,
        std: var.sqrt(),
    }
}

/// Inception Score of logits `[N, K]` over `splits` parts (see the module documentation).
pub fn inception_score(logits: &Tensor, splits: usize) -> Result<MeanStd> {
    let (n, k) = logits.dims2()?;
    if splits == 0 || n < splits {
        return Err(EvalError::Invalid(format!(
            "the Inception Score needs at least as many images as splits ({splits}), got {n}"
        )));
    }
    if k == 0 {
        return Err(EvalError::Invalid("logits with 0 classes".into()));
    }
    let mut scores = Vec::with_capacity(splits);
    for i in 0..splits {
        let (lo, hi) = (i * n / splits, (i + 1) * n / splits);
        let rows = hi - lo;
        let v = logits
            .narrow(0, lo, rows)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        if v.iter().any(|x| x.is_nan()) {
            return Err(EvalError::Invalid("logits contain NaN".into()));
        }
        // log p(y|x) by a stable log-softmax, and p(y) = mean of p(y|x).
        let mut logp = v;
        let mut py = vec![0.0f64; k];
        for row in logp.chunks_mut(k) {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            for (j, x) in row.iter_mut().enumerate() {
                *x -= lse;
                py[j] += x.exp();
            }
        }
        let log_py: Vec<f64> = py.iter().map(|p| (p / rows as f64).ln()).collect();
        let mut kl_sum = 0.0;
        for row in logp.chunks(k) {
            for (j, &lp) in row.iter().enumerate() {
                let p = lp.exp();
                if p > 0.0 {
                    kl_sum += p * (lp - log_py[j]);
                }
            }
        }
        scores.push((kl_sum / rows as f64).exp());
    }
    Ok(mean_std(&scores))
}

/// Rows `start .. start + len` of `x` as f64 on `device`.
fn block(x: &Tensor, start: usize, len: usize, device: &Device) -> Result<Tensor> {
    Ok(x.narrow(0, start, len)?
        .to_device(device)?
        .to_dtype(DType::F64)?)
}

/// Squared Euclidean distances `[ra, rb]` between the rows of two f64 blocks.
fn sq_dists(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let an = a.sqr()?.sum_keepdim(1)?; // [ra, 1]
    let bn = b.sqr()?.sum_keepdim(1)?.t()?; // [1, rb]
    let ab = a.matmul(&b.t()?)?;
    Ok(an.broadcast_add(&bn)?.sub(&(ab * 2.0)?)?.relu()?)
}

/// Squared distance of every row of `x` to its k-th nearest neighbour in `x` (the row itself
/// being the 0-th).
pub fn knn_sq_radii(x: &Tensor, k: usize, device: &Device) -> Result<Vec<f64>> {
    let (n, _) = x.dims2()?;
    if n <= k {
        return Err(EvalError::Invalid(format!(
            "k-nearest-neighbour radii with k = {k} need more than {k} points, got {n}"
        )));
    }
    let kk = k + 1;
    let mut radii = vec![0.0; n];
    for rs in (0..n).step_by(ROW_BLOCK) {
        let r = ROW_BLOCK.min(n - rs);
        let a = block(x, rs, r, device)?;
        let mut best = vec![f64::INFINITY; r * kk];
        for cs in (0..n).step_by(COL_BLOCK) {
            let c = COL_BLOCK.min(n - cs);
            let b = block(x, cs, c, device)?;
            let d2 = sq_dists(&a, &b)?.flatten_all()?.to_vec1::<f64>()?;
            for (row, bst) in d2.chunks(c).zip(best.chunks_mut(kk)) {
                for &v in row {
                    if v < bst[kk - 1] {
                        // Insert into the sorted list of the kk smallest.
                        let mut j = kk - 1;
                        while j > 0 && bst[j - 1] > v {
                            bst[j] = bst[j - 1];
                            j -= 1;
                        }
                        bst[j] = v;
                    }
                }
            }
        }
        for (i, bst) in best.chunks(kk).enumerate() {
            radii[rs + i] = bst[k];
        }
    }
    Ok(radii)
}

/// Fraction of the rows of `queries` within the radius of at least one row of `refs`
/// (`ref_sq_radii` squared).
fn fraction_covered(
    queries: &Tensor,
    refs: &Tensor,
    ref_sq_radii: &[f64],
    device: &Device,
) -> Result<f64> {
    let hit = covered(queries, refs, ref_sq_radii, device)?;
    Ok(hit.iter().filter(|&&h| h).count() as f64 / hit.len().max(1) as f64)
}

/// For every row of `queries`: is it within the radius of at least one row of `refs`
/// (`ref_sq_radii` squared)? Precision is the mean of this over the samples, recall over the
/// reference points, so resampling these indicators bootstraps both.
pub fn covered(
    queries: &Tensor,
    refs: &Tensor,
    ref_sq_radii: &[f64],
    device: &Device,
) -> Result<Vec<bool>> {
    let (nq, _) = queries.dims2()?;
    let (nr, _) = refs.dims2()?;
    if ref_sq_radii.len() != nr {
        return Err(EvalError::Invalid(format!(
            "{} radii for {nr} reference rows",
            ref_sq_radii.len()
        )));
    }
    let mut all = Vec::with_capacity(nq);
    for qs in (0..nq).step_by(ROW_BLOCK) {
        let q = ROW_BLOCK.min(nq - qs);
        let a = block(queries, qs, q, device)?;
        let mut hit = vec![false; q];
        for cs in (0..nr).step_by(COL_BLOCK) {
            let c = COL_BLOCK.min(nr - cs);
            let b = block(refs, cs, c, device)?;
            let rad = Tensor::from_slice(&ref_sq_radii[cs..cs + c], (1, c), device)?;
            // min over references of d² − r²: ≤ 0 iff inside some ball.
            let m = sq_dists(&a, &b)?
                .broadcast_sub(&rad)?
                .min(1)?
                .to_vec1::<f64>()?;
            for (h, v) in hit.iter_mut().zip(m) {
                *h |= v <= 0.0;
            }
        }
        all.extend(hit);
    }
    Ok(all)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
}

/// Improved precision and recall of `samples` against `reference` features (`[N, D]`),
/// with k-th-nearest-neighbour radii.
pub fn precision_recall(
    reference: &Tensor,
    samples: &Tensor,
    k: usize,
    device: &Device,
) -> Result<PrecisionRecall> {
    let (_, d1) = reference.dims2()?;
    let (_, d2) = samples.dims2()?;
    if d1 != d2 {
        return Err(EvalError::Invalid(format!(
            "feature dimensions differ: reference {d1}, samples {d2}"
        )));
    }
    let ref_r = knn_sq_radii(reference, k, device)?;
    let smp_r = knn_sq_radii(samples, k, device)?;
    Ok(PrecisionRecall {
        precision: fraction_covered(samples, reference, &ref_r, device)?,
        recall: fraction_covered(reference, samples, &smp_r, device)?,
    })
}

/// (xᵀy/d + 1)³ summed over all pairs, for f64 blocks.
fn poly_kernel_sum(x: &Tensor, y: &Tensor, d: usize) -> Result<f64> {
    let t = ((x.matmul(&y.t()?)? / d as f64)? + 1.0)?;
    Ok(t.sqr()?.mul(&t)?.sum_all()?.to_scalar::<f64>()?)
}

/// Σᵢ (xᵢᵀxᵢ/d + 1)³ (the diagonal of the kernel matrix).
fn poly_kernel_diag_sum(x: &Tensor, d: usize) -> Result<f64> {
    let t = ((x.sqr()?.sum(1)? / d as f64)? + 1.0)?;
    Ok(t.sqr()?.mul(&t)?.sum_all()?.to_scalar::<f64>()?)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    pub subsets: usize,
    pub subset_size: usize,
}

/// Kernel Inception Distance between `samples` and `reference` features (see the module
/// documentation).
pub fn kid(
    samples: &Tensor,
    reference: &Tensor,
    subsets: usize,
    subset_size: usize,
    seed: u64,
    device: &Device,
) -> Result<Kid> {
    let (n1, d) = samples.dims2()?;
    let (n2, d2) = reference.dims2()?;
    if d != d2 {
        return Err(EvalError::Invalid(format!(
            "feature dimensions differ: samples {d}, reference {d2}"
        )));
    }
    let m = subset_size.min(n1).min(n2);
    if m < 2 || subsets == 0 {
        return Err(EvalError::Invalid(format!(
            "KID needs subsets of at least 2 rows and at least one subset (got subset size {m}, \
             {subsets} subsets)"
        )));
    }
    let mut rng = cbs_core::rng::stream(seed, cbs_core::rng::Purpose::KidSubsets, 0);
    let mut pick = |x: &Tensor, n: usize| -> Result<Tensor> {
        let idx: Vec<u32> = rand::seq::index::sample(&mut rng, n, m)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let idx = Tensor::from_vec(idx, m, x.device())?;
        Ok(x.index_select(&idx, 0)?
            .to_device(device)?
            .to_dtype(DType::F64)?)
    };
    let mf = m as f64;
    let mut mmds = Vec::with_capacity(subsets);
    for _ in 0..subsets {
        let x = pick(samples, n1)?;
        let y = pick(reference, n2)?;
        let kxx = poly_kernel_sum(&x, &x, d)? - poly_kernel_diag_sum(&x, d)?;
        let kyy = poly_kernel_sum(&y, &y, d)? - poly_kernel_diag_sum(&y, d)?;
        let kxy = poly_kernel_sum(&x, &y, d)?;
        mmds.push((kxx + kyy) / (mf * (mf - 1.0)) - 2.0 * kxy / (mf * mf));
    }
    let ms = mean_std(&mmds);
    Ok(Kid {
        mean: ms.mean,
        std: ms.std,
        subsets,
        subset_size: m,
    })
}

/// One side of an evaluation: statistics always, features when computed from images.
#[derive(Debug, Clone)]
pub struct Side {
    pub pool: Stats,
    pub spatial: Option<Stats>,
    pub features: Option<Features>,
}

impl Side {
    /// Statistics of the features (computed on `device`), keeping the features.
    pub fn from_features(features: Features, device: &Device) -> Result<Self> {
        let pool = Stats::from_features(&features.pool.to_device(device)?)?;
        let spatial = match &features.spatial {
            Some(s) => Some(Stats::from_features(&s.to_device(device)?)?),
            None => None,
        };
        Ok(Self {
            pool,
            spatial,
            features: Some(features),
        })
    }

    pub fn from_stats(pool: Stats, spatial: Option<Stats>) -> Self {
        Self {
            pool,
            spatial,
            features: None,
        }
    }

    /// Number of images (unknown for precomputed statistics).
    pub fn count(&self) -> Option<usize> {
        self.features.as_ref().map(|f| f.pool.dims()[0])
    }
}

/// Settings of [`evaluate`]; the defaults are the standard ones.
#[derive(Debug, Clone)]
pub struct MetricOptions {
    /// Inception Score splits.
    pub splits: usize,
    /// k of the precision/recall radii.
    pub k: usize,
    pub kid_subsets: usize,
    pub kid_subset_size: usize,
    /// Seed of the KID subsets.
    pub seed: u64,
}

impl Default for MetricOptions {
    fn default() -> Self {
        Self {
            splits: 10,
            k: 3,
            kid_subsets: 100,
            kid_subset_size: 1000,
            seed: 0,
        }
    }
}

/// Everything `cbs eval-fid` reports. Metrics that need features of a side given as
/// statistics, or more images than given (IS: ≥ `splits`; precision/recall: > k on each side;
/// KID: ≥ 2 on each side), are `None` (JSON `null`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub fid: f64,
    /// Fréchet distance of the spatial features (both sides need them).
    pub sfid: Option<f64>,
    /// Of the samples.
    pub inception_score: Option<MeanStd>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub kid: Option<f64>,
    pub kid_std: Option<f64>,
    pub num_samples: Option<usize>,
    pub num_reference: Option<usize>,
    pub feature_dim: usize,
    /// The feature space (e.g. "Inception-v3 pool3 (pytorch-fid)").
    pub features: String,
}

/// All metrics of `samples` against `reference` that their forms allow.
pub fn evaluate(
    samples: &Side,
    reference: &Side,
    opts: &MetricOptions,
    feature_space: &str,
    device: &Device,
) -> Result<Report> {
    let (d1, d2) = (samples.pool.dim(), reference.pool.dim());
    if d1 != d2 {
        return Err(EvalError::Invalid(format!(
            "feature dimensions differ: samples {d1}, reference {d2} (statistics from another \
             network?)"
        )));
    }
    let fid = samples.pool.frechet_distance(&reference.pool)?;
    let sfid = match (&samples.spatial, &reference.spatial) {
        (Some(a), Some(b)) if a.dim() == b.dim() => Some(a.frechet_distance(b)?),
        (Some(a), Some(b)) => {
            return Err(EvalError::Invalid(format!(
                "spatial (sFID) feature dimensions differ: samples {}, reference {}",
                a.dim(),
                b.dim()
            )))
        }
        _ => None,
    };
    // Metrics that need more images than there are are left out (None), not errors.
    let inception_score = match samples.features.as_ref().and_then(|f| f.logits.as_ref()) {
        Some(l) if l.dim(0)? >= opts.splits.max(1) => Some(inception_score(l, opts.splits)?),
        _ => None,
    };
    let (mut precision, mut recall, mut kid_mean, mut kid_std) = (None, None, None, None);
    if let (Some(fs), Some(fr)) = (&samples.features, &reference.features) {
        let (ns, nr) = (fs.pool.dim(0)?, fr.pool.dim(0)?);
        if ns > opts.k && nr > opts.k {
            let pr = precision_recall(&fr.pool, &fs.pool, opts.k, device)?;
            precision = Some(pr.precision);
            recall = Some(pr.recall);
        }
        if ns.min(nr).min(opts.kid_subset_size) >= 2 && opts.kid_subsets > 0 {
            let k = kid(
                &fs.pool,
                &fr.pool,
                opts.kid_subsets,
                opts.kid_subset_size,
                opts.seed,
                device,
            )?;
            kid_mean = Some(k.mean);
            kid_std = Some(k.std);
        }
    }
    Ok(Report {
        fid,
        sfid,
        inception_score,
        precision,
        recall,
        kid: kid_mean,
        kid_std,
        num_samples: samples.count(),
        num_reference: reference.count(),
        feature_dim: d1,
        features: feature_space.to_string(),
    })
}
