//! The layers of diffusers's `AutoencoderKL`, one struct each, named like its `state_dict`
//! (`resnets.0.norm1.weight`, `attentions.0.to_q.weight`, `downsamplers.0.conv.weight`, …).
//!
//! The VAE is run for inference only, so convolutions take the forward-only kernel
//! [`cbs_kernels::conv2d_infer`] (CPU im2col/gemm; candle's `conv2d` elsewhere) and the
//! middle block's attention the fused attention kernel.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use cbs_kernels::ConvInfer;

use crate::nn::{self, Kernels};

/// Epsilon of every GroupNorm of the VAE (resnets, attention, `conv_norm_out`).
pub const NORM_EPS: f64 = 1e-6;

/// `nn.GroupNorm(groups, channels, eps=1e-6)`, optionally followed by SiLU.
pub struct GroupNorm {
    weight: Tensor, // [C]
    bias: Tensor,   // [C]
    groups: usize,
    k: Kernels,
}

impl GroupNorm {
    pub fn new(channels: usize, groups: usize, k: Kernels, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            groups,
            k,
        })
    }

    /// `[B, C, H, W]` → same shape; SiLU after the norm when `act`.
    pub fn forward_act(&self, x: &Tensor, act: bool) -> Result<Tensor> {
        nn::group_norm(
            self.k,
            x,
            &self.weight,
            &self.bias,
            self.groups,
            NORM_EPS,
            act,
        )
    }
}

/// How a [`Conv`] pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// `padding = k / 2` on every side (3×3 → 1, 1×1 → 0).
    Same,
    /// One row below and one column right, then no padding: `Downsample2D` with
    /// `padding = 0`, as the SD VAE's encoder pads before its stride-2 convolutions.
    BottomRight,
}

/// `nn.Conv2d(c_in, c_out, k, stride)` with bias: keys `weight` `[c_out, c_in, k, k]`, `bias`.
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: Padding,
    k: Kernels,
}

impl Conv {
    pub fn new(
        c_in: usize,
        c_out: usize,
        size: usize,
        stride: usize,
        padding: Padding,
        k: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((c_out, c_in, size, size), "weight")?,
            bias: vb.get(c_out, "bias")?,
            stride,
            padding,
            k,
        })
    }
}

impl Module for Conv {
    /// `[B, C_in, H, W]` → `[B, C_out, H', W']`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (x, pad) = match self.padding {
            Padding::Same => {
                let p = self.weight.dim(3)? / 2;
                (x.clone(), (p, p))
            }
            Padding::BottomRight => {
                let x = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?; // [B, C, H+1, W+1]
                (x, (0, 0))
            }
        };
        let c = ConvInfer {
            stride: self.stride,
            pad,
            relu: false,
        };
        cbs_kernels::conv2d_infer(&x, &self.weight, Some(&self.bias), c, self.k)
    }
}

/// `ResnetBlock2D` without a time embedding:
/// `x' + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`, `x'` = `conv_shortcut(x)` (1×1) when the
/// channel count changes, else `x`.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv,
    norm2: GroupNorm,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
}

impl ResnetBlock {
    pub fn new(
        c_in: usize,
        c_out: usize,
        groups: usize,
        k: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv3 = |ci, name| Conv::new(ci, c_out, 3, 1, Padding::Same, k, vb.pp(name));
        Ok(Self {
            norm1: GroupNorm::new(c_in, groups, k, vb.pp("norm1"))?,
            conv1: conv3(c_in, "conv1")?,
            norm2: GroupNorm::new(c_out, groups, k, vb.pp("norm2"))?,
            conv2: conv3(c_out, "conv2")?,
            conv_shortcut: (c_in != c_out)
                .then(|| Conv::new(c_in, c_out, 1, 1, Padding::Same, k, vb.pp("conv_shortcut")))
                .transpose()?,
        })
    }
}

