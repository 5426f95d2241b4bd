//! Small composed layers whose every input and weight receives a gradient.
//!
//! candle's fused `layer_norm`, `softmax_last_dim` and the default `LayerNorm` module return no
//! gradient (silently), so the trainable paths use these compositions instead.

use candle_core::{Result, Tensor, D};

/// LayerNorm over the last dimension without affine parameters.
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Softmax over the last dimension (composed; differentiable).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// adaLN modulation: `x·(1 + scale) + shift` with `shift`, `scale` of shape `[B, C]`
/// broadcast over the tokens of `x` (`[B, N, C]`).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let shift = shift.unsqueeze(1)?; // [B, 1, C]
    let scale = scale.unsqueeze(1)?; // [B, 1, C]
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)
}

/// Split `[B, k·C]` into `k` chunks of `[B, C]` along dim 1 (torch's `chunk(k, dim=1)`).
pub fn chunk_last(x: &Tensor, k: usize) -> Result<Vec<Tensor>> {
    let c = x.dim(1)? / k;
    (0..k).map(|i| x.narrow(1, i * c, c)).collect()
}
