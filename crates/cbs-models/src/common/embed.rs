//! The conditioning embedders of SiT/DiT and JiT, named like the reference `state_dict`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

use crate::nn::{self, Kernels};

/// `t_embedder`: [cos, sin] frequency features of dim 256 → Linear → SiLU → Linear.
pub struct TimestepEmbedder {
    fc0: Linear, // mlp.0
    fc2: Linear, // mlp.2
    freq_dim: usize,
    k: Kernels,
}

impl TimestepEmbedder {
    pub const FREQ_DIM: usize = 256;
    const MAX_PERIOD: f64 = 10000.0;

    pub fn new(hidden: usize, k: Kernels, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("mlp");
        Ok(Self {
            fc0: linear(Self::FREQ_DIM, hidden, vb.pp("0"))?,
            fc2: linear(hidden, hidden, vb.pp("2"))?,
            freq_dim: Self::FREQ_DIM,
            k,
        })
    }

    /// `[B]` → `[B, freq_dim]`: `[cos(t·f), sin(t·f)]`, `f_k = exp(−ln(10000)·k/half)`.
    pub fn frequency_features(t: &Tensor, dim: usize) -> Result<Tensor> {
        let half = dim / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|k| (-(Self::MAX_PERIOD.ln()) * k as f64 / half as f64).exp() as f32)
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(t.dtype())?;
        let args = t.unsqueeze(1)?.broadcast_mul(&freqs)?; // [B, half]
        Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)
    }
}

impl Module for TimestepEmbedder {
    fn forward(&self, t: &Tensor) -> Result<Tensor> {
        // Frequencies in the times' dtype (f32: bf16 would round t to 3 digits), then the
        // weights' dtype.
        let f = Self::frequency_features(t, self.freq_dim)?.to_dtype(self.fc0.weight().dtype())?;
        let k = self.k;
        nn::linear(k, &self.fc2, &nn::silu(k, &nn::linear(k, &self.fc0, &f)?)?)
    }
}

/// `y_embedder.embedding_table`: `rows` × hidden (`num_classes`, plus one null row when
/// labels are dropped for classifier-free guidance).
pub struct LabelEmbedder {
    table: Tensor,
}

impl LabelEmbedder {
    pub fn new(rows: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let table = vb.pp("embedding_table").get((rows, hidden), "weight")?;
        Ok(Self { table })
    }
}

impl Module for LabelEmbedder {
    /// `[B]` labels → `[B, hidden]`.
    fn forward(&self, y: &Tensor) -> Result<Tensor> {
        // index_select has a gradient for the table (scatter-add), unlike a one-hot detour.
        self.table.index_select(&y.to_dtype(DType::U32)?, 0)
    }
}
