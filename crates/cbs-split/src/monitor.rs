//! Monitor curves: how hard the velocity field is to learn, cell by cell in time.
//!
//! `K` noises are drawn from `ChaCha8Rng(seed)` and integrated with Euler on `t_j = j/G` by the
//! (auxiliary) velocity field. On every cell `[t_j, t_{j+1}]` each trajectory contributes a
//! mass:
//!
//! - [`MonitorKind::Acceleration`]: `||v_{j+1} − v_j||₂`, the velocity change along the
//!   trajectory (velocities at the grid points of the Euler trajectory);
//! - [`MonitorKind::Dirichlet`]: `½ ||∂v/∂x (x_j, t_j)||_F²`, estimated Hutchinson-style with
//!   `S` probes `ε` as `½ mean_s ||Jᵀε_s||²` (one backward pass, [`JvpMethod::Vjp`]) or
//!   `½ mean_s ||(v(x + hε) − v(x − hε)) / 2h||²` ([`JvpMethod::FiniteDifference`]). The
//!   Jacobian is never formed.
//!
//! The curve keeps every trajectory's masses so that knots can be bootstrapped.
//!
//! Randomness (`cbs_core::rng`): noises come from stream 0 of `ChaCha8Rng::seed_from_u64(seed)`
//! (`Purpose::MonitorNoise`), drawn trajectory after trajectory; the probes of trajectory `k`
//! come from stream `k + 1` of the same seed (`Purpose::MonitorProbe`).
//! Results therefore do not depend on the chunk size (`batch`), up to floating-point rounding.

use candle_core::{DType, Device, Tensor, Var};
use cbs_core::rng::{stream, Purpose};
use cbs_flow::VelocityField;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::bootstrap::{bootstrap_knots, KnotInterval};
use crate::equidistribute::{equidistribute, SplitMode};
use crate::error::{Result, SplitError};

/// Which local-difficulty measure to equidistribute.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum MonitorKind {
    /// Path acceleration (the paper's default).
    #[default]
    #[cfg_attr(
        feature = "clap",
        value(
            help = "Path acceleration ||v_{j+1} − v_j|| along Euler trajectories (the paper's default)"
        )
    )]
    Acceleration,
    /// Dirichlet energy `½||∇_x v||_F²`.
    #[cfg_attr(
        feature = "clap",
        value(help = "Dirichlet energy ½||∂v/∂x||_F², Hutchinson-estimated")
    )]
    Dirichlet,
}

/// Distribution of the Hutchinson probes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ProbeKind {
    /// `ε ~ N(0, I)`.
    #[default]
    #[cfg_attr(feature = "clap", value(help = "ε ~ N(0, I)"))]
    Gaussian,
    /// Independent `±1` entries (lower variance).
    #[cfg_attr(
        feature = "clap",
        value(help = "Independent ±1 entries (lower variance)")
    )]
    Rademacher,
}

/// How the Jacobian–vector products of the Dirichlet monitor are computed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum JvpMethod {
    /// `Jᵀε` by one backward pass of `(v·ε).sum()` with `x` as a variable.
    #[default]
    #[cfg_attr(feature = "clap", value(help = "||Jᵀε||² by one backward pass"))]
    Vjp,
    /// Central difference `(v(x + hε) − v(x − hε)) / 2h` (two extra forwards per probe).
    #[cfg_attr(
        feature = "clap",
        value(
            name = "fd",
            help = "Central finite difference (v(x + hε) − v(x − hε)) / 2h"
        )
    )]
    FiniteDifference,
}

