//! The UNet's 3×3 convolutions (padding 1, stride 1 or 2) with a fast CPU backward.
//!
//! With bias ([`Conv3x3`], the layer) the CPU path is [`crate::fused::conv2d`] (im2col and
//! one product per image, hand-written backward). Without bias ([`conv3x3`]):
//!
//! candle differentiates `conv2d` with `conv_transpose2d`, whose CPU kernel is a direct loop
//! (measured ≈ 8× slower than the forward convolution; it made up ~90% of a UNet training
//! step). On the CPU (f32/f64, unless `CBS_FUSED=0`) the convolution is therefore a custom op
//! whose forward is candle's `conv2d` and whose backward is two more `conv2d`s: the input
//! gradient correlates the (stride-dilated) output gradient with the flipped, transposed
//! kernel; the kernel gradient correlates the input with the output gradient. Elsewhere it is
//! candle's `conv2d` with candle's backward.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Device, Layout, Module, Result, Shape};
use candle_core::{Tensor, WithDType};
use candle_nn::VarBuilder;

use crate::nn::fused_enabled;

/// `Conv2d(c_in, c_out, 3, padding=1, stride=stride)`: keys `weight` `[c_out, c_in, 3, 3]` and
/// `bias` `[c_out]`.
pub struct Conv3x3 {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
}

impl Conv3x3 {
    pub fn new(c_in: usize, c_out: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((c_out, c_in, 3, 3), "weight")?,
            bias: vb.get(c_out, "bias")?,
            stride,
        })
    }
}

impl Module for Conv3x3 {
    /// `[B, C_in, H, W]` → `[B, C_out, ⌈H/s⌉, ⌈W/s⌉]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fast(x, &self.weight) && self.bias.dtype() == x.dtype() {
            return crate::fused::conv2d(x, &self.weight, &self.bias, self.stride, 1);
        }
        let c_out = self.bias.dim(0)?;
        conv3x3(x, &self.weight, self.stride)?.broadcast_add(&self.bias.reshape((1, c_out, 1, 1))?)
    }
}

/// 3×3 convolution with padding 1 and no bias: the fast-backward op on the CPU, candle's
/// `conv2d` elsewhere (identical values either way).
pub fn conv3x3(x: &Tensor, w: &Tensor, stride: usize) -> Result<Tensor> {
    if fast(x, w) {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, Conv3x3Op { stride })
    } else {
        x.conv2d(w, 1, stride, 1, 1)
    }
}

/// The CPU kernels apply (f32/f64 on the CPU, unless `CBS_FUSED=0`).
fn fast(x: &Tensor, w: &Tensor) -> bool {
    fused_enabled()
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == w.dtype()
}

struct Conv3x3Op {
    stride: usize,
}

fn tensor_of<T: WithDType>(v: &[T], l: &Layout) -> Result<Tensor> {
    match l.contiguous_offsets() {
        Some((a, b)) => Tensor::from_slice(&v[a..b], l.shape(), &Device::Cpu),
        None => bail!("unet-conv3x3: inputs must be contiguous"),
    }
}

impl CustomOp2 for Conv3x3Op {
    fn name(&self) -> &'static str {
        "unet-conv3x3"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => (tensor_of(x, l1)?, tensor_of(w, l2)?),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => (tensor_of(x, l1)?, tensor_of(w, l2)?),
            _ => bail!("unet-conv3x3: only f32 and f64 (both operands alike)"),
        };
        let y = x.conv2d(&w, 1, self.stride, 1, 1)?;
        let flat = y.flatten_all()?;
        let out = match y.dtype() {
            DType::F32 => CpuStorage::F32(flat.to_vec1()?),
            _ => CpuStorage::F64(flat.to_vec1()?),
        };
        Ok((out, y.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w) = (x.detach(), w.detach());
        let (_, _, h, wd) = x.dims4()?;
        let g = dilate_to(&grad.detach().contiguous()?, self.stride, h, wd)?; // [B, O, H, W]
                                                                              // ∂x[c, y, x] = Σ_{o,ky,kx} G[o, y + 1 − ky, x + 1 − kx] · w[o, c, ky, kx].
        let wf = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?; // [C, O, 3, 3]
        let gx = g.conv2d(&wf, 1, 1, 1, 1)?;
        // ∂w[o, c, ky, kx] = Σ_{b,y,x} G[b, o, y, x] · x[b, c, y + ky − 1, x + kx − 1].
        let gw = x
            .transpose(0, 1)? // [C, B, H, W]
            .conv2d(&g.transpose(0, 1)?, 1, 1, 1, 1)? // [C, O, 3, 3]
            .transpose(0, 1)?
            .contiguous()?;
        Ok((Some(gx), Some(gw)))
    }
}

/// Place the output gradient `[B, O, h, w]` of a stride-`s` convolution on the input grid
/// `[B, O, H, W]` (`g[i, j]` at `(s·i, s·j)`, zeros elsewhere).
fn dilate_to(g: &Tensor, stride: usize, h: usize, w: usize) -> Result<Tensor> {
    let (b, o, gh, gw) = g.dims4()?;
    let d = if stride == 1 {
        g.clone()
    } else {
        g.reshape((b, o, gh, 1, gw, 1))?
            .pad_with_zeros(3, 0, stride - 1)?
            .pad_with_zeros(5, 0, stride - 1)?
            .reshape((b, o, gh * stride, gw * stride))?
    };
    let (dh, dw) = (d.dim(2)?, d.dim(3)?);
    if dh < h || dw < w {
        bail!("unet-conv3x3: gradient grid {dh}×{dw} smaller than the input {h}×{w}");
    }
    d.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()
}
