//! Feature statistics and the Fréchet distance between two Gaussians (FID, sFID).
//!
//! Everything here is `f64`, like pytorch-fid (numpy). The statistics are the mean and the
//! unbiased covariance of the feature rows (`np.mean(x, 0)`, `np.cov(x, rowvar=False)`).
//!
//! # The matrix square root
//!
//! FID = ||μ1 − μ2||² + Tr(Σ1) + Tr(Σ2) − 2·Tr((Σ1Σ2)^½). pytorch-fid computes `(Σ1Σ2)^½`
//! with `scipy.linalg.sqrtm` (a Schur method on the non-symmetric product) and only needs its
//! trace. Here the trace is computed without forming the non-symmetric product:
//!
//! 1. Factor Σ1 = F Fᵀ with F of size D × r, r the numerical rank of Σ1: by Cholesky with
//!    diagonal pivoting stopped at LAPACK's tolerance D·ε·max diag(Σ1) (default), or from the
//!    symmetric eigendecomposition Σ1 = V Λ Vᵀ with F = V₊ Λ₊^½, eigenvalues ≤ 0 (round-off of a
//!    PSD matrix) dropped ([`Factorization::Eigen`], a cross-check, about 3× slower).
//! 2. Σ1Σ2 = F (Fᵀ Σ2) has the same non-zero eigenvalues as the symmetric positive
//!    semi-definite r × r matrix M = Fᵀ Σ2 F (similar to Σ1^½ Σ2 Σ1^½).
//! 3. Tr((Σ1Σ2)^½) = Σᵢ √λᵢ(M) (symmetric eigenvalues), round-off negatives clamped to 0.
//!
//! Singular covariances (fewer samples than dimensions) need no special case, whereas `sqrtm`
//! of the non-symmetric product loses about half of the digits there and may even return
//! non-finite values. In the golden tests the two factorizations and SciPy agree to about
//! 1e-8 relative for singular covariances (the square root amplifies round-off in the null
//! space of Σ1) and to about 1e-14 otherwise.
//!
//! **Fallback** (pytorch-fid's): when an eigendecomposition does not converge, ε·I with
//! ε = 1e-6 is added to both covariances inside the square root and the computation is
//! repeated once — pytorch-fid does the same when `sqrtm` returns non-finite values; the
//! traces Tr(Σ1) + Tr(Σ2) stay those of the given matrices. It is reported through
//! [`FrechetDetails::offset`] and is a safety net: implicit QR converges for finite symmetric
//! input in practice, singular covariances included.
//!
//! The eigenvalues use `nalgebra` (Householder tridiagonalisation + implicit QR; products
//! through `matrixmultiply`), single-threaded: D = 2048 took about 5 s in an optimised build
//! on a 2-core machine (about 13 s with [`Factorization::Eigen`]). nalgebra's generic code is compiled with this crate's
//! optimisation level, so an unoptimised (dev) build is much slower.

use std::path::Path;

use candle_core::{DType, Tensor};
use cbs_data::{NpyArray, NpzArchive};
use nalgebra::{DMatrix, SymmetricEigen};

use crate::{EvalError, Result};

/// The ε of the pytorch-fid fallback (added to both diagonals).
pub const FALLBACK_EPS: f64 = 1e-6;

/// Mean `mu` [D] and covariance `sigma` [D, D] (row-major) of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub mu: Vec<f64>,
    pub sigma: Vec<f64>,
}

impl Stats {
    /// Checks that `sigma` is `D × D` for `D = mu.len()` and that everything is finite.
    pub fn new(mu: Vec<f64>, sigma: Vec<f64>) -> Result<Self> {
        let d = mu.len();
        if d == 0 {
            return Err(EvalError::Invalid("statistics of dimension 0".into()));
        }
        if sigma.len() != d * d {
            return Err(EvalError::Invalid(format!(
                "mu has {d} entries but sigma has {} (expected {d} × {d})",
                sigma.len()
            )));
        }
        if mu.iter().chain(&sigma).any(|v| !v.is_finite()) {
            return Err(EvalError::Invalid(
                "statistics contain NaN or infinite values".into(),
            ));
        }
        Ok(Self { mu, sigma })
    }

