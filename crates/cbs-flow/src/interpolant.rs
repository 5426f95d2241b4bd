//! The linear interpolant and the velocity regression loss.

use candle_core::{Result, Tensor};
use cbs_kernels::Kernels;

/// `x_t = t·x1 + (1 − t)·x0`, with `t` of shape `[B]` broadcast over the remaining dims.
pub fn interpolate(x0: &Tensor, x1: &Tensor, t: &Tensor) -> Result<Tensor> {
    let t = expand_time(t, x1)?;
    // x0 + t·(x1 − x0) is the same point with one fewer broadcast multiply.
    x0.add(&x1.sub(x0)?.broadcast_mul(&t)?)
}

/// The regression target of the linear path: `x1 − x0`.
pub fn target_velocity(x0: &Tensor, x1: &Tensor) -> Result<Tensor> {
    x1.sub(x0)
}

/// Mean squared error over all elements: the fused kernel ([`cbs_kernels::mse`], one pass with
/// a hand-written backward) where `kernels` allows it and the tensors are CPU f32/f64 (or, in
/// builds with the `cuda` feature, CUDA f32/bf16), otherwise [`mse_composed`].
pub fn velocity_mse(pred: &Tensor, target: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels.fuses_op(cbs_kernels::Op::Mse, &[pred, target]) {
        cbs_kernels::mse(pred, target)
    } else {
        mse_composed(pred, target)
    }
}

/// Mean over all elements of `(a − b)²`, op by op (any device; the reference for the fused one).
/// Half-precision inputs reduce in f32 (the result is f32): a loss summed in bf16 keeps two or
/// three digits.
pub fn mse_composed(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let f32_if_half = |t: &Tensor| match t.dtype() {
        candle_core::DType::BF16 | candle_core::DType::F16 => t.to_dtype(candle_core::DType::F32),
        _ => Ok(t.clone()),
    };
    f32_if_half(a)?.sub(&f32_if_half(b)?)?.sqr()?.mean_all()
}

/// Reshape `[B]` times to `[B, 1, …, 1]` matching the rank of `like`.
pub fn expand_time(t: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mut dims = vec![1usize; like.rank()];
    dims[0] = t.dim(0)?;
    t.reshape(dims)
}