/// Settings of [`monitor_curve`].
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorOptions {
    pub kind: MonitorKind,
    /// Number of grid cells `G` (`G + 1` grid points).
    pub grid: usize,
    /// Number of trajectories `K`.
    pub trajectories: usize,
    /// Trajectories integrated together (memory bound).
    pub batch: usize,
    /// Hutchinson probes `S` per point (Dirichlet only).
    pub probes: usize,
    pub probe: ProbeKind,
    pub jvp: JvpMethod,
    /// Step `h` of the finite-difference JVP.
    pub fd_eps: f64,
    pub seed: u64,
    /// Floating-point type of the states (`F32`, `F64`, `F16`, `BF16`).
    pub dtype: DType,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        Self {
            kind: MonitorKind::Acceleration,
            grid: 100,
            trajectories: 1024,
            batch: 256,
            probes: 1,
            probe: ProbeKind::Gaussian,
            jvp: JvpMethod::Vjp,
            fd_eps: 1e-3,
            seed: 0,
            dtype: DType::F32,
        }
    }
}

impl MonitorOptions {
    /// Check ranges; called by [`monitor_curve`].
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: String, reason: &str| {
            Err(SplitError::InvalidOption {
                name,
                value,
                reason: reason.into(),
            })
        };
        if self.grid == 0 {
            return bad("grid", "0".into(), "need at least one cell");
        }
        if self.trajectories == 0 {
            return bad("trajectories", "0".into(), "need at least one trajectory");
        }
        if self.batch == 0 {
            return bad(
                "batch",
                "0".into(),
                "need at least one trajectory per chunk",
            );
        }
        if self.kind == MonitorKind::Dirichlet {
            if self.probes == 0 {
                return bad("probes", "0".into(), "need at least one Hutchinson probe");
            }
            if self.jvp == JvpMethod::FiniteDifference
                && !(self.fd_eps.is_finite() && self.fd_eps > 0.0)
            {
                return bad(
                    "fd_eps",
                    self.fd_eps.to_string(),
                    "must be finite and positive",
                );
            }
        }
        if !self.dtype.is_float() {
            return bad(
                "dtype",
                format!("{:?}", self.dtype),
                "must be a floating-point type",
            );
        }
        Ok(())
    }
}

/// Per-cell monitor masses on a uniform grid, with every trajectory's contribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorCurve {
    pub kind: MonitorKind,
    /// The `G + 1` grid points `t_j = j/G`.
    pub grid: Vec<f64>,
    /// The `G` cell masses, mean over trajectories (accumulated in `f64`).
    pub mass: Vec<f64>,
    /// Number of trajectories `K`.
    pub trajectories: usize,
    /// `K × G` row-major per-trajectory cell masses (may be empty if dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_trajectory: Vec<f32>,
}

impl MonitorCurve {
    /// Number of cells `G`.
    pub fn cells(&self) -> usize {
        self.mass.len()
    }

    /// Cumulative mass at the `G + 1` grid points, `C(t_0) = 0` (summed in order, unchecked:
    /// what `monitor.csv` and its plot show, whatever the masses are).
    pub fn cumulative(&self) -> Vec<f64> {
        let mut c = Vec::with_capacity(self.mass.len() + 1);
        c.push(0.0);
        let mut acc = 0.0;
        for m in &self.mass {
            acc += m;
            c.push(acc);
        }
        c
    }

    /// The cell masses of trajectory `k`, if kept.
    pub fn trajectory(&self, k: usize) -> Option<&[f32]> {
        let g = self.cells();
        self.per_trajectory.get(k * g..(k + 1) * g)
    }

    /// Masses scaled to sum to one (all zeros if the total is zero).
    pub fn normalized(&self) -> Vec<f64> {
        let total: f64 = self.mass.iter().sum();
        if total > 0.0 {
            self.mass.iter().map(|m| m / total).collect()
        } else {
            vec![0.0; self.mass.len()]
        }
    }

    /// Interior knots for `n_experts` (see [`equidistribute`]).
    pub fn knots(&self, n_experts: usize, mode: SplitMode) -> Result<Vec<f64>> {
        equidistribute(&self.grid, &self.mass, n_experts, mode)
    }

