//! The layers of SiT, one struct each, named like the reference `state_dict`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::SitConfig;
use crate::nn::{self, chunk_last, Kernels};

const LN_EPS: f64 = 1e-6;

/// `x_embedder.proj`: Conv2d(in, hidden, kernel = stride = patch), evaluated as patchify +
/// matmul (the same arithmetic as the strided convolution, without im2col).
pub struct PatchEmbed {
    weight: Tensor, // [hidden, in, p, p]
    bias: Tensor,   // [hidden]
    patch: usize,
    k: Kernels,
}

impl PatchEmbed {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        let vb = vb.pp("proj");
        Ok(Self {
            weight: vb.get((cfg.hidden_size, cfg.in_channels, p, p), "weight")?,
            bias: vb.get(cfg.hidden_size, "bias")?,
            patch: p,
            k: cfg.kernels,
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
        nn::linear(self.k, &Linear::new(w, Some(self.bias.clone())), &x) // [B, N, hidden]
    }
}

/// Multi-head self-attention with a fused qkv projection (bias) and an output projection.
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
    k: Kernels,
}

impl Attention {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: linear(h, 3 * h, vb.pp("qkv"))?,
            proj: linear(h, h, vb.pp("proj"))?,
            heads: cfg.num_heads,
            scale: (cfg.head_dim() as f64).powf(-0.5),
            k: cfg.kernels,
        })
    }

    /// `x + gate · attn(modulate(norm1(x), shift, scale))` with (shift, scale, gate) =
    /// `ada.msa()`: the whole residual branch as one fused node where the policy allows.
    pub fn residual(&self, x: &Tensor, ada: Modulation) -> Result<Tensor> {
        let (a, k) = (ada.all, ada.first);
        nn::attention_half(
            self.k, x, a, k, &self.qkv, &self.proj, self.heads, self.scale, LN_EPS,
        )
    }
}

impl Module for Attention {
    /// `[B, N, C]` → `[B, N, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = nn::linear(self.k, &self.qkv, x)?; // [B, N, 3C]
        let out = nn::attention(self.k, &qkv, self.heads, self.scale)?; // [B, N, C]
        nn::linear(self.k, &self.proj, &out)
    }
}

/// `mlp`: fc1 → GELU (tanh approximation) → fc2.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    k: Kernels,
}

impl Mlp {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(cfg.hidden_size, cfg.mlp_hidden(), vb.pp("fc1"))?,
            fc2: linear(cfg.mlp_hidden(), cfg.hidden_size, vb.pp("fc2"))?,
            k: cfg.kernels,
        })
    }

    /// `x + gate · mlp(modulate(norm2(x), shift, scale))` with (shift, scale, gate) =
    /// `ada.mlp()`: one fused node where the policy allows.
    pub fn residual(&self, x: &Tensor, ada: Modulation) -> Result<Tensor> {
        nn::mlp_half(self.k, x, ada.all, ada.first, &self.fc1, &self.fc2, LN_EPS)
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = nn::gelu_tanh(self.k, &nn::linear(self.k, &self.fc1, x)?)?;
        nn::linear(self.k, &self.fc2, &h)
    }
}

/// Three consecutive chunks (shift, scale, gate) of a block's `[B, 6C]` adaLN output, kept
/// as a view of the whole so that the fused kernels read them in place.
#[derive(Clone, Copy)]
pub struct Modulation<'a> {
    all: &'a Tensor,
    first: usize,
}

/// The six adaLN-Zero modulation vectors of a block, `[B, 6C]`: shift, scale, gate of the
/// attention (`msa`), then of the MLP.
pub struct AdaLn(Tensor);

impl AdaLn {
    pub fn msa(&self) -> Modulation<'_> {
        Modulation {
            all: &self.0,
            first: 0,
        }
    }
    pub fn mlp(&self) -> Modulation<'_> {
        Modulation {
            all: &self.0,
            first: 3,
        }
    }
}

/// One adaLN-Zero block.
pub struct SitBlock {
    attn: Attention,
    mlp: Mlp,
    ada_ln: Linear, // adaLN_modulation.1 (index 0 is the SiLU)
    k: Kernels,
}

impl SitBlock {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            attn: Attention::new(cfg, vb.pp("attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            ada_ln: linear(h, 6 * h, vb.pp("adaLN_modulation").pp("1"))?,
            k: cfg.kernels,
        })
    }

    /// `x`: `[B, N, C]`, `c`: `[B, C]` (DiT's block: `norm1`/`norm2` are LayerNorms without
    /// affine parameters, folded into the residual branches).
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let ada = AdaLn(nn::linear(self.k, &self.ada_ln, &nn::silu(self.k, c)?)?); // [B, 6C]
        let x = self.attn.residual(x, ada.msa())?;
        self.mlp.residual(&x, ada.mlp())
    }
}

/// `final_layer`: LayerNorm → adaLN (shift, scale) → Linear(hidden, p²·out_channels).
pub struct FinalLayer {
    linear: Linear,
    ada_ln: Linear,
    k: Kernels,
}

impl FinalLayer {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        Ok(Self {
            linear: linear(h, p * p * cfg.out_channels(), vb.pp("linear"))?,
            ada_ln: linear(h, 2 * h, vb.pp("adaLN_modulation").pp("1"))?,
            k: cfg.kernels,
        })
    }

    /// `[B, N, C]` → `[B, N, p²·out_channels]`.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let k = self.k;
        let m = chunk_last(&nn::linear(k, &self.ada_ln, &nn::silu(k, c)?)?, 2)?;
        let h = nn::layer_norm_modulate(k, x, &m[0], &m[1], LN_EPS)?;
        nn::linear(k, &self.linear, &h)
    }
}
