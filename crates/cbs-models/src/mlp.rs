//! A small MLP velocity network for low-dimensional data (toy targets such as Gaussian
//! mixtures), so the whole pipeline runs on toy data in seconds.
//!
//! `v(x, t) = out(SiLU(… SiLU(layers.i(SiLU(in_proj([x, t])))) …))`, with `t` appended to the
//! input as one extra feature (as torchcfm's toy MLP does). Unconditional: labels are ignored.

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
}

const WIDTHS: &[usize] = &[64, 128, 256, 512];

impl MlpConfig {
    pub fn preset_names() -> Vec<String> {
        WIDTHS.iter().map(|w| format!("mlp-{w}")).collect()
    }

    /// `mlp-{64,128,256,512}`: that width, 3 hidden layers.
    pub fn preset(name: &str) -> Option<Self> {
        let w: usize = name.strip_prefix("mlp-")?.parse().ok()?;
        WIDTHS.contains(&w).then_some(Self {
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
            in_proj: linear(cfg.dim + 1, cfg.hidden, vb.pp("in_proj"))?,
            layers,
            out_proj: linear(cfg.hidden, cfg.dim, vb.pp("out_proj"))?,
        })
    }

    /// `x`: `[B, D]`, `t`: `[B]` → `[B, D]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let xt = Tensor::cat(&[x, &t.unsqueeze(1)?], D::Minus1)?; // [B, D + 1]
        let mut h = self.in_proj.forward(&xt)?.silu()?;
        for l in &self.layers {
            h = l.forward(&h)?.silu()?;
        }
        self.out_proj.forward(&h)
    }
}