    /// Bootstrap intervals of the knots (see [`bootstrap_knots`]).
    pub fn bootstrap(
        &self,
        n_experts: usize,
        mode: SplitMode,
        resamples: usize,
        confidence: f64,
        seed: u64,
    ) -> Result<Vec<KnotInterval>> {
        bootstrap_knots(
            &self.grid,
            &self.per_trajectory,
            n_experts,
            mode,
            resamples,
            confidence,
            seed,
        )
    }

    /// The same curve without the per-trajectory masses (for compact output).
    pub fn without_per_trajectory(mut self) -> Self {
        self.per_trajectory = Vec::new();
        self
    }
}

/// The noise generator of [`monitor_curve`] (stream 0 of `ChaCha8Rng(seed)`).
pub(crate) fn noise_rng(seed: u64) -> ChaCha8Rng {
    stream(seed, Purpose::MonitorNoise, 0)
}

fn probe_rng(seed: u64, trajectory: usize) -> ChaCha8Rng {
    stream(seed, Purpose::MonitorProbe, trajectory as u64)
}

/// Uniform class labels of `k` monitor trajectories, drawn from
/// [`Purpose::TrajectoryLabels`] of `seed` (stream `u64::MAX` of `ChaCha8Rng(seed)`, apart from
/// the noise and probe streams).
pub fn trajectory_labels(k: usize, num_classes: usize, seed: u64) -> Vec<u32> {
    let mut rng = stream(seed, Purpose::TrajectoryLabels, 0);
    (0..k)
        .map(|_| rng.random_range(0..num_classes as u32))
        .collect()
}

fn time(t: f64, b: usize, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::full(t, b, dev)?.to_dtype(dtype)
}

/// Squared Euclidean norm of every sample of a `[B, ...]` tensor, in `f64`.
fn per_sample_sq_norm(v: &Tensor) -> candle_core::Result<Vec<f64>> {
    v.flatten_from(1)?
        .to_dtype(DType::F64)?
        .sqr()?
        .sum(1)?
        .to_vec1::<f64>()
}