    /// Feature dimension D.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Mean and unbiased covariance (divisor N − 1, like `np.cov(x, rowvar=False)`) of the
    /// rows of `features` [N, D]. Computed in f64 on the tensor's device in chunks of rows
    /// (mean first, then the centred cross products), so a CUDA tensor is reduced on the GPU.
    pub fn from_features(features: &Tensor) -> Result<Self> {
        let (n, d) = features.dims2()?;
        if n < 2 {
            return Err(EvalError::Invalid(format!(
                "a covariance needs at least 2 feature vectors, got {n}"
            )));
        }
        let chunk = (1 << 22) / d.max(1) + 1; // ≈ 32 MB of f64 per chunk
        let mut sum = Tensor::zeros((1, d), DType::F64, features.device())?;
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let x = features.narrow(0, start, len)?.to_dtype(DType::F64)?;
            sum = (sum + x.sum_keepdim(0)?)?;
        }
        let mean = (sum / n as f64)?;
        let mut acc = Tensor::zeros((d, d), DType::F64, features.device())?;
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let x = features
                .narrow(0, start, len)?
                .to_dtype(DType::F64)?
                .broadcast_sub(&mean)?;
            acc = (acc + x.t()?.matmul(&x)?)?;
        }
        let sigma = (acc / (n - 1) as f64)?;
        let mu = mean.flatten_all()?.to_vec1::<f64>()?;
        let mut sigma = sigma.flatten_all()?.to_vec1::<f64>()?;
        symmetrize(&mut sigma, d);
        Stats::new(mu, sigma)
    }

    /// Fréchet distance to `other` (see [`frechet_distance`]).
    pub fn frechet_distance(&self, other: &Stats) -> Result<f64> {
        frechet_distance(&self.mu, &self.sigma, &other.mu, &other.sigma)
    }
}

/// How Σ1 is factored as F Fᵀ for the square root (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factorization {
    /// Cholesky with diagonal pivoting, stopped at the numerical rank (the default; fast, also
    /// for singular Σ1).
    PivotedCholesky,
    /// F = V₊ Λ₊^½ from the symmetric eigendecomposition Σ1 = V Λ Vᵀ (eigenvalues ≤ 0, round-off
    /// of a PSD matrix, dropped). About 3× slower; kept as a cross-check.
    Eigen,
}

/// How a Fréchet distance was obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrechetDetails {
    pub distance: f64,
    /// ||μ1 − μ2||².
    pub mean_term: f64,
    /// Tr((Σ1Σ2)^½).
    pub trace_sqrt: f64,
    /// ε added to the diagonals by the fallback (0 when not needed).
    pub offset: f64,
    /// The factorization of Σ1 that was used.
    pub factorization: Factorization,
}

/// ||μ1 − μ2||² + Tr(Σ1) + Tr(Σ2) − 2·Tr((Σ1Σ2)^½) for row-major `D × D` covariances.
/// See the module documentation for the square root and the fallback.
pub fn frechet_distance(mu1: &[f64], sigma1: &[f64], mu2: &[f64], sigma2: &[f64]) -> Result<f64> {
    Ok(frechet_details(mu1, sigma1, mu2, sigma2)?.distance)
}

/// [`frechet_distance`] with its terms.
pub fn frechet_details(
    mu1: &[f64],
    sigma1: &[f64],
    mu2: &[f64],
    sigma2: &[f64],
) -> Result<FrechetDetails> {
    frechet_details_with(mu1, sigma1, mu2, sigma2, Factorization::PivotedCholesky)
}

