//! The per-time velocity error of a model (or a set of experts) on held-out data: the direct
//! measure of what CBS claims to balance.
//!
//! For each time `t_j` of a grid and each held-out sample `x1_i`, one noise `x0_ij` (seeded,
//! `Purpose::VelocityError`, counter `j·N + i`: the same for every model evaluated with one
//! seed, whatever the batch size) gives `x_t = α(t)·x1 + σ(t)·x0`, and the error at `t_j` is the
//! mean over samples and coordinates of `(v(x_t, t, y) − target)²`:
//!
//! - [`Reference::Conditional`]: the target is the conditional velocity `α'·x1 + σ'·x0` (the
//!   training target). Its expected error is the model's excess error *plus* the irreducible
//!   floor `E‖v* − target‖²` of the data; the floor is the same for every model, so
//!   differences between models evaluated with one seed are differences of excess error.
//! - [`Reference::Field`]: the target is a known exact field `v*(x_t, t, y)` (a Gaussian
//!   mixture's), and the error is the excess error alone (zero for the exact field itself).

use candle_core::{DType, Device, Tensor};
use cbs_core::rng::{stream, Purpose};
use cbs_flow::path::Interpolant;
use cbs_flow::VelocityField;
use rand_distr::{Distribution, StandardNormal};

use crate::{Result, SampleError};

/// What a model's velocity is compared with.
pub enum Reference<'a> {
    /// The conditional (training) target `α'(t)·x1 + σ'(t)·x0`.
    Conditional,
    /// An exact velocity field.
    Field(&'a dyn VelocityField),
}

/// Where and how the error is measured.
pub struct ErrorGrid<'a> {
    /// Held-out samples `[N, ...]` (float).
    pub data: &'a Tensor,
    /// Their labels `[N]` (u32), for class-conditional models.
    pub labels: Option<&'a Tensor>,
    pub path: Interpolant,
    /// Times in [0, 1].
    pub times: &'a [f64],
    pub seed: u64,
    /// Samples per velocity evaluation.
    pub batch: usize,
}

/// `n` times at the midpoints of `n` equal cells of [0, 1].
pub fn midpoint_times(n: usize) -> Vec<f64> {
    (0..n).map(|j| (j as f64 + 0.5) / n as f64).collect()
}

/// The noise of sample `i` at time index `j` (`per` values).
fn noise(seed: u64, j: usize, i: usize, n: usize, per: usize) -> Vec<f32> {
    let mut rng = stream(seed, Purpose::VelocityError, (j * n + i) as u64);
    (0..per).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// The mean squared velocity error at every time of `grid.times`; `field_at(t)` is the model
/// that owns time `t` (one model, or the expert of t's segment). `progress(done, total)` is
/// called after each time.
pub fn velocity_error<'f>(
    field_at: &dyn Fn(f64) -> &'f dyn VelocityField,
    reference: &Reference<'_>,
    grid: &ErrorGrid<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let dims = grid.data.dims().to_vec();
    let n = dims[0];
    if n == 0 || grid.batch == 0 {
        return Err(SampleError::Invalid {
            option: "velocity error",
            message: format!("{n} held-out samples, batch {}", grid.batch),
        });
    }
    if let Some(t) = grid.times.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(SampleError::Invalid {
            option: "velocity error",
            message: format!("time {t} outside [0, 1]"),
        });
    }
    let per: usize = dims[1..].iter().product();
    let dev: &Device = grid.data.device();
    let dtype = grid.data.dtype();
    let mut out = Vec::with_capacity(grid.times.len());
    for (j, &t) in grid.times.iter().enumerate() {
        let field = field_at(t);
        let mut sum = 0.0f64;
        for start in (0..n).step_by(grid.batch) {
            let b = grid.batch.min(n - start);
            let x1 = grid.data.narrow(0, start, b)?;
            let mut z = Vec::with_capacity(b * per);
            for i in start..start + b {
                z.extend(noise(grid.seed, j, i, n, per));
            }
            let mut shape = dims.clone();
            shape[0] = b;
            let x0 = Tensor::from_vec(z, shape, dev)?.to_dtype(dtype)?;
            let tt = Tensor::full(t, b, dev)?.to_dtype(dtype)?;
            let xt = grid.path.interpolate(&x0, &x1, &tt)?;
            let y = grid.labels.map(|l| l.narrow(0, start, b)).transpose()?;
            let v = field.velocity(&xt, &tt, y.as_ref())?;
            let target = match reference {
                Reference::Conditional => grid.path.target(&x0, &x1, &tt)?,
                Reference::Field(f) => f.velocity(&xt, &tt, y.as_ref())?,
            };
            sum += (v - target)?
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        out.push(sum / (n * per) as f64);
        progress(j + 1, grid.times.len());
    }
    Ok(out)
}

/// The mean error over the grid times inside each segment `[edges[s], edges[s+1])` (the last
/// segment includes 1); NaN for a segment without grid times.
pub fn segment_means(times: &[f64], errors: &[f64], edges: &[f64]) -> Vec<f64> {
    let segs = edges.len().saturating_sub(1);
    let mut sum = vec![0.0; segs];
    let mut cnt = vec![0usize; segs];
    for (&t, &e) in times.iter().zip(errors) {
        let s = edges[1..]
            .iter()
            .position(|&hi| t < hi)
            .unwrap_or(segs.saturating_sub(1));
        sum[s] += e;
        cnt[s] += 1;
    }
    sum.iter()
        .zip(&cnt)
        .map(|(s, &c)| if c == 0 { f64::NAN } else { s / c as f64 })
        .collect()
}
