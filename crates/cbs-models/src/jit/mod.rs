//! JiT ("Just image Transformer", Li & He 2025), layer for layer as the reference
//! `model_jit.py`: a pixel-space transformer that predicts the clean image x̂.
//!
//! Bottleneck patch embedding (`Conv(C → 128, k = s = p)` then 1×1) plus fixed 2-D sin-cos
//! positions; adaLN-Zero blocks conditioned on `c = t_embed(t) + y_embed(y)` with RMSNorm,
//! per-head RMS qk-norm, 2-D RoPE and a SwiGLU MLP; `in_context_len` class tokens (the label
//! embedding plus learned positions) prepended before block `in_context_start` and stripped
//! before the final adaLN layer; unpatchify.
//!
//! Training regresses the velocity through x̂: `v̂ = (x̂ − z) / max(1 − t, 0.05)`
//! ([`x_to_velocity`], [`JIT_T_CLAMP`]).

mod config;
pub mod init;
mod layers;
mod model;
pub mod rope;

use candle_core::{Result, Tensor};

pub use config::JitConfig;
pub use layers::RMS_EPS;
pub use model::Jit;

/// The reference's `t_eps`: `1 − t` is clamped from below by this in `x_to_velocity`.
pub const JIT_T_CLAMP: f64 = 0.05;

/// Velocity from a predicted clean image: `v = (x̂ − z) / max(1 − t, clamp)`, with `t` `[B]`
/// broadcast over the other dimensions of `x_hat` and `z` (`[B, …]`).
pub fn x_to_velocity(x_hat: &Tensor, z: &Tensor, t: &Tensor, clamp: f64) -> Result<Tensor> {
    let b = t.elem_count();
    let mut shape = vec![1usize; x_hat.rank()];
    shape[0] = b;
    let denom = t
        .affine(-1.0, 1.0)? // 1 − t
        .maximum(clamp)?
        .reshape(shape)?;
    (x_hat - z)?.broadcast_div(&denom)
}