/// [`frechet_details`] with a choice of factorization of Σ1.
pub fn frechet_details_with(
    mu1: &[f64],
    sigma1: &[f64],
    mu2: &[f64],
    sigma2: &[f64],
    prefer: Factorization,
) -> Result<FrechetDetails> {
    let d = mu1.len();
    if mu2.len() != d {
        return Err(EvalError::Invalid(format!(
            "the two sides have different feature dimensions ({d} and {})",
            mu2.len()
        )));
    }
    // Validates shapes and finiteness (never hand NaN to an unbounded iteration).
    let s1 = Stats::new(mu1.to_vec(), sigma1.to_vec())?;
    let s2 = Stats::new(mu2.to_vec(), sigma2.to_vec())?;
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    let (tr1, tr2) = (trace(&s1.sigma), trace(&s2.sigma));
    let ((trace_sqrt, factorization), offset) =
        match trace_sqrt_product(&s1.sigma, &s2.sigma, d, 0.0, prefer) {
            Some(t) => (t, 0.0),
            None => {
                let t = trace_sqrt_product(&s1.sigma, &s2.sigma, d, FALLBACK_EPS, prefer)
                    .ok_or_else(|| {
                        EvalError::Invalid(
                            "the eigendecomposition of the covariances did not converge, even \
                             with 1e-6 added to their diagonals"
                                .into(),
                        )
                    })?;
                (t, FALLBACK_EPS)
            }
        };
    // As in pytorch-fid, the fallback offset enters only the square-root term; the traces are
    // those of the given covariances.
    let distance = mean_term + tr1 + tr2 - 2.0 * trace_sqrt;
    Ok(FrechetDetails {
        distance,
        mean_term,
        trace_sqrt,
        offset,
        factorization,
    })
}

/// Tr((S1 S2)^½) for symmetric PSD S1, S2 (row-major d × d) with `eps` added to both
/// diagonals; `None` when an eigendecomposition does not converge.
fn trace_sqrt_product(
    s1: &[f64],
    s2: &[f64],
    d: usize,
    eps: f64,
    prefer: Factorization,
) -> Option<(f64, Factorization)> {
    let mut a = DMatrix::from_row_slice(d, d, s1);
    let mut b = DMatrix::from_row_slice(d, d, s2);
    for i in 0..d {
        a[(i, i)] += eps;
        b[(i, i)] += eps;
    }
    let a = symmetric(a);
    let b = symmetric(b);
    let f = match prefer {
        Factorization::PivotedCholesky => pivoted_cholesky(&a),
        Factorization::Eigen => eigen_factor(a)?,
    };
    let used = prefer;
    if f.ncols() == 0 {
        return Some((0.0, used));
    }
    // Σ1Σ2 = F (Fᵀ Σ2) has the non-zero eigenvalues of the symmetric PSD M = Fᵀ Σ2 F.
    let m = symmetric(f.transpose() * (&b * &f));
    if m.iter().any(|v| !v.is_finite()) {
        return None;
    }
    // Eigenvalues only (no iteration bound in nalgebra's API; the input is finite).
    let vals = m.symmetric_eigenvalues();
    Some((vals.iter().map(|&v| v.max(0.0).sqrt()).sum(), used))
}