/// Compute a monitor curve of `field` along its own Euler trajectories.
///
/// - `noise_shape`: the per-sample shape, e.g. `[2]` or `[1, 32, 32]`.
/// - `labels(k)`: the class of trajectory `k` for a conditional field (passed as a `u32` tensor).
/// - `progress(done, total)`: called after every grid step of every chunk.
///
/// The field must treat samples independently (no cross-batch ops), so that summing the VJP
/// over the batch gives each sample its own `Jᵀε`.
pub fn monitor_curve(
    field: &dyn VelocityField,
    opts: &MonitorOptions,
    noise_shape: &[usize],
    labels: Option<&dyn Fn(usize) -> u32>,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<MonitorCurve> {
    opts.validate()?;
    let dim: usize = noise_shape.iter().product();
    if noise_shape.is_empty() || dim == 0 {
        return Err(SplitError::InvalidOption {
            name: "noise_shape",
            value: format!("{noise_shape:?}"),
            reason: "the per-sample shape must be non-empty with no zero dimension".into(),
        });
    }
    let (g, k_total) = (opts.grid, opts.trajectories);
    let grid = cbs_flow::solver::uniform_grid(g);
    let mut rng = noise_rng(opts.seed);
    let mut per = vec![0f32; k_total * g];
    let mut sums = vec![0f64; g];
    let n_chunks = k_total.div_ceil(opts.batch);
    let total_steps = n_chunks * g;
    let mut done = 0usize;

    for start in (0..k_total).step_by(opts.batch) {
        let b = opts.batch.min(k_total - start);
        let noise: Vec<f64> = (0..b * dim)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let mut shape = Vec::with_capacity(noise_shape.len() + 1);
        shape.push(b);
        shape.extend_from_slice(noise_shape);
        let x0 = Tensor::from_vec(noise, shape.as_slice(), device)?.to_dtype(opts.dtype)?;
        let y = match labels {
            Some(f) => {
                let ys: Vec<u32> = (start..start + b).map(f).collect();
                Some(Tensor::from_vec(ys, b, device)?)
            }
            None => None,
        };
        let mut on_step = |_j: usize| {
            done += 1;
            progress(done, total_steps);
        };
        let cells = match opts.kind {
            MonitorKind::Acceleration => {
                acceleration_chunk(field, &x0, y.as_ref(), &grid, &mut on_step)?
            }
            MonitorKind::Dirichlet => {
                let mut rngs: Vec<ChaCha8Rng> = (start..start + b)
                    .map(|k| probe_rng(opts.seed, k))
                    .collect();
                dirichlet_chunk(field, opts, &x0, y.as_ref(), &grid, &mut rngs, &mut on_step)?
            }
        };
        // `cells` is G × b (grid-major); store K × G.
        for j in 0..g {
            for i in 0..b {
                let m = cells[j * b + i];
                per[(start + i) * g + j] = m as f32;
                sums[j] += m;
            }
        }
    }
    let kf = k_total as f64;
    Ok(MonitorCurve {
        kind: opts.kind,
        grid,
        mass: sums.into_iter().map(|s| s / kf).collect(),
        trajectories: k_total,
        per_trajectory: per,
    })
}

/// Returns `G × b` masses.
fn acceleration_chunk(
    field: &dyn VelocityField,
    x0: &Tensor,
    y: Option<&Tensor>,
    grid: &[f64],
    on_step: &mut dyn FnMut(usize),
) -> Result<Vec<f64>> {
    let b = x0.dim(0)?;
    let (dtype, dev) = (x0.dtype(), x0.device());
    let g = grid.len() - 1;
    let mut out = Vec::with_capacity(g * b);
    let mut x = x0.clone();
    let mut v = field
        .velocity(&x, &time(grid[0], b, dtype, dev)?, y)?
        .detach();
    for j in 0..g {
        let h = grid[j + 1] - grid[j];
        x = (&x + (&v * h)?)?.detach();
        let v_next = field
            .velocity(&x, &time(grid[j + 1], b, dtype, dev)?, y)?
            .detach();
        let sq = per_sample_sq_norm(&(&v_next - &v)?)?;
        out.extend(sq.into_iter().map(f64::sqrt));
        v = v_next;
        on_step(j);
    }
    Ok(out)
}

/// Draw one probe per sample, each from its trajectory's generator, as a tensor like `like`.
fn draw_probe(
    rngs: &mut [ChaCha8Rng],
    dim: usize,
    kind: ProbeKind,
    like: &Tensor,
) -> Result<Tensor> {
    let mut eps = Vec::with_capacity(rngs.len() * dim);
    for rng in rngs.iter_mut() {
        for _ in 0..dim {
            eps.push(match kind {
                ProbeKind::Gaussian => StandardNormal.sample(rng),
                ProbeKind::Rademacher => {
                    if rng.random::<bool>() {
                        1.0
                    } else {
                        -1.0
                    }
                }
            });
        }
    }
    Ok(Tensor::from_vec(eps, like.dims(), like.device())?.to_dtype(like.dtype())?)
}

/// Settings of the Hutchinson estimate of `||∂v/∂x||_F²`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HutchinsonOptions {
    /// Probes `S` per sample.
    pub probes: usize,
    pub probe: ProbeKind,
    pub jvp: JvpMethod,
    /// Step `h` of the finite-difference JVP.
    pub fd_eps: f64,
}

impl Default for HutchinsonOptions {
    fn default() -> Self {
        let o = MonitorOptions::default();
        o.hutchinson()
    }
}

impl MonitorOptions {
    /// The Dirichlet-estimator part of the options.
    pub fn hutchinson(&self) -> HutchinsonOptions {
        HutchinsonOptions {
            probes: self.probes,
            probe: self.probe,
            jvp: self.jvp,
            fd_eps: self.fd_eps,
        }
    }
}

