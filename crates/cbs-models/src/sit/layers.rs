//! The layers of SiT, one struct each, named like the reference `state_dict`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

use super::SitConfig;
use crate::nn::{
    attention, attention_half, chunk_last, gelu_tanh, layer_norm_modulate, linear as apply,
    mlp_half, silu,
};

const LN_EPS: f64 = 1e-6;

/// `x_embedder.proj`: Conv2d(in, hidden, kernel = stride = patch), evaluated as patchify +
/// matmul (the same arithmetic as the strided convolution, without im2col).
pub struct PatchEmbed {
    weight: Tensor, // [hidden, in, p, p]
    bias: Tensor,   // [hidden]
    patch: usize,
}

impl PatchEmbed {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        let vb = vb.pp("proj");
        Ok(Self {
            weight: vb.get((cfg.hidden_size, cfg.in_channels, p, p), "weight")?,
            bias: vb.get(cfg.hidden_size, "bias")?,
            patch: p,
        })
    }
}

impl Module for PatchEmbed {
    /// `[B, C, H, W]` → `[B, N, hidden]`, tokens in row-major patch order.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        let x = x
            .reshape((b, c, gh, p, gw, p))? // [B, C, gh, p, gw, p]
            .permute((0, 2, 4, 1, 3, 5))? // [B, gh, gw, C, p, p]
            .contiguous()?; // [B, gh, gw, C, p, p]
        let hidden = self.weight.dim(0)?;
        let w = self.weight.reshape((hidden, c * p * p))?; // [hidden, C·p·p]
        let x = x.reshape((b, gh * gw, c * p * p))?; // [B, N, C·p·p]
        apply(&Linear::new(w, Some(self.bias.clone())), &x) // [B, N, hidden]
    }
}

/// `t_embedder`: [cos, sin] frequency features of dim 256 → Linear → SiLU → Linear.
pub struct TimestepEmbedder {
    fc0: Linear, // mlp.0
    fc2: Linear, // mlp.2
    freq_dim: usize,
}

impl TimestepEmbedder {
    pub const FREQ_DIM: usize = 256;
    const MAX_PERIOD: f64 = 10000.0;

    pub fn new(hidden: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("mlp");
        Ok(Self {
            fc0: linear(Self::FREQ_DIM, hidden, vb.pp("0"))?,
            fc2: linear(hidden, hidden, vb.pp("2"))?,
            freq_dim: Self::FREQ_DIM,
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
        let f = Self::frequency_features(t, self.freq_dim)?;
        apply(&self.fc2, &silu(&apply(&self.fc0, &f)?)?)
    }
}

/// `y_embedder.embedding_table`: `num_classes (+1 null row)` × hidden.
pub struct LabelEmbedder {
    table: Tensor,
}

impl LabelEmbedder {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_rows(cfg.label_rows(), cfg.hidden_size, vb)
    }

    /// A `rows × hidden` table (JiT's has the same layout and key).
    pub fn with_rows(rows: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let table = vb.pp("embedding_table").get((rows, hidden), "weight")?;
        Ok(Self { table })
    }

    /// `[B]` u32 labels → `[B, hidden]`.
    pub fn forward(&self, y: &Tensor) -> Result<Tensor> {
        // index_select has a gradient for the table (scatter-add), unlike a one-hot detour.
        self.table.index_select(&y.to_dtype(DType::U32)?, 0)
    }
}

/// Multi-head self-attention with a fused qkv projection (bias) and an output projection.
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: linear(h, 3 * h, vb.pp("qkv"))?,
            proj: linear(h, h, vb.pp("proj"))?,
            heads: cfg.num_heads,
            scale: (cfg.head_dim() as f64).powf(-0.5),
        })
    }
}

impl Module for Attention {
    /// `[B, N, C]` → `[B, N, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = apply(&self.qkv, x)?; // [B, N, 3C]
        apply(&self.proj, &attention(&qkv, self.heads, self.scale)?)
    }
}

/// `mlp`: fc1 → GELU (tanh approximation) → fc2.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(cfg.hidden_size, cfg.mlp_hidden(), vb.pp("fc1"))?,
            fc2: linear(cfg.mlp_hidden(), cfg.hidden_size, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        apply(&self.fc2, &gelu_tanh(&apply(&self.fc1, x)?)?)
    }
}

/// One adaLN-Zero block.
pub struct SitBlock {
    attn: Attention,
    mlp: Mlp,
    ada_ln: Linear, // adaLN_modulation.1 (index 0 is the SiLU)
}

impl SitBlock {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            attn: Attention::new(cfg, vb.pp("attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            ada_ln: linear(h, 6 * h, vb.pp("adaLN_modulation").pp("1"))?,
        })
    }

    /// `x`: `[B, N, C]`, `c`: `[B, C]`. Each half is one graph node on the CPU
    /// (`nn::attention_half`, `nn::mlp_half`).
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let ada = apply(&self.ada_ln, &silu(c)?)?; // [B, 6C]: shift, scale, gate (msa, mlp)
        let (a, m) = (&self.attn, &self.mlp);
        let x = attention_half(x, &ada, 0, &a.qkv, &a.proj, a.heads, a.scale, LN_EPS)?;
        mlp_half(&x, &ada, 3, &m.fc1, &m.fc2, LN_EPS)
    }
}

/// `final_layer`: LayerNorm → adaLN (shift, scale) → Linear(hidden, p²·out_channels).
pub struct FinalLayer {
    linear: Linear,
    ada_ln: Linear,
}

impl FinalLayer {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        Ok(Self {
            linear: linear(h, p * p * cfg.out_channels(), vb.pp("linear"))?,
            ada_ln: linear(h, 2 * h, vb.pp("adaLN_modulation").pp("1"))?,
        })
    }

    /// `[B, N, C]` → `[B, N, p²·out_channels]`.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let m = chunk_last(&apply(&self.ada_ln, &silu(c)?)?, 2)?;
        let h = layer_norm_modulate(x, &m[0], &m[1], LN_EPS)?;
        apply(&self.linear, &h)
    }
}