/// Σ ≈ L Lᵀ with L of size d × r: Cholesky with diagonal pivoting (the largest remaining
/// Schur-complement diagonal first), stopped when that diagonal is ≤ d·ε·max diag(Σ) — LAPACK
/// `dpstrf`'s default tolerance, so r is the numerical rank of the PSD matrix Σ. Rows of L are
/// indexed like Σ (no permutation to undo). Cost ≈ d²r/2 multiply-adds.
fn pivoted_cholesky(a: &DMatrix<f64>) -> DMatrix<f64> {
    let d = a.nrows();
    let mut diag: Vec<f64> = (0..d).map(|i| a[(i, i)]).collect();
    let max_diag = diag.iter().cloned().fold(0.0, f64::max);
    let tol = d as f64 * f64::EPSILON * max_diag;
    let mut remaining: Vec<usize> = (0..d).collect();
    // Row i of L is l[i·d .. i·d + r] (row-major, so the dot products are contiguous).
    let mut l = vec![0.0f64; d * d];
    let mut r = 0;
    while let Some((pos, &q)) = remaining
        .iter()
        .enumerate()
        .max_by(|x, y| diag[*x.1].total_cmp(&diag[*y.1]))
    {
        let pivot = diag[q];
        if pivot.is_nan() || pivot <= tol {
            break;
        }
        remaining.swap_remove(pos);
        let lqq = pivot.sqrt();
        let lq: Vec<f64> = l[q * d..q * d + r].to_vec();
        l[q * d + r] = lqq;
        for &i in &remaining {
            let dot: f64 = l[i * d..i * d + r]
                .iter()
                .zip(&lq)
                .map(|(x, y)| x * y)
                .sum();
            let v = (a[(i, q)] - dot) / lqq;
            l[i * d + r] = v;
            diag[i] -= v * v;
        }
        r += 1;
    }
    DMatrix::from_fn(d, r, |i, j| l[i * d + j])
}

/// F = V₊ Λ₊^½ from Σ = V Λ Vᵀ, keeping the positive eigenvalues (negatives are round-off):
/// Σ = F Fᵀ. `None` when the eigendecomposition does not converge.
fn eigen_factor(a: DMatrix<f64>) -> Option<DMatrix<f64>> {
    let d = a.nrows();
    // Bounded iterations: implicit QR needs a few per eigenvalue.
    let eig = SymmetricEigen::try_new(a, f64::EPSILON, 100 * d.max(10))?;
    let keep: Vec<usize> = (0..d).filter(|&i| eig.eigenvalues[i] > 0.0).collect();
    let mut f = DMatrix::<f64>::zeros(d, keep.len());
    for (j, &i) in keep.iter().enumerate() {
        let s = eig.eigenvalues[i].sqrt();
        f.set_column(j, &(eig.eigenvectors.column(i) * s));
    }
    Some(f)
}

fn symmetric(m: DMatrix<f64>) -> DMatrix<f64> {
    let t = m.transpose();
    (m + t) * 0.5
}

fn symmetrize(s: &mut [f64], d: usize) {
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (s[i * d + j] + s[j * d + i]);
            s[i * d + j] = v;
            s[j * d + i] = v;
        }
    }
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> EvalError {
    EvalError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Writes pytorch-fid's statistics format: an `.npz` with `mu` float64 [D] and `sigma`
/// float64 [D, D]; with `spatial`, also `mu_s` / `sigma_s` (the sFID statistics, named as in
/// the ADM evaluator's reference batches). pytorch-fid reads only `mu` and `sigma`.
pub fn save_stats(path: &Path, pool: &Stats, spatial: Option<&Stats>) -> Result<()> {
    let to_arrays = |s: &Stats| -> Result<(NpyArray, NpyArray)> {
        let d = s.dim();
        Ok((
            NpyArray::from_f64(&[d], &s.mu)?,
            NpyArray::from_f64(&[d, d], &s.sigma)?,
        ))
    };
    let (mu, sigma) = to_arrays(pool)?;
    let mut arrays = vec![("mu", mu), ("sigma", sigma)];
    if let Some(s) = spatial {
        let (mu_s, sigma_s) = to_arrays(s)?;
        arrays.push(("mu_s", mu_s));
        arrays.push(("sigma_s", sigma_s));
    }
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        cbs_core::atomic::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    }
    let refs: Vec<(&str, &NpyArray)> = arrays.iter().map(|(n, a)| (*n, a)).collect();
    cbs_core::atomic::write_with_path(path, |tmp| cbs_data::write_npz(tmp, &refs))
        .map_err(|e| file_err(path, format!("{}: {}", e.action, e.source)))
}

/// Reads statistics written by [`save_stats`] or pytorch-fid's `--save-stats` (`mu`, `sigma`,
/// float32 or float64), plus `mu_s` / `sigma_s` when present.
pub fn load_stats(path: &Path) -> Result<(Stats, Option<Stats>)> {
    read_stats(&mut NpzArchive::open(path)?)
}

