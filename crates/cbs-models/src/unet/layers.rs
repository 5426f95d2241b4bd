//! The layers of the UNet, one struct each, named like the reference `state_dict`
//! (torchcfm `torchcfm/models/unet/unet.py`, `nn.py`, from guided-diffusion).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};
use cbs_core::rng::Purpose;
use rand::RngCore;

use super::config::NORM_GROUPS;
use super::conv::Conv3x3;
use super::UnetConfig;
use crate::nn::{self, Kernels};

/// `nn.GroupNorm` default epsilon.
const NORM_EPS: f64 = 1e-5;
/// Max period of the sinusoidal timestep features.
const MAX_PERIOD: f64 = 10000.0;

/// `GroupNorm32`: GroupNorm(32, channels, eps 1e-5) with affine weight/bias, computed in at
/// least f32 (the reference upcasts f16 inputs; f64 stays f64). One fused node on the CPU
/// ([`nn::group_norm`]), with the SiLU that follows it in `in_layers`, `out_layers` and `out`
/// ([`GroupNorm32::forward_silu`]).
pub struct GroupNorm32 {
    weight: Tensor, // [C]
    bias: Tensor,   // [C]
    k: Kernels,
}

impl GroupNorm32 {
    pub fn new(channels: usize, k: Kernels, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            k,
        })
    }

    /// `SiLU(GroupNorm(x))`, `[B, C, ...]` → same shape.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        nn::group_norm(
            self.k,
            x,
            &self.weight,
            &self.bias,
            NORM_GROUPS,
            NORM_EPS,
            true,
        )
    }
}

impl Module for GroupNorm32 {
    /// `[B, C, ...]` → same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        nn::group_norm(
            self.k,
            x,
            &self.weight,
            &self.bias,
            NORM_GROUPS,
            NORM_EPS,
            false,
        )
    }
}

/// A 1×1 convolution (`Conv1d(c_in, c_out, 1)` in attention, `Conv2d(c_in, c_out, 1)` as a
/// skip connection): the reference's weight shape, evaluated as a matrix product over the
/// flattened spatial positions.
pub struct PointwiseConv {
    weight: Tensor, // [out, in]
    bias: Tensor,   // [out, 1]
}

impl PointwiseConv {
    /// `spatial_dims`: 1 for `Conv1d` (weight `[out, in, 1]`), 2 for `Conv2d` (`[out, in, 1, 1]`).
    pub fn new(c_in: usize, c_out: usize, spatial_dims: usize, vb: VarBuilder) -> Result<Self> {
        let mut shape = vec![c_out, c_in];
        shape.extend(std::iter::repeat_n(1, spatial_dims));
        let weight = vb.get(shape, "weight")?.reshape((c_out, c_in))?;
        let bias = vb.get(c_out, "bias")?.reshape((c_out, 1))?;
        Ok(Self { weight, bias })
    }
}

impl Module for PointwiseConv {
    /// `[B, C_in, ...]` → `[B, C_out, ...]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        dims[1] = self.weight.dim(0)?;
        let x = x.reshape((b, c, ()))?; // [B, C_in, S]
        self.weight
            .broadcast_matmul(&x)? // [B, C_out, S]
            .broadcast_add(&self.bias)?
            .reshape(dims)
    }
}

/// `[B]` → `[B, dim]`: `[cos(t·f), sin(t·f)]`, `f_k = exp(−ln(10000)·k/half)`, zero-padded
/// to an odd `dim` (the reference's `timestep_embedding`; t is used unscaled, as torchcfm
/// passes t ∈ [0, 1]).
pub fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|k| (-(MAX_PERIOD.ln()) * k as f64 / half as f64).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(t.dtype())?;
    let args = t.unsqueeze(1)?.broadcast_mul(&freqs)?; // [B, half]
    let mut parts = vec![args.cos()?, args.sin()?];
    if dim % 2 == 1 {
        parts.push(Tensor::zeros((t.dim(0)?, 1), t.dtype(), t.device())?);
    }
    Tensor::cat(&parts, D::Minus1)
}

/// `time_embed`: Linear(mc, 4mc) → SiLU → Linear(4mc, 4mc) on the sinusoidal features.
pub struct TimestepEmbed {
    fc0: Linear, // time_embed.0
    fc2: Linear, // time_embed.2
    dim: usize,
}

impl TimestepEmbed {
    pub fn new(cfg: &UnetConfig, vb: VarBuilder) -> Result<Self> {
        let (mc, ted) = (cfg.model_channels, cfg.time_embed_dim());
        Ok(Self {
            fc0: linear(mc, ted, vb.pp("0"))?,
            fc2: linear(ted, ted, vb.pp("2"))?,
            dim: mc,
        })
    }
}

