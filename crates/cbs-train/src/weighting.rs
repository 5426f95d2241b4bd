//! Per-sample loss weights over time (`train.loss_weighting`): ERD's recoverability weights
//! and Min-SNR-γ, normalised to mean 1 under the run's time distribution.
//!
//! For a target `y = c_x·x1 + c_ε·x0` on a path `x_t = α·x1 + σ·x0` ERD weights by
//! `ω_l1 = |c_x|·α + |c_ε|·σ` or `ω_rms = √(c_x²α² + c_ε²σ²)`; velocity models regress
//! `y = α'·x1 + σ'·x0` (on the linear path `ω_l1 = 1`: no change, and `ω_rms =
//! √(t² + (1 − t)²)`), JiT's clean-image prediction `y = x1` (`ω_l1 = t`). Min-SNR-γ for
//! velocity targets: `min(SNR, γ) / (SNR + 1)`, `SNR = α²/σ²`.

use cbs_flow::path::Interpolant;
use cbs_models::Architecture;

use crate::config::{LossWeighting, TrainSection, WeightNorm};
use crate::times::TimeDist;

/// Points of the midpoint rule over the time distribution's quantiles.
const NORM_POINTS: usize = 4096;

/// A resolved weighting: `w(t) = ω(t) / Z`, `Z` the mean of ω under the time distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossWeights {
    kind: LossWeighting,
    path: Interpolant,
    /// The network predicts the clean image (JiT): `c_x = 1, c_ε = 0`.
    x_prediction: bool,
    gamma: f64,
    z: f64,
}

impl LossWeights {
    /// The run's weighting, `None` for `loss_weighting = "none"`.
    pub fn resolve(tc: &TrainSection, arch: &Architecture) -> Option<Self> {
        if tc.loss_weighting == LossWeighting::None {
            return None;
        }
        let mut w = LossWeights {
            kind: tc.loss_weighting,
            path: tc.path,
            x_prediction: matches!(arch, Architecture::Jit(_)),
            gamma: tc.min_snr_gamma,
            z: 1.0,
        };
        let dist = match tc.loss_weighting_norm {
            WeightNorm::Interval => TimeDist::resolve(tc, arch),
            WeightNorm::Global => {
                let mut all = tc.clone();
                all.t_range = [0.0, 1.0];
                TimeDist::resolve(&all, arch)
            }
        };
        w.z = w.mean_omega(&dist);
        Some(w)
    }

    /// `E[ω(t)]` for `t` from `dist` (midpoint rule over its quantiles).
    pub fn mean_omega(&self, dist: &TimeDist) -> f64 {
        let n = NORM_POINTS as f64;
        let sum: f64 = (0..NORM_POINTS)
            .map(|i| self.omega(dist.time((i as f64 + 0.5) / n)))
            .sum();
        sum / n
    }

    /// The unnormalised weight ω(t).
    pub fn omega(&self, t: f64) -> f64 {
        let c = self.path.coefficients(t);
        let (cx, ce) = if self.x_prediction {
            (1.0, 0.0)
        } else {
            (c.d_alpha, c.d_sigma)
        };
        match self.kind {
            LossWeighting::None => 1.0,
            LossWeighting::ErdL1 => cx.abs() * c.alpha + ce.abs() * c.sigma,
            LossWeighting::ErdRms => ((cx * c.alpha).powi(2) + (ce * c.sigma).powi(2)).sqrt(),
            LossWeighting::MinSnr => {
                let snr = (c.alpha / c.sigma).powi(2);
                if snr.is_finite() {
                    snr.min(self.gamma) / (snr + 1.0)
                } else {
                    0.0
                }
            }
        }
    }

    /// The normalised weight `w(t) = ω(t) / Z`.
    pub fn weight(&self, t: f64) -> f64 {
        self.omega(t) / self.z
    }
}
