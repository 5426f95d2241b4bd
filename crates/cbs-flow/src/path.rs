//! Interpolation paths `x_t = α(t)·x1 + σ(t)·x0` between noise `x0` (t = 0) and data `x1`
//! (t = 1), with the velocity target `α'(t)·x1 + σ'(t)·x0` — SiT's three plans:
//!
//! - `linear`: α = t, σ = 1 − t (rectified flow; SiT's default);
//! - `gvp`: α = sin(πt/2), σ = cos(πt/2) (variance preserving for unit-variance data);
//! - `vp`: SiT's `VPCPlan` (β from 0.1 to 20): with `m(t) = −¼(1 − t)²(β_max − β_min) −
//!   ½(1 − t)β_min`, α = e^m and σ = √(1 − e^{2m}). σ vanishes at t = 1, where σ' diverges, so
//!   the VP coefficients are evaluated at `min(t, 1 − 10⁻⁵)` (SiT's `train_eps`).
//!
//! Sampling integrates `dx/dt = v(x, t)` whatever the path; the path fixes what the network
//! learns (and the score SDE sampling needs), so a run records it.

use std::f64::consts::FRAC_PI_2;

use candle_core::{Result, Tensor};

use crate::interpolant::expand_time;

/// `β_min`, `β_max` of SiT's VP plan.
pub const VP_BETA: (f64, f64) = (0.1, 20.0);
/// The VP coefficients are evaluated at `min(t, VP_T_MAX)`.
pub const VP_T_MAX: f64 = 1.0 - 1e-5;

/// Which interpolation path a model is trained on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Interpolant {
    /// α = t, σ = 1 − t.
    #[default]
    Linear,
    /// α = sin(πt/2), σ = cos(πt/2).
    Gvp,
    /// SiT's variance-preserving plan (β from 0.1 to 20).
    Vp,
}

/// `α, σ` and their time derivatives at one time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coefficients {
    pub alpha: f64,
    pub sigma: f64,
    pub d_alpha: f64,
    pub d_sigma: f64,
}

/// `m(t)` and `m'(t)` of the VP plan.
fn vp_log_mean(t: f64) -> (f64, f64) {
    let (lo, hi) = VP_BETA;
    let u = 1.0 - t.min(VP_T_MAX);
    (
        -0.25 * u * u * (hi - lo) - 0.5 * u * lo,
        0.5 * u * (hi - lo) + 0.5 * lo,
    )
}

impl Interpolant {
    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Interpolant::Linear => "linear",
            Interpolant::Gvp => "gvp",
            Interpolant::Vp => "vp",
        }
    }

    /// `α(t), σ(t), α'(t), σ'(t)` in f64.
    pub fn coefficients(self, t: f64) -> Coefficients {
        match self {
            Interpolant::Linear => Coefficients {
                alpha: t,
                sigma: 1.0 - t,
                d_alpha: 1.0,
                d_sigma: -1.0,
            },
            Interpolant::Gvp => {
                let a = FRAC_PI_2 * t;
                Coefficients {
                    alpha: a.sin(),
                    sigma: a.cos(),
                    d_alpha: FRAC_PI_2 * a.cos(),
                    d_sigma: -FRAC_PI_2 * a.sin(),
                }
            }
            Interpolant::Vp => {
                let (m, dm) = vp_log_mean(t);
                let alpha = m.exp();
                let e2 = (2.0 * m).exp();
                let sigma = (1.0 - e2).sqrt();
                Coefficients {
                    alpha,
                    sigma,
                    d_alpha: alpha * dm,
                    d_sigma: -e2 * dm / sigma,
                }
            }
        }
    }

    /// `[α, σ, α', σ']` for times `t` (`[B]`), as tensors of `t`'s shape, dtype and device
    /// (device ops only: no host round trip in a training step).
    pub fn coefficient_tensors(self, t: &Tensor) -> Result<[Tensor; 4]> {
        match self {
            Interpolant::Linear => Ok([
                t.clone(),
                t.affine(-1.0, 1.0)?,
                t.ones_like()?,
                t.ones_like()?.neg()?,
            ]),
            Interpolant::Gvp => {
                let a = t.affine(FRAC_PI_2, 0.0)?;
                let (s, c) = (a.sin()?, a.cos()?);
                Ok([
                    s.clone(),
                    c.clone(),
                    c.affine(FRAC_PI_2, 0.0)?,
                    s.affine(-FRAC_PI_2, 0.0)?,
                ])
            }
            Interpolant::Vp => {
                let (lo, hi) = VP_BETA;
                let u = t.clamp(f64::NEG_INFINITY, VP_T_MAX)?.affine(-1.0, 1.0)?; // 1 − t
                let m = (u.sqr()?.affine(-0.25 * (hi - lo), 0.0)? + u.affine(-0.5 * lo, 0.0)?)?;
                let dm = u.affine(0.5 * (hi - lo), 0.5 * lo)?;
                let alpha = m.exp()?;
                let e2 = m.affine(2.0, 0.0)?.exp()?;
                let sigma = e2.affine(-1.0, 1.0)?.sqrt()?;
                let d_alpha = (&alpha * &dm)?;
                let d_sigma = ((e2 * dm)? / &sigma)?.neg()?;
                Ok([alpha, sigma, d_alpha, d_sigma])
            }
        }
    }

    /// `x_t = α(t)·x1 + σ(t)·x0`, `t` `[B]` broadcast over the other dimensions.
    pub fn interpolate(self, x0: &Tensor, x1: &Tensor, t: &Tensor) -> Result<Tensor> {
        if self == Interpolant::Linear {
            return crate::interpolant::interpolate(x0, x1, t);
        }
        let [a, s, _, _] = self.coefficient_tensors(t)?;
        x1.broadcast_mul(&expand_time(&a, x1)?)?
            .add(&x0.broadcast_mul(&expand_time(&s, x0)?)?)
    }

    /// The velocity target `α'(t)·x1 + σ'(t)·x0`.
    pub fn target(self, x0: &Tensor, x1: &Tensor, t: &Tensor) -> Result<Tensor> {
        if self == Interpolant::Linear {
            return crate::interpolant::target_velocity(x0, x1);
        }
        let [_, _, da, ds] = self.coefficient_tensors(t)?;
        x1.broadcast_mul(&expand_time(&da, x1)?)?
            .add(&x0.broadcast_mul(&expand_time(&ds, x0)?)?)
    }
}

impl std::fmt::Display for Interpolant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