impl Module for TimestepEmbed {
    /// `[B]` → `[B, 4mc]`.
    fn forward(&self, t: &Tensor) -> Result<Tensor> {
        // See `TimestepEmbedder::forward`: frequencies in the times' dtype.
        let f = timestep_embedding(t, self.dim)?.to_dtype(self.fc0.weight().dtype())?;
        self.fc2.forward(&self.fc0.forward(&f)?.silu()?)
    }
}

/// Dropout with masks from a seeded ChaCha8 generator (candle's CPU RNG cannot be seeded).
/// Mask `k` of a forward pass (the `k`-th res block visited) is stream `k` of
/// `ChaCha8Rng::seed_from_u64(seed)`; element `i` keeps its value iff the `i`-th 32-bit word of
/// that stream is `≥ p·2³²`, scaled by `1/(1 − p)` as `torch.nn.Dropout`. Filled in parallel
/// chunks at fixed word offsets, so the masks do not depend on the thread count.
pub struct Dropout {
    p: f64,
    seed: u64,
    next_stream: u64,
}

impl Dropout {
    const CHUNK: usize = 1 << 14;

    /// No dropout (evaluation).
    pub fn off() -> Self {
        Self {
            p: 0.0,
            seed: 0,
            next_stream: 0,
        }
    }

    pub fn new(p: f64, seed: u64) -> Self {
        Self {
            p,
            seed,
            next_stream: 0,
        }
    }

    fn mask<T: Copy + Send + Sync + Default>(
        n: usize,
        seed: u64,
        stream: u64,
        threshold: u64,
        keep: T,
    ) -> Vec<T> {
        let mut out = vec![T::default(); n];
        cbs_kernels::par::chunks_mut(&mut out, Self::CHUNK, |j, chunk| {
            let mut rng = cbs_core::rng::stream(seed, Purpose::UnetDropout, stream);
            rng.set_word_pos((j * Self::CHUNK) as u128);
            for v in chunk.iter_mut() {
                if rng.next_u32() as u64 >= threshold {
                    *v = keep;
                }
            }
        });
        out
    }

    /// `x` with mask `k` applied (identity when the probability is 0).
    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let stream = self.next_stream;
        self.next_stream += 1;
        let threshold = (self.p * 4_294_967_296.0).ceil() as u64;
        let keep_scale = 1.0 / (1.0 - self.p);
        let (n, seed) = (x.elem_count(), self.seed);
        let mask = if x.dtype() == DType::F64 {
            let v = Self::mask(n, seed, stream, threshold, keep_scale);
            Tensor::from_vec(v, x.shape(), x.device())?
        } else {
            let v = Self::mask(n, seed, stream, threshold, keep_scale as f32);
            Tensor::from_vec(v, x.shape(), x.device())?.to_dtype(x.dtype())?
        };
        x.mul(&mask)
    }
}

/// `ResBlock`: `in_layers` (GroupNorm, SiLU, conv3x3), `emb_layers` (SiLU, Linear),
/// `out_layers` (GroupNorm, SiLU, Dropout, zero-initialised conv3x3), and a 1×1
/// `skip_connection` when the channel count changes (identity otherwise).
pub struct ResBlock {
    in_norm: GroupNorm32,  // in_layers.0
    in_conv: Conv3x3,      // in_layers.2
    emb: Linear,           // emb_layers.1
    out_norm: GroupNorm32, // out_layers.0
    out_conv: Conv3x3,     // out_layers.3
    skip: Option<PointwiseConv>,
    scale_shift: bool,
    k: Kernels,
}

impl ResBlock {
    pub fn new(cfg: &UnetConfig, c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let ted = cfg.time_embed_dim();
        let emb_out = if cfg.use_scale_shift_norm {
            2 * c_out
        } else {
            c_out
        };
        let skip = if c_in == c_out {
            None
        } else {
            Some(PointwiseConv::new(
                c_in,
                c_out,
                2,
                vb.pp("skip_connection"),
            )?)
        };
        Ok(Self {
            in_norm: GroupNorm32::new(c_in, cfg.kernels, vb.pp("in_layers").pp("0"))?,
            in_conv: Conv3x3::new(c_in, c_out, 1, cfg.kernels, vb.pp("in_layers").pp("2"))?,
            emb: linear(ted, emb_out, vb.pp("emb_layers").pp("1"))?,
            out_norm: GroupNorm32::new(c_out, cfg.kernels, vb.pp("out_layers").pp("0"))?,
            out_conv: Conv3x3::new(c_out, c_out, 1, cfg.kernels, vb.pp("out_layers").pp("3"))?,
            skip,
            scale_shift: cfg.use_scale_shift_norm,
            k: cfg.kernels,
        })
    }

