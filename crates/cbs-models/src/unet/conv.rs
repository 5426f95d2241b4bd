//! The UNet's 3×3 convolutions (padding 1, stride 1 or 2), also the classifier's.
//!
//! Under the fused policy, CPU f32/f64 tensors take `cbs_kernels::conv2d` (im2col and one
//! product per image, hand-written backward: candle differentiates `conv2d` with its
//! direct-loop `conv_transpose2d`, which made up ~90% of a UNet training step); otherwise
//! candle's `conv2d` and bias addition with candle's backward.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::Kernels;

/// `Conv2d(c_in, c_out, 3, padding=1, stride=stride)`: keys `weight` `[c_out, c_in, 3, 3]` and
/// `bias` `[c_out]`.
pub struct Conv3x3 {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    k: Kernels,
}

impl Conv3x3 {
    pub fn new(
        c_in: usize,
        c_out: usize,
        stride: usize,
        k: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((c_out, c_in, 3, 3), "weight")?,
            bias: vb.get(c_out, "bias")?,
            stride,
            k,
        })
    }
}

impl Module for Conv3x3 {
    /// `[B, C_in, H, W]` → `[B, C_out, ⌈H/s⌉, ⌈W/s⌉]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.k.fuses(&[x, &self.weight, &self.bias]) {
            return cbs_kernels::conv2d(x, &self.weight, &self.bias, self.stride, 1);
        }
        let c_out = self.bias.dim(0)?;
        let bias = self.bias.reshape((1, c_out, 1, 1))?; // [1, C_out, 1, 1]
        x.conv2d(&self.weight, 1, self.stride, 1, 1)?
            .broadcast_add(&bias)
    }
}
