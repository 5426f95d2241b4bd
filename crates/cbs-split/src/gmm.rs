//! Gaussian-mixture targets and their exact flow-matching velocity.
//!
//! For data `x1 ~ Σ_k π_k N(μ_k, σ_k² I)` and noise `x0 ~ N(0, I)` on the linear path
//! `x_t = t·x1 + (1 − t)·x0`, the conditional law given component `k` is
//! `x_t | k ~ N(t μ_k, s_k² I)` with `s_k² = t² σ_k² + (1 − t)²`, and the marginal velocity
//! `u(x, t) = E[x1 − x0 | x_t = x]` is
//!
//! ```text
//! u(x, t) = Σ_k w_k(x, t) u_k(x, t),
//! u_k     = μ_k + c_k (x − t μ_k),            c_k = (t σ_k² − (1 − t)) / s_k²,
//! w_k     ∝ π_k N(x; t μ_k, s_k² I)           (posterior component weights).
//! ```
//!
//! Its Jacobian is `J = Σ_k w_k c_k I + Σ_k w_k u_k (g_k − ḡ)ᵀ` with `g_k = −(x − t μ_k)/s_k²`
//! and `ḡ = Σ_k w_k g_k`.

use std::path::Path;

use candle_core::{DType, Tensor};
use cbs_core::rng::{stream, Purpose};
use cbs_flow::path::Interpolant;
use cbs_flow::VelocityField;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SplitError};
use crate::monitor::{MonitorCurve, MonitorKind};

/// An isotropic Gaussian mixture, as stored in JSON.
///
/// `means` is `[[f64; d]; C]`, `stds` the per-component standard deviations, `weights` the
/// unnormalised mixture weights. `grid`, `trajectories` and `seed` are optional run settings
/// that reference files carry along; any other field is ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GmmSpec {
    pub means: Vec<Vec<f64>>,
    pub stds: Vec<f64>,
    pub weights: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trajectories: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