/// Hutchinson estimate of `||∂v/∂x (x_b, t_b)||_F²` for every sample `b` of `x` (`[B, ...]`).
///
/// Each sample's `S` probes are drawn from its own generator `rngs[b]` (`rngs.len() == B`).
/// Returns the field's velocity at `x` (detached, reused by the caller) and the per-sample
/// mean over probes of `||Jᵀε||²` (VJP) or `||Jε||²` (finite differences); both have
/// expectation `||J||_F²`. The Jacobian is never formed.
pub fn frobenius_sq_estimate(
    field: &dyn VelocityField,
    x: &Tensor,
    t: &Tensor,
    y: Option<&Tensor>,
    opts: &HutchinsonOptions,
    rngs: &mut [ChaCha8Rng],
) -> Result<(Tensor, Vec<f64>)> {
    let b = x.dim(0)?;
    if rngs.len() != b {
        return Err(SplitError::DimensionMismatch {
            what: "probe generators (one per sample)".into(),
            expected: b,
            got: rngs.len(),
        });
    }
    if opts.probes == 0 {
        return Err(SplitError::InvalidOption {
            name: "probes",
            value: "0".into(),
            reason: "need at least one Hutchinson probe".into(),
        });
    }
    let dim = x.elem_count() / b.max(1);
    let mut acc = vec![0f64; b];
    let v = match opts.jvp {
        JvpMethod::Vjp => {
            let var = Var::from_tensor(&x.detach())?;
            let v = field.velocity(var.as_tensor(), t, y)?;
            for _ in 0..opts.probes {
                let eps = draw_probe(rngs, dim, opts.probe, x)?;
                let grads = (&v * &eps)?.sum_all()?.backward()?;
                let jt_eps = grads.get(var.as_tensor()).ok_or(SplitError::NoGradient)?;
                for (a, q) in acc.iter_mut().zip(per_sample_sq_norm(jt_eps)?) {
                    *a += q;
                }
            }
            v.detach()
        }
        JvpMethod::FiniteDifference => {
            let h = opts.fd_eps;
            if !(h.is_finite() && h > 0.0) {
                return Err(SplitError::InvalidOption {
                    name: "fd_eps",
                    value: h.to_string(),
                    reason: "must be finite and positive".into(),
                });
            }
            let x = x.detach();
            let v = field.velocity(&x, t, y)?.detach();
            for _ in 0..opts.probes {
                let eps = (draw_probe(rngs, dim, opts.probe, &x)? * h)?;
                let vp = field.velocity(&(&x + &eps)?, t, y)?.detach();
                let vm = field.velocity(&(&x - &eps)?, t, y)?.detach();
                let jv = ((vp - vm)? * (0.5 / h))?;
                for (a, q) in acc.iter_mut().zip(per_sample_sq_norm(&jv)?) {
                    *a += q;
                }
            }
            v
        }
    };
    let s = opts.probes as f64;
    acc.iter_mut().for_each(|a| *a /= s);
    Ok((v, acc))
}

/// Returns `G × b` masses.
fn dirichlet_chunk(
    field: &dyn VelocityField,
    opts: &MonitorOptions,
    x0: &Tensor,
    y: Option<&Tensor>,
    grid: &[f64],
    rngs: &mut [ChaCha8Rng],
    on_step: &mut dyn FnMut(usize),
) -> Result<Vec<f64>> {
    let b = x0.dim(0)?;
    let (dtype, dev) = (x0.dtype(), x0.device());
    let hutch = opts.hutchinson();
    let mut out = Vec::with_capacity((grid.len() - 1) * b);
    let mut x = x0.clone();
    for (j, w) in grid.windows(2).enumerate() {
        let t = time(w[0], b, dtype, dev)?;
        let (v, sq) = frobenius_sq_estimate(field, &x, &t, y, &hutch, rngs)?;
        out.extend(sq.into_iter().map(|q| 0.5 * q));
        x = (&x + (&v * (w[1] - w[0]))?)?.detach();
        on_step(j);
    }
    Ok(out)
}
