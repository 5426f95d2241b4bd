//! The layers of JiT, one struct each, named like the reference `state_dict`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Init, Linear, VarBuilder};

use super::rope::Rope;
use super::JitConfig;
use crate::nn::{self, chunk_last, Kernels};

/// RMSNorm epsilon of every norm of the reference (blocks, qk-norm, final layer).
pub const RMS_EPS: f64 = 1e-6;

/// RMSNorm with a learned weight (initialised to ones): `w · x / sqrt(mean(x²) + eps)` over
/// the last dimension, in f32 for half-precision inputs (as the reference). The blocks and
/// the final layer use it through [`nn::rms_norm_modulate`], the attention through
/// [`nn::qk_norm_rope`] (fused kernels on the CPU).
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    k: Kernels,
}

impl RmsNorm {
    pub fn new(dim: usize, k: Kernels, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            eps: RMS_EPS,
            k,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `RMS(x)·w·(1 + scale) + shift` (`x` `[B, N, C]`, `shift`, `scale` `[B, C]`).
    pub fn forward_modulated(&self, x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
        nn::rms_norm_modulate(self.k, x, &self.weight, shift, scale, self.eps)
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        nn::composed::rms_norm(x, &self.weight, self.eps)
    }
}

/// `x_embedder`: `proj1` = Conv2d(C, bottleneck, k = s = p, no bias), `proj2` =
/// Conv2d(bottleneck, hidden, 1×1, bias); evaluated as patchify + two matmuls.
pub struct BottleneckPatchEmbed {
    proj1: Tensor,      // [bottleneck, C, p, p]
    proj2: Tensor,      // [hidden, bottleneck, 1, 1]
    proj2_bias: Tensor, // [hidden]
    patch: usize,
}

impl BottleneckPatchEmbed {
    pub fn new(cfg: &JitConfig, vb: VarBuilder) -> Result<Self> {
        let (p, bn, h) = (cfg.patch_size, cfg.bottleneck_dim, cfg.hidden_size);
        Ok(Self {
            proj1: vb.pp("proj1").get((bn, cfg.in_channels, p, p), "weight")?,
            proj2: vb.pp("proj2").get((h, bn, 1, 1), "weight")?,
            proj2_bias: vb.pp("proj2").get(h, "bias")?,
            patch: p,
        })
    }
}

impl Module for BottleneckPatchEmbed {
    /// `[B, C, H, W]` → `[B, N, hidden]`, tokens in row-major patch order.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        let x = x
            .reshape((b, c, gh, p, gw, p))? // [B, C, gh, p, gw, p]
            .permute((0, 2, 4, 1, 3, 5))? // [B, gh, gw, C, p, p]
            .contiguous()?
            .reshape((b, gh * gw, c * p * p))?; // [B, N, C·p·p]
        let bn = self.proj1.dim(0)?;
        let hidden = self.proj2.dim(0)?;
        let w1 = self.proj1.reshape((bn, c * p * p))?; // [bn, C·p·p]
        let w2 = self.proj2.reshape((hidden, bn))?; // [hidden, bn]
        x.broadcast_matmul(&w1.t()?)? // [B, N, bn]
            .broadcast_matmul(&w2.t()?)? // [B, N, hidden]
            .broadcast_add(&self.proj2_bias)
    }
}

/// Self-attention: fused qkv (bias), per-head RMS qk-norm, RoPE on q and k, softmax
/// attention with scale `1/sqrt(head_dim)`, output projection.
pub struct Attention {
    qkv: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    proj: Linear,
    heads: usize,
    scale: f64,
    k: Kernels,
}