fn spec_err(field: String, value: impl std::fmt::Display, reason: &str) -> SplitError {
    SplitError::InvalidSpec {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

impl GmmSpec {
    /// A spec without the optional run settings.
    pub fn new(means: Vec<Vec<f64>>, stds: Vec<f64>, weights: Vec<f64>) -> Self {
        Self {
            means,
            stds,
            weights,
            grid: None,
            trajectories: None,
            seed: None,
        }
    }

    /// Parse and validate a JSON document.
    pub fn from_json_str(s: &str) -> Result<Self> {
        let spec: Self = serde_json::from_str(s).map_err(SplitError::JsonStr)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Read, parse and validate a JSON file; every error names the path.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = cbs_core::read_text(path)?;
        let spec: Self = serde_json::from_str(&text).map_err(|source| SplitError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        spec.validate().map_err(|e| SplitError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok(spec)
    }

    /// Number of components.
    pub fn n_components(&self) -> usize {
        self.means.len()
    }

    /// Dimension of the data (0 if there are no means).
    pub fn dim(&self) -> usize {
        self.means.first().map_or(0, Vec::len)
    }

    /// Check lengths, dimensions and positivity; errors name the offending field and value.
    pub fn validate(&self) -> Result<()> {
        let c = self.means.len();
        if c == 0 {
            return Err(spec_err(
                "means".into(),
                "[]",
                "at least one component is required",
            ));
        }
        let d = self.means[0].len();
        if d == 0 {
            return Err(spec_err(
                "means[0]".into(),
                "[]",
                "means must have at least one coordinate",
            ));
        }
        for (k, m) in self.means.iter().enumerate() {
            if m.len() != d {
                return Err(spec_err(
                    format!("means[{k}]"),
                    format!("{m:?}"),
                    &format!("has dimension {} but means[0] has dimension {d}", m.len()),
                ));
            }
            if let Some(v) = m.iter().find(|v| !v.is_finite()) {
                return Err(spec_err(
                    format!("means[{k}]"),
                    v,
                    "coordinates must be finite",
                ));
            }
        }
        if self.stds.len() != c {
            return Err(spec_err(
                "stds".into(),
                format!("{} values", self.stds.len()),
                &format!("must have one value per component ({c})"),
            ));
        }
        if self.weights.len() != c {
            return Err(spec_err(
                "weights".into(),
                format!("{} values", self.weights.len()),
                &format!("must have one value per component ({c})"),
            ));
        }
        for (k, &s) in self.stds.iter().enumerate() {
            if !(s.is_finite() && s > 0.0) {
                return Err(spec_err(
                    format!("stds[{k}]"),
                    s,
                    "must be finite and positive",
                ));
            }
        }
        for (k, &w) in self.weights.iter().enumerate() {
            if !(w.is_finite() && w > 0.0) {
                return Err(spec_err(
                    format!("weights[{k}]"),
                    w,
                    "must be finite and positive",
                ));
            }
        }
        let total: f64 = self.weights.iter().sum();
        if !total.is_finite() {
            return Err(spec_err(
                "weights".into(),
                format!("sum {total}"),
                "must have a finite sum (they are normalised by it)",
            ));
        }
        Ok(())
    }
}

/// The exact marginal velocity toward a Gaussian mixture, on the linear path or another
/// [`Interpolant`] ([`GmmOracle::with_path`]).
///
/// As a [`VelocityField`] it is built from differentiable candle ops (log-sum-exp-stable
/// posterior weights), works in `f32` and `f64`, accepts `x` of shape `[B, ...]` whose
/// trailing dimensions multiply to `d`, and ignores labels.
#[derive(Clone, Debug)]
pub struct GmmOracle {
    spec: GmmSpec,
    d: usize,
    c: usize,
    /// `C × d`, row-major.
    means: Vec<f64>,
    /// `σ_k²`.
    var: Vec<f64>,
    /// Normalised weights.
    pi: Vec<f64>,
    log_pi: Vec<f64>,
    /// The interpolation path whose marginal velocity this is.
    path: Interpolant,
}

/// Per-component quantities at one point `(x, t)`.
struct Posterior {
    /// `α'(t)`: the component velocity is `α'·μ_k + c_k·(x − α·μ_k)`.
    d_alpha: f64,
    /// Posterior weights `w_k`.
    w: Vec<f64>,
    /// `c_k`.
    c: Vec<f64>,
    /// `s_k²`.
    s2: Vec<f64>,
    /// `x − α(t) μ_k`, `C × d`.
    diff: Vec<f64>,
}

impl GmmOracle {
    /// Validate the spec and precompute the normalised mixture.
    pub fn new(spec: GmmSpec) -> Result<Self> {
        spec.validate()?;
        let c = spec.n_components();
        let d = spec.dim();
        let means = spec.means.iter().flatten().copied().collect();
        let var = spec.stds.iter().map(|s| s * s).collect();
        let total: f64 = spec.weights.iter().sum();
        let pi: Vec<f64> = spec.weights.iter().map(|w| w / total).collect();
        let log_pi = pi.iter().map(|p| p.ln()).collect();
        Ok(Self {
            spec,
            d,
            c,
            means,
            var,
            pi,
            log_pi,
            path: Interpolant::Linear,
        })
    }

    /// The same mixture on another interpolation path (the default is the linear one).
    pub fn with_path(mut self, path: Interpolant) -> Self {
        self.path = path;
        self
    }

    /// The interpolation path of the velocity.
    pub fn path(&self) -> Interpolant {
        self.path
    }

    /// Read a JSON spec (see [`GmmSpec::from_file`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(GmmSpec::from_file(path)?)
    }

    /// The spec this oracle was built from.
    pub fn spec(&self) -> &GmmSpec {
        &self.spec
    }

    /// Data dimension `d`.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Number of mixture components.
    pub fn n_components(&self) -> usize {
        self.c
    }

    fn check_point(&self, x: &[f64], t: f64) -> Result<()> {
        if x.len() != self.d {
            return Err(SplitError::DimensionMismatch {
                what: "GMM point".into(),
                expected: self.d,
                got: x.len(),
            });
        }
        if !t.is_finite() {
            return Err(SplitError::InvalidOption {
                name: "t",
                value: t.to_string(),
                reason: "time must be finite".into(),
            });
        }
        Ok(())
    }

    fn posterior(&self, x: &[f64], t: f64) -> Posterior {
        let (c_n, d) = (self.c, self.d);
        let mut logw = vec![0.0; c_n];
        let mut s2 = vec![0.0; c_n];
        let mut c = vec![0.0; c_n];
        let mut diff = vec![0.0; c_n * d];
        // x_t | k ~ N(α μ_k, s_k² I), s_k² = α² σ_k² + σ²; E[x1 | x_t, k] = μ_k + α σ_k² r / s_k²
        // and E[x0 | x_t, k] = σ r / s_k² (r = x_t − α μ_k), so u_k = α' μ_k + c_k r with
        // c_k = (α' α σ_k² + σ' σ) / s_k².
        let co = self.path.coefficients(t);
        let (a, sg, da, ds) = (co.alpha, co.sigma, co.d_alpha, co.d_sigma);
        for k in 0..c_n {
            s2[k] = a * a * self.var[k] + sg * sg;
            c[k] = (da * a * self.var[k] + ds * sg) / s2[k];
            let mut sq = 0.0;
            for i in 0..d {
                let r = x[i] - a * self.means[k * d + i];
                diff[k * d + i] = r;
                sq += r * r;
            }
            logw[k] = self.log_pi[k] - 0.5 * d as f64 * s2[k].ln() - 0.5 * sq / s2[k];
        }
        let max = logw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut w: Vec<f64> = logw.iter().map(|l| (l - max).exp()).collect();
        let z: f64 = w.iter().sum();
        w.iter_mut().for_each(|v| *v /= z);
        Posterior {
            d_alpha: da,
            w,
            c,
            s2,
            diff,
        }
    }

    /// `u_k` for every component, `C × d`.
    fn component_velocities(&self, p: &Posterior) -> Vec<f64> {
        let d = self.d;
        let mut uk = vec![0.0; self.c * d];
        for k in 0..self.c {
            for i in 0..d {
                uk[k * d + i] = p.d_alpha * self.means[k * d + i] + p.c[k] * p.diff[k * d + i];
            }
        }
        uk
    }

    /// Exact velocity `u(x, t)` at one point, in `f64`.
    pub fn velocity_f64(&self, x: &[f64], t: f64) -> Result<Vec<f64>> {
        self.check_point(x, t)?;
        let p = self.posterior(x, t);
        let uk = self.component_velocities(&p);
        let d = self.d;
        let mut u = vec![0.0; d];
        for k in 0..self.c {
            for i in 0..d {
                u[i] += p.w[k] * uk[k * d + i];
            }
        }
        Ok(u)
    }

    /// Exact Jacobian `∂u_i/∂x_j` at one point, `d × d` row-major (row = output component).
    pub fn jacobian_f64(&self, x: &[f64], t: f64) -> Result<Vec<f64>> {
        Ok(self.velocity_and_jacobian_f64(x, t)?.1)
    }

    /// Velocity and Jacobian together (one posterior evaluation).
    pub fn velocity_and_jacobian_f64(&self, x: &[f64], t: f64) -> Result<(Vec<f64>, Vec<f64>)> {
        self.check_point(x, t)?;
        let p = self.posterior(x, t);
        let uk = self.component_velocities(&p);
        let d = self.d;
        // g_k = −diff_k / s_k², ḡ = Σ w_k g_k.
        let mut g = vec![0.0; self.c * d];
        let mut gbar = vec![0.0; d];
        let mut u = vec![0.0; d];
        let mut wc = 0.0;
        for k in 0..self.c {
            wc += p.w[k] * p.c[k];
            for i in 0..d {
                g[k * d + i] = -p.diff[k * d + i] / p.s2[k];
                gbar[i] += p.w[k] * g[k * d + i];
                u[i] += p.w[k] * uk[k * d + i];
            }
        }
        let mut jac = vec![0.0; d * d];
        for i in 0..d {
            jac[i * d + i] += wc;
        }
        for k in 0..self.c {
            for i in 0..d {
                let a = p.w[k] * uk[k * d + i];
                for j in 0..d {
                    jac[i * d + j] += a * (g[k * d + j] - gbar[j]);
                }
            }
        }
        Ok((u, jac))
    }

    /// The Bayes floor of velocity regression at time `t`: the least mean squared error per
    /// element, `E‖y − E[y | x_t]‖² / d` for the target `y = α'·x1 + σ'·x0` of this oracle's
    /// path (`E[y | x_t]` is the exact velocity). Given `x_t` and the component `k`, `y` is
    /// Gaussian with per-element variance `V_k = α'²σ_k² + σ'² − (α'ασ_k² + σ'σ)² / s_k²`, so the
    /// conditional error `Σ_k w_k (V_k + ‖u_k − u‖² / d)` is exact at each point; only the outer
    /// expectation over `x_t` is estimated, from `n` points drawn exactly from `p_t` (seeded).
    pub fn bayes_floor(&self, t: f64, n: usize, seed: u64) -> Result<f64> {
        self.check_point(&vec![0.0; self.d], t)?;
        if n == 0 {
            return Err(SplitError::InvalidOption {
                name: "n",
                value: "0".into(),
                reason: "need at least one point".into(),
            });
        }
        let co = self.path.coefficients(t);
        let (a, sg, da, ds) = (co.alpha, co.sigma, co.d_alpha, co.d_sigma);
        let d = self.d;
        let x1 = self.sample(n, seed);
        let mut rng = stream(seed, Purpose::GmmSample, 1);
        let mut total = 0.0;
        for i in 0..n {
            let x: Vec<f64> = (0..d)
                .map(|j| {
                    let e: f64 = StandardNormal.sample(&mut rng);
                    a * x1[i * d + j] + sg * e
                })
                .collect();
            let p = self.posterior(&x, t);
            let uk = self.component_velocities(&p);
            let mut u = vec![0.0; d];
            for k in 0..self.c {
                for j in 0..d {
                    u[j] += p.w[k] * uk[k * d + j];
                }
            }
            let mut err = 0.0;
            for k in 0..self.c {
                let cov = da * a * self.var[k] + ds * sg;
                let v = da * da * self.var[k] + ds * ds - cov * cov / p.s2[k];
                let spread: f64 = (0..d).map(|j| (uk[k * d + j] - u[j]).powi(2)).sum();
                err += p.w[k] * (v + spread / d as f64);
            }
            total += err;
        }
        Ok(total / n as f64)
    }

    /// `n` samples of the data distribution (`t = 1`), `n × d` row-major.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = stream(seed, Purpose::GmmSample, 0);
        let d = self.d;
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let r: f64 = rng.random();
            let mut k = 0;
            let mut acc = self.pi[0];
            while r >= acc && k + 1 < self.c {
                k += 1;
                acc += self.pi[k];
            }
            let s = self.spec.stds[k];
            for i in 0..d {
                let e: f64 = StandardNormal.sample(&mut rng);
                out.push(self.means[k * d + i] + s * e);
            }
        }
        out
    }

    /// Log-density of the data distribution (`t = 1`) at one point.
    pub fn log_density(&self, x: &[f64]) -> Result<f64> {
        self.check_point(x, 1.0)?;
        let d = self.d;
        let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        let terms: Vec<f64> = (0..self.c)
            .map(|k| {
                let sq: f64 = (0..d).map(|i| (x[i] - self.means[k * d + i]).powi(2)).sum();
                self.log_pi[k]
                    - d as f64 * (half_log_2pi + 0.5 * self.var[k].ln())
                    - 0.5 * sq / self.var[k]
            })
            .collect();
        let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Ok(max + terms.iter().map(|l| (l - max).exp()).sum::<f64>().ln())
    }

    /// Both monitors computed exactly in `f64`: Euler trajectories of the exact field on
    /// `t_j = j/grid`, path acceleration from exact velocities and the Dirichlet energy from the
    /// exact Jacobian (no Hutchinson noise).
    ///
    /// The noises are the same as those of [`crate::monitor_curve`] with the same `seed` and
    /// per-sample shape `[d]`, so the two can be compared trajectory by trajectory.
    /// Returns `(acceleration, dirichlet)`.
    pub fn exact_monitor_curves(
        &self,
        grid: usize,
        trajectories: usize,
        seed: u64,
    ) -> Result<(MonitorCurve, MonitorCurve)> {
        if grid == 0 {
            return Err(SplitError::InvalidOption {
                name: "grid",
                value: "0".into(),
                reason: "need at least one cell".into(),
            });
        }
        if trajectories == 0 {
            return Err(SplitError::InvalidOption {
                name: "trajectories",
                value: "0".into(),
                reason: "need at least one trajectory".into(),
            });
        }
        let d = self.d;
        let times = cbs_flow::solver::uniform_grid(grid);
        let mut rng = crate::monitor::noise_rng(seed);
        let mut acc = vec![0f32; trajectories * grid];
        let mut dir = vec![0f32; trajectories * grid];
        let mut acc_sum = vec![0f64; grid];
        let mut dir_sum = vec![0f64; grid];
        for k in 0..trajectories {
            let mut x: Vec<f64> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
            let (mut v, mut jac) = self.velocity_and_jacobian_f64(&x, times[0])?;
            for j in 0..grid {
                let e = 0.5 * jac.iter().map(|a| a * a).sum::<f64>();
                dir[k * grid + j] = e as f32;
                dir_sum[j] += e;
                let h = times[j + 1] - times[j];
                x.iter_mut().zip(&v).for_each(|(xi, vi)| *xi += h * vi);
                let (v_next, jac_next) = self.velocity_and_jacobian_f64(&x, times[j + 1])?;
                let a = v_next
                    .iter()
                    .zip(&v)
                    .map(|(p, q)| (p - q).powi(2))
                    .sum::<f64>()
                    .sqrt();
                acc[k * grid + j] = a as f32;
                acc_sum[j] += a;
                v = v_next;
                jac = jac_next;
            }
        }
        let kf = trajectories as f64;
        let make = |kind, sum: Vec<f64>, per| MonitorCurve {
            kind,
            grid: times.clone(),
            mass: sum.into_iter().map(|s| s / kf).collect(),
            trajectories,
            per_trajectory: per,
        };
        Ok((
            make(MonitorKind::Acceleration, acc_sum, acc),
            make(MonitorKind::Dirichlet, dir_sum, dir),
        ))
    }

    fn constants(
        &self,
        dtype: DType,
        dev: &candle_core::Device,
    ) -> candle_core::Result<[Tensor; 3]> {
        let mu = Tensor::from_vec(self.means.clone(), (1, self.c, self.d), dev)?.to_dtype(dtype)?;
        let var = Tensor::from_vec(self.var.clone(), (1, self.c), dev)?.to_dtype(dtype)?;
        let log_pi = Tensor::from_vec(self.log_pi.clone(), (1, self.c), dev)?.to_dtype(dtype)?;
        Ok([mu, var, log_pi])
    }
}

impl VelocityField for GmmOracle {
    fn velocity(&self, x: &Tensor, t: &Tensor, _y: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let shape = x.dims().to_vec();
        let b = *shape.first().ok_or_else(|| {
            candle_core::Error::Msg("GMM oracle: x must have a batch dimension".into())
        })?;
        let d: usize = shape[1..].iter().product();
        if d != self.d || shape.len() < 2 {
            return Err(candle_core::Error::Msg(format!(
                "GMM oracle: x has shape {shape:?}, expected [B, ...] with {} values per sample",
                self.d
            )));
        }
        let dtype = x.dtype();
        let dev = x.device();
        let [mu, var, log_pi] = self.constants(dtype, dev)?;
        let x = x.reshape((b, 1, d))?;
        let t = t.to_dtype(dtype)?.reshape(b)?;
        // [B, 1] each (see `posterior` for the formulas).
        let [a, sg, da, ds] = self
            .path
            .coefficient_tensors(&t)?
            .map(|c| c.reshape((b, 1)));
        let (a, sg, da, ds) = (a?, sg?, da?, ds?);
        // s² = α²σ_k² + σ², [B, C]
        let s2 = a.sqr()?.broadcast_mul(&var)?.broadcast_add(&sg.sqr()?)?;
        // x − αμ, [B, C, d]
        let diff = x.broadcast_sub(&mu.broadcast_mul(&a.unsqueeze(2)?)?)?;
        let sq = diff.sqr()?.sum(2)?;
        let logw = log_pi
            .broadcast_sub(&(s2.log()? * (0.5 * d as f64))?)?
            .sub(&((sq / &s2)? * 0.5)?)?;
        // Softmax over components; the shift is a constant for autograd.
        let shift = logw.max_keepdim(1)?.detach();
        let e = logw.broadcast_sub(&shift)?.exp()?;
        let w = e.broadcast_div(&e.sum_keepdim(1)?)?;
        let c = (&da * &a)?
            .broadcast_mul(&var)?
            .broadcast_add(&(ds * sg)?)?
            .div(&s2)?;
        let uk = mu
            .broadcast_mul(&da.unsqueeze(2)?)?
            .broadcast_add(&diff.broadcast_mul(&c.unsqueeze(2)?)?)?;
        let u = uk.broadcast_mul(&w.unsqueeze(2)?)?.sum(1)?;
        u.reshape(shape)
    }
}