    /// `x`: `[B, C_in, H, W]`, `emb`: `[B, 4mc]` → `[B, C_out, H, W]`.
    pub fn forward(&self, x: &Tensor, emb: &Tensor, drop: &mut Dropout) -> Result<Tensor> {
        let h = self.in_conv.forward(&self.in_norm.forward_silu(x)?)?;
        let e = self
            .emb
            .forward(&nn::silu(self.k, emb)?)?
            .unsqueeze(2)?
            .unsqueeze(3)?; // [B, E, 1, 1]
        let h = if self.scale_shift {
            let c = h.dim(1)?;
            let (scale, shift) = (e.narrow(1, 0, c)?, e.narrow(1, c, c)?);
            let h = self
                .out_norm
                .forward(&h)?
                .broadcast_mul(&(scale + 1.0)?)?
                .broadcast_add(&shift)?;
            nn::silu(self.k, &h)?
        } else {
            self.out_norm.forward_silu(&h.broadcast_add(&e)?)?
        };
        let h = self.out_conv.forward(&drop.apply(&h)?)?;
        let skip = match &self.skip {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        skip + h
    }
}

/// `AttentionBlock`: GroupNorm → 1×1 qkv (Conv1d) → `QKVAttentionLegacy` (heads split before
/// q/k/v: channel layout `[head][q|k|v][ch]`, q and k each scaled by `ch^(-1/4)`) → zero-
/// initialised 1×1 `proj_out`, residual.
pub struct AttentionBlock {
    norm: GroupNorm32,
    qkv: PointwiseConv,
    proj_out: PointwiseConv,
    heads: usize,
    k: Kernels,
}

impl AttentionBlock {
    pub fn new(cfg: &UnetConfig, channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm32::new(channels, cfg.kernels, vb.pp("norm"))?,
            qkv: PointwiseConv::new(channels, 3 * channels, 1, vb.pp("qkv"))?,
            proj_out: PointwiseConv::new(channels, channels, 1, vb.pp("proj_out"))?,
            heads: cfg.heads_for(channels),
            k: cfg.kernels,
        })
    }
}

impl Module for AttentionBlock {
    /// `[B, C, H, W]` → same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = h * w;
        let ch = c / self.heads;
        let x = x.reshape((b, c, t))?; // [B, C, T]
        let qkv = self
            .qkv
            .forward(&self.norm.forward(&x)?)? // [B, 3C, T]
            .reshape((b * self.heads, 3 * ch, t))?; // [B·H, 3ch, T]
        let scale = (ch as f64).powf(-0.25);
        let q = (qkv.narrow(1, 0, ch)? * scale)?; // [B·H, ch, T]
        let k = (qkv.narrow(1, ch, ch)? * scale)?; // [B·H, ch, T]
        let v = qkv.narrow(1, 2 * ch, ch)?.contiguous()?; // [B·H, ch, T]
        let weight = q.t()?.contiguous()?.matmul(&k)?; // [B·H, T(query), T(key)]
        let weight = nn::softmax_last(self.k, &weight)?;
        let a = v.matmul(&weight.t()?)?.reshape((b, c, t))?; // [B, C, T]
        let out = (x + self.proj_out.forward(&a)?)?;
        out.reshape((b, c, h, w))
    }
}

/// `Downsample` with `conv_resample`: `op` = conv3x3 with stride 2.
pub struct Downsample {
    op: Conv3x3,
}

impl Downsample {
    pub fn new(channels: usize, k: Kernels, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            op: Conv3x3::new(channels, channels, 2, k, vb.pp("op"))?,
        })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.op.forward(x)
    }
}

/// `Upsample` with `conv_resample`: nearest-neighbour ×2, then `conv` (3×3).
pub struct Upsample {
    conv: Conv3x3,
}

impl Upsample {
    pub fn new(channels: usize, k: Kernels, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv3x3::new(channels, channels, 1, k, vb.pp("conv"))?,
        })
    }
}

/// Nearest-neighbour ×2 upsampling from broadcast + reshape, whose backward (a sum over each
/// 2×2 cell) candle derives. candle's own `upsample_nearest2d` backward *replaces* the
/// accumulated gradient of its input instead of adding to it.
pub fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((b, c, 2 * h, 2 * w))
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest_2x(x)?)
    }
}
