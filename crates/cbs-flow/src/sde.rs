//! Euler–Maruyama sampling of SiT's reverse-time SDE, on the same explicit step grid as the
//! ODE solvers (so expert switching puts a step edge on every knot):
//!
//! `dx = [v(x, t) + w(t)·s(x, t)] dt + √(2·w(t)) dW`,
//!
//! with the score `s` obtained from the velocity on the model's [`Interpolant`]
//! (`s = (α/α'·v − x) / (σ² − α/α'·σ'·σ)`, SiT's `get_score_from_velocity`) and the diffusion
//! `w` one of SiT's forms ([`Diffusion`]). Every marginal `p_t` is kept for any `w`; `w`
//! trades ODE-like determinism against Langevin-style correction.
//!
//! Two steps carry no noise, which keeps the sampler finite where SiT's produces NaN (its
//! issue 22): the first, from `t = 0`, where α = 0 makes `SBDM`'s `w = α'/α·σ² − σσ'`
//! infinite, is a plain Euler step of the velocity; the last, ending at `t = 1`, where σ = 0
//! makes the score singular, is SiT's `last_step = "Mean"` (the drift without noise).

use candle_core::{DType, Result, Tensor};

use crate::path::Interpolant;
use crate::VelocityField;

/// The diffusion coefficient `w(t)` (SiT's `diffusion_form`), scaled by `norm`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Diffusion {
    /// `w = norm`.
    Constant,
    /// Score-based diffusion models' choice (SiT's default): `w = norm·(α'/α·σ² − σ·σ')`.
    #[default]
    Sbdm,
    /// `w = norm·σ(t)`.
    Sigma,
    /// `w = norm·(1 − t)`.
    Linear,
    /// `w = ¼·(norm·cos(πt) + 1)²`.
    Decreasing,
    /// `w = norm·sin²(πt)`.
    IncreasingDecreasing,
}

/// What the SDE sampler needs besides the field: the model's path and the diffusion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SdeSettings {
    pub path: Interpolant,
    pub diffusion: Diffusion,
    /// SiT's `diffusion_norm` (1 by default).
    pub norm: f64,
}

impl SdeSettings {
    /// `w(t)`.
    pub fn diffusion(&self, t: f64) -> f64 {
        let c = self.path.coefficients(t);
        let n = self.norm;
        match self.diffusion {
            Diffusion::Constant => n,
            Diffusion::Sbdm => n * (c.d_alpha / c.alpha * c.sigma * c.sigma - c.sigma * c.d_sigma),
            Diffusion::Sigma => n * c.sigma,
            Diffusion::Linear => n * (1.0 - t),
            Diffusion::Decreasing => 0.25 * (n * (std::f64::consts::PI * t).cos() + 1.0).powi(2),
            Diffusion::IncreasingDecreasing => n * (std::f64::consts::PI * t).sin().powi(2),
        }
    }

    /// The score `∇ log p_t(x)` of the model whose velocity at `(x, t)` is `v`.
    pub fn score_from_velocity(&self, v: &Tensor, x: &Tensor, t: f64) -> Result<Tensor> {
        let c = self.path.coefficients(t);
        let ratio = c.alpha / c.d_alpha;
        let var = c.sigma * c.sigma - ratio * c.d_sigma * c.sigma;
        ((v * ratio)? - x)? / var
    }
}

/// Integrates from `grid[0]` (= 0) to `grid[last]` (= 1) with `field_for_step(i)` on step `i`:
/// a noise-free Euler step first, Euler–Maruyama steps, and a noise-free drift step last (see
/// the module documentation). `brownian(i)` gives step `i`'s standard-normal increment
/// direction (shape of `x`; only the stochastic steps ask). Returns the samples and the
/// number of velocity evaluations.
pub fn integrate_sde<'a>(
    x: &Tensor,
    grid: &[f64],
    settings: &SdeSettings,
    y: Option<&Tensor>,
    field_for_step: &dyn Fn(usize) -> &'a dyn VelocityField,
    brownian: &mut dyn FnMut(usize) -> Result<Tensor>,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, usize)> {
    let b = x.dim(0)?;
    let steps = grid.len().saturating_sub(1);
    let mut x = x.clone();
    for i in 0..steps {
        let (t0, t1) = (grid[i], grid[i + 1]);
        let h = t1 - t0;
        let t = Tensor::full(t0, b, x.device())?.to_dtype(x.dtype())?;
        let v = field_for_step(i).velocity_shared(&x, &t, t0, y)?;
        let first = i == 0;
        let last = i + 1 == steps;
        if first && steps > 1 {
            x = (&x + (v * h)?)?;
        } else {
            let w = settings.diffusion(t0);
            let score = settings.score_from_velocity(&v, &x, t0)?;
            let drift = (v + (score * w)?)?;
            x = (&x + (drift * h)?)?;
            if !last {
                let z = brownian(i)?.to_dtype(x.dtype())?;
                x = (&x + (z * (2.0 * w * h).sqrt())?)?;
            }
        }
        on_step(i + 1, steps);
    }
    Ok((x, steps))
}

/// The per-sample Brownian directions of one batch: sample `start + k` draws its values
/// from its own stream, step after step, so the noise does not depend on the batch size.
pub struct BrownianStreams {
    streams: Vec<rand_chacha::ChaCha8Rng>,
    per_sample: Vec<usize>,
    dtype: DType,
    device: candle_core::Device,
}

impl BrownianStreams {
    /// `streams[k]` serves sample `k` of the batch; `per_sample` is the shape of one sample.
    pub fn new(
        streams: Vec<rand_chacha::ChaCha8Rng>,
        per_sample: &[usize],
        dtype: DType,
        device: &candle_core::Device,
    ) -> Self {
        Self {
            streams,
            per_sample: per_sample.to_vec(),
            dtype,
            device: device.clone(),
        }
    }

    /// The next standard-normal tensor `[B, per_sample…]`.
    pub fn draw(&mut self) -> Result<Tensor> {
        use rand_distr::{Distribution, StandardNormal};
        let per: usize = self.per_sample.iter().product();
        let mut v = Vec::with_capacity(per * self.streams.len());
        for r in &mut self.streams {
            v.extend((0..per).map(|_| -> f32 { StandardNormal.sample(r) }));
        }
        let mut dims = vec![self.streams.len()];
        dims.extend(&self.per_sample);
        Tensor::from_vec(v, dims, &self.device)?.to_dtype(self.dtype)
    }
}