impl Attention {
    pub fn new(cfg: &JitConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let d = cfg.head_dim();
        Ok(Self {
            qkv: linear(h, 3 * h, vb.pp("qkv"))?,
            q_norm: RmsNorm::new(d, cfg.kernels, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(d, cfg.kernels, vb.pp("k_norm"))?,
            proj: linear(h, h, vb.pp("proj"))?,
            heads: cfg.num_heads,
            scale: (d as f64).powf(-0.5),
            k: cfg.kernels,
        })
    }

    /// `x`: `[B, N, C]`; `rope` covers the N tokens.
    pub fn forward(&self, x: &Tensor, rope: &Rope) -> Result<Tensor> {
        let k = self.k;
        let qkv = nn::linear(k, &self.qkv, x)?; // [B, N, 3C]
        let (wq, wk) = (self.q_norm.weight(), self.k_norm.weight());
        let qkv = nn::qk_norm_rope(k, &qkv, wq, wk, rope, self.heads, self.q_norm.eps)?; // [B, N, 3C]
        let out = nn::attention(k, &qkv, self.heads, self.scale)?; // [B, N, C]
        nn::linear(k, &self.proj, &out)
    }
}

/// `mlp`: SwiGLU, `w12` (hidden → 2·m) split into (a, b), `silu(a)·b`, `w3` (m → hidden).
pub struct SwiGluFfn {
    w12: Linear,
    w3: Linear,
    k: Kernels,
}

impl SwiGluFfn {
    pub fn new(cfg: &JitConfig, vb: VarBuilder) -> Result<Self> {
        let m = cfg.mlp_hidden();
        Ok(Self {
            w12: linear(cfg.hidden_size, 2 * m, vb.pp("w12"))?,
            w3: linear(m, cfg.hidden_size, vb.pp("w3"))?,
            k: cfg.kernels,
        })
    }
}

impl Module for SwiGluFfn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x12 = nn::linear(self.k, &self.w12, x)?; // [B, N, 2m]
        nn::linear(self.k, &self.w3, &nn::swiglu(self.k, &x12)?) // [B, N, hidden]
    }
}

/// One adaLN-Zero block with RMSNorm, RoPE attention and SwiGLU.
pub struct JitBlock {
    norm1: RmsNorm,
    attn: Attention,
    norm2: RmsNorm,
    mlp: SwiGluFfn,
    ada_ln: Linear, // adaLN_modulation.1 (index 0 is the SiLU)
    k: Kernels,
}

impl JitBlock {
    pub fn new(cfg: &JitConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            norm1: RmsNorm::new(h, cfg.kernels, vb.pp("norm1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            norm2: RmsNorm::new(h, cfg.kernels, vb.pp("norm2"))?,
            mlp: SwiGluFfn::new(cfg, vb.pp("mlp"))?,
            ada_ln: linear(h, 6 * h, vb.pp("adaLN_modulation").pp("1"))?,
            k: cfg.kernels,
        })
    }

    /// `x`: `[B, N, C]`, `c`: `[B, C]`, `rope` covering the N tokens.
    pub fn forward(&self, x: &Tensor, c: &Tensor, rope: &Rope) -> Result<Tensor> {
        let k = self.k;
        let m = chunk_last(&nn::linear(k, &self.ada_ln, &nn::silu(k, c)?)?, 6)?;
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (shift_mlp, scale_mlp, gate_mlp) = (&m[3], &m[4], &m[5]);
        let h = self.norm1.forward_modulated(x, shift_msa, scale_msa)?;
        let x = nn::gated_residual(k, x, gate_msa, &self.attn.forward(&h, rope)?)?;
        let h = self.norm2.forward_modulated(&x, shift_mlp, scale_mlp)?;
        nn::gated_residual(k, &x, gate_mlp, &self.mlp.forward(&h)?)
    }
}

/// `final_layer`: RMSNorm (`norm_final`) → adaLN (shift, scale) → Linear(hidden, p²·C).
pub struct FinalLayer {
    norm_final: RmsNorm,
    linear: Linear,
    ada_ln: Linear,
    k: Kernels,
}

impl FinalLayer {
    pub fn new(cfg: &JitConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        Ok(Self {
            norm_final: RmsNorm::new(h, cfg.kernels, vb.pp("norm_final"))?,
            linear: linear(h, p * p * cfg.out_channels(), vb.pp("linear"))?,
            ada_ln: linear(h, 2 * h, vb.pp("adaLN_modulation").pp("1"))?,
            k: cfg.kernels,
        })
    }

    /// `[B, N, C]` → `[B, N, p²·out_channels]`.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let k = self.k;
        let m = chunk_last(&nn::linear(k, &self.ada_ln, &nn::silu(k, c)?)?, 2)?;
        let h = self.norm_final.forward_modulated(x, &m[0], &m[1])?;
        nn::linear(k, &self.linear, &h)
    }
}
