//! A small MLP velocity network for low-dimensional data (toy targets such as Gaussian
//! mixtures), so the whole pipeline runs on toy data in seconds.
//!
//! `v(x, t) = out(SiLU(… SiLU(layers.i(SiLU(in_proj([x, φ(t)])))) …))` where
//! `φ(t) = [t, sin(πkt), cos(πkt)]_{k=1..16}`: Fourier time features let a small network resolve
//! the fast late-time contraction onto the modes (with `t` alone it smooths it away, which
//! moves the acceleration monitor's knots). Unconditional: labels are ignored.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result as MResult};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Data dimension.
    pub dim: usize,
    pub hidden: usize,
    /// Hidden-to-hidden layers between the input and output projections.
    pub depth: usize,
    /// The op implementations the built network runs on (a run option, not part of the
    /// architecture: never serialised; [`crate::Model::new`] sets it).
    #[serde(skip)]
    pub kernels: crate::Kernels,
}

const WIDTHS: &[usize] = &[64, 128, 256, 512];
/// Fourier frequencies of the time features.
const TIME_FREQS: usize = 16;
const TIME_FEATURES: usize = 1 + 2 * TIME_FREQS;

impl MlpConfig {
    pub fn preset_names() -> Vec<String> {
        WIDTHS.iter().map(|w| format!("mlp-{w}")).collect()
    }

    /// `mlp-{64,128,256,512}`: that width, 3 hidden layers.
    pub fn preset(name: &str) -> Option<Self> {
        let w: usize = name.strip_prefix("mlp-")?.parse().ok()?;
        WIDTHS.contains(&w).then_some(Self {
            kernels: crate::Kernels::Fused,
            dim: 2,
            hidden: w,
            depth: 3,
        })
    }

    pub fn validate(&self) -> MResult<()> {
        if self.dim == 0 || self.hidden == 0 {
            return Err(ModelError::Invalid(
                "mlp dim and hidden must be positive".into(),
            ));
        }
        Ok(())
    }
}

pub struct MlpNet {
    in_proj: Linear,
    layers: Vec<Linear>,
    out_proj: Linear,
}

impl MlpNet {
    pub fn new(cfg: &MlpConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.depth)
            .map(|i| linear(cfg.hidden, cfg.hidden, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            in_proj: linear(cfg.dim + TIME_FEATURES, cfg.hidden, vb.pp("in_proj"))?,
            layers,
            out_proj: linear(cfg.hidden, cfg.dim, vb.pp("out_proj"))?,
        })
    }

    /// `[B]` → `[B, 1 + 2·TIME_FREQS]`.
    fn time_features(t: &Tensor) -> Result<Tensor> {
        let k: Vec<f32> = (1..=TIME_FREQS)
            .map(|k| std::f32::consts::PI * k as f32)
            .collect();
        let k = Tensor::from_vec(k, (1, TIME_FREQS), t.device())?.to_dtype(t.dtype())?;
        let t = t.unsqueeze(1)?; // [B, 1]
        let args = t.broadcast_mul(&k)?; // [B, TIME_FREQS]
        Tensor::cat(&[&t, &args.sin()?, &args.cos()?], D::Minus1)
    }

    /// `x`: `[B, D]`, `t`: `[B]` → `[B, D]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        // Time features in the caller's dtype (f32), then the network's.
        let tf = Self::time_features(t)?.to_dtype(x.dtype())?;
        let xt = Tensor::cat(&[x, &tf], D::Minus1)?; // [B, D + 33]
        let mut h = self.in_proj.forward(&xt)?.silu()?;
        for l in &self.layers {
            h = l.forward(&h)?.silu()?;
        }
        self.out_proj.forward(&h)
    }
}
