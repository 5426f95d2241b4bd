//! Small layers whose every input and weight receives a gradient.
//!
//! candle's own fused `layer_norm`, `softmax_last_dim` and the default `LayerNorm` module
//! return no gradient (silently). On the CPU (f32/f64) these functions use the kernels of
//! [`crate::fused`], which have hand-written backward passes; elsewhere the [`composed`]
//! versions, which candle differentiates op by op.

use candle_core::{DType, Result, Tensor};

use crate::fused;

fn fused_ok(x: &Tensor) -> bool {
    fused_enabled() && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// `CBS_FUSED=0` turns the fused kernels off (for side-by-side benchmarks of the two paths).
pub fn fused_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CBS_FUSED").map_or(true, |v| v != "0"))
}

/// Op-by-op versions (any device), kept as the reference the fused kernels are tested against.
pub mod composed {
    use candle_core::{Result, Tensor, D};

    pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + eps)?.sqrt()?)
    }

    pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(x, D::Minus1)
    }

    /// candle's `gelu` is the tanh approximation (`gelu_erf` is the exact one).
    pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
        x.gelu()
    }
}

/// LayerNorm over the last dimension without affine parameters.
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_ok(x) {
        fused::layer_norm_no_affine(x, eps)
    } else {
        composed::layer_norm_no_affine(x, eps)
    }
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if fused_ok(x) {
        fused::softmax_last(x)
    } else {
        composed::softmax_last(x)
    }
}

/// GELU, tanh approximation.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fused_ok(x) {
        fused::gelu_tanh(x)
    } else {
        composed::gelu_tanh(x)
    }
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