/// [`load_stats`] on an open archive.
pub fn read_stats(npz: &mut NpzArchive) -> Result<(Stats, Option<Stats>)> {
    if !npz.has("mu") || !npz.has("sigma") {
        let mut names = npz.names();
        names.sort();
        return Err(file_err(
            npz.path(),
            format!("expected statistics (arrays mu [D] and sigma [D, D]); found arrays {names:?}"),
        ));
    }
    let pool = read_stats_pair(npz, "mu", "sigma")?;
    let spatial = if npz.has("mu_s") && npz.has("sigma_s") {
        Some(read_stats_pair(npz, "mu_s", "sigma_s")?)
    } else {
        None
    };
    Ok((pool, spatial))
}

/// A float32 or float64 C-ordered array as `f64` values with its shape.
fn read_float(npz: &mut NpzArchive, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let h = npz.header(name)?;
    if h.dtype.kind != 'f' || !matches!(h.dtype.size, 4 | 8) || h.fortran_order {
        return Err(file_err(
            npz.path(),
            format!(
                "array {name} is {} {:?}{}; expected float32 or float64",
                h.dtype.name(),
                h.shape,
                if h.fortran_order {
                    " in Fortran order"
                } else {
                    ""
                }
            ),
        ));
    }
    let a = npz.read(name)?;
    let values = a.to_f64().unwrap_or_default();
    Ok((a.header.shape, values))
}

fn read_stats_pair(npz: &mut NpzArchive, mu: &str, sigma: &str) -> Result<Stats> {
    let (m_shape, mv) = read_float(npz, mu)?;
    let (s_shape, sv) = read_float(npz, sigma)?;
    let path = npz.path();
    let d = match m_shape.as_slice() {
        [d] => *d,
        dims => return Err(file_err(path, format!("{mu} must be [D], found {dims:?}"))),
    };
    if s_shape != [d, d] {
        return Err(file_err(
            path,
            format!("{sigma} must be [{d}, {d}] to match {mu}, found {s_shape:?}"),
        ));
    }
    let stats = Stats::new(mv, sv).map_err(|e| file_err(path, e))?;
    check_covariance(&stats.sigma, d).map_err(|m| file_err(path, format!("{sigma}: {m}")))?;
    Ok(stats)
}

/// A covariance read from a file must be one: symmetric and positive semi-definite (up to
/// round-off). Anything else gives a meaningless distance (a non-PSD `sigma` produced an FID
/// of 0.56 against real statistics) rather than an error.
fn check_covariance(sigma: &[f64], d: usize) -> std::result::Result<(), String> {
    let scale = sigma.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = 1e-6 * scale.max(f64::MIN_POSITIVE);
    for i in 0..d {
        for j in 0..i {
            let (a, b) = (sigma[i * d + j], sigma[j * d + i]);
            if (a - b).abs() > tol {
                return Err(format!(
                    "not symmetric (entry [{i}, {j}] = {a}, [{j}, {i}] = {b}); expected a \
                     covariance matrix"
                ));
            }
        }
    }
    // Σ + δI is positive definite iff every eigenvalue of Σ exceeds −δ: one Cholesky (d³/3
    // multiply-adds, a second or two at d = 2048) instead of an eigendecomposition. δ covers
    // the round-off that leaves a PSD covariance's zero eigenvalues slightly negative.
    let delta = (d as f64) * 1e-9 * scale.max(f64::MIN_POSITIVE);
    let mut m = symmetric(DMatrix::from_row_slice(d, d, sigma));
    for i in 0..d {
        m[(i, i)] += delta;
    }
    if nalgebra::Cholesky::new(m).is_none() {
        return Err(format!(
            "not positive semi-definite (an eigenvalue is below −{delta:e}); expected a \
             covariance matrix"
        ));
    }
    Ok(())
}