impl Module for ResnetBlock {
    /// `[B, C_in, H, W]` → `[B, C_out, H, W]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_act(x, true)?)?;
        let h = self.conv2.forward(&self.norm2.forward_act(&h, true)?)?;
        match &self.conv_shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// The middle block's single-head self-attention over the `H·W` positions
/// (`Attention(C, heads=1, dim_head=C, norm_num_groups, residual_connection=True)`):
/// `x + to_out(softmax(q·kᵀ/√C)·v)` with q, k, v linear maps of `group_norm(x)`.
pub struct Attention {
    group_norm: GroupNorm,
    /// `to_q`, `to_k`, `to_v` stacked: one product gives the `[B, N, 3C]` the fused attention
    /// takes.
    qkv: Linear,
    to_out: Linear, // to_out.0
    k: Kernels,
}

impl Attention {
    pub fn new(c: usize, groups: usize, k: Kernels, vb: VarBuilder) -> Result<Self> {
        let lin = |name: &str| -> Result<(Tensor, Tensor)> {
            let v = vb.pp(name);
            Ok((v.get((c, c), "weight")?, v.get(c, "bias")?))
        };
        let (q, k_, v) = (lin("to_q")?, lin("to_k")?, lin("to_v")?);
        let (ow, ob) = {
            let v = vb.pp("to_out").pp("0");
            (v.get((c, c), "weight")?, v.get(c, "bias")?)
        };
        Ok(Self {
            group_norm: GroupNorm::new(c, groups, k, vb.pp("group_norm"))?,
            qkv: Linear::new(
                Tensor::cat(&[&q.0, &k_.0, &v.0], 0)?, // [3C, C]
                Some(Tensor::cat(&[&q.1, &k_.1, &v.1], 0)?),
            ),
            to_out: Linear::new(ow, Some(ob)),
            k,
        })
    }
}

impl Module for Attention {
    /// `[B, C, H, W]` → same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self
            .group_norm
            .forward_act(x, false)?
            .reshape((b, c, h * w))? // [B, C, N]
            .transpose(1, 2)?; // [B, N, C]
        let qkv = nn::linear(self.k, &self.qkv, &t.contiguous()?)?; // [B, N, 3C]
        let a = nn::attention(self.k, &qkv, 1, 1.0 / (c as f64).sqrt())?; // [B, N, C]
        let o = nn::linear(self.k, &self.to_out, &a)?
            .transpose(1, 2)? // [B, C, N]
            .reshape((b, c, h, w))?; // [B, C, H, W]
        x + o
    }
}

/// `UNetMidBlock2D` without a time embedding: resnet, attention, resnet (`resnets.0`,
/// `attentions.0`, `resnets.1`).
pub struct MidBlock {
    resnet0: ResnetBlock,
    attention: Attention,
    resnet1: ResnetBlock,
}

impl MidBlock {
    pub fn new(c: usize, groups: usize, k: Kernels, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            resnet0: ResnetBlock::new(c, c, groups, k, vb.pp("resnets.0"))?,
            attention: Attention::new(c, groups, k, vb.pp("attentions.0"))?,
            resnet1: ResnetBlock::new(c, c, groups, k, vb.pp("resnets.1"))?,
        })
    }
}

impl Module for MidBlock {
    /// `[B, C, H, W]` → same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.resnet0.forward(x)?;
        let h = self.attention.forward(&h)?;
        self.resnet1.forward(&h)
    }
}

/// `resnets.0 … resnets.{layers − 1}`: the first maps `c_in` to `c_out` channels, the rest
/// keep `c_out` (shared by the down and up blocks).
fn resnet_stack(
    c_in: usize,
    c_out: usize,
    layers: usize,
    groups: usize,
    k: Kernels,
    vb: &VarBuilder,
) -> Result<Vec<ResnetBlock>> {
    (0..layers)
        .map(|j| {
            let ci = if j == 0 { c_in } else { c_out };
            ResnetBlock::new(ci, c_out, groups, k, vb.pp(format!("resnets.{j}")))
        })
        .collect()
}

/// `DownEncoderBlock2D`: `layers` resnets, then (except at the last level) a stride-2
/// convolution `downsamplers.0.conv` after padding bottom and right.
pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    downsample: Option<Conv>,
}

impl DownBlock {
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        downsample: bool,
        groups: usize,
        k: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = resnet_stack(c_in, c_out, layers, groups, k, &vb)?;
        let downsample = downsample
            .then(|| {
                let vb = vb.pp("downsamplers.0.conv");
                Conv::new(c_out, c_out, 3, 2, Padding::BottomRight, k, vb)
            })
            .transpose()?;
        Ok(Self {
            resnets,
            downsample,
        })
    }
}

impl Module for DownBlock {
    /// `[B, C_in, H, W]` → `[B, C_out, H/2, W/2]` (or `[B, C_out, H, W]` at the last level).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h)?;
        }
        match &self.downsample {
            Some(d) => d.forward(&h),
            None => Ok(h),
        }
    }
}

/// `UpDecoderBlock2D`: `layers` resnets, then (except at the last level) nearest-neighbour
/// 2× upsampling and `upsamplers.0.conv` (3×3).
pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsample: Option<Conv>,
}

impl UpBlock {
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        upsample: bool,
        groups: usize,
        k: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = resnet_stack(c_in, c_out, layers, groups, k, &vb)?;
        let upsample = upsample
            .then(|| {
                let vb = vb.pp("upsamplers.0.conv");
                Conv::new(c_out, c_out, 3, 1, Padding::Same, k, vb)
            })
            .transpose()?;
        Ok(Self { resnets, upsample })
    }
}

impl Module for UpBlock {
    /// `[B, C_in, H, W]` → `[B, C_out, 2H, 2W]` (or `[B, C_out, H, W]` at the last level).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h)?;
        }
        match &self.upsample {
            Some(u) => {
                let (_, _, hh, ww) = h.dims4()?;
                u.forward(&h.upsample_nearest2d(2 * hh, 2 * ww)?) // [B, C, 2H, 2W]
            }
            None => Ok(h),
        }
    }
}
