//! GELU (tanh approximation) with a one-pass backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::*;

// `0.5·x·(1 + tanh(u)) = x·σ(2u)` and `1 − tanh²(u) = 4·σ(2u)·(1 − σ(2u))`: the sigmoid form
// needs one `exp` and has no cancellation where `tanh(u)` is close to −1.

fn gelu_fwd<T: F>(x: &[T], l: &Layout, _: f64) -> Vec<T> {
    new_rows(x.len(), last_dim(l), &[x], |o, i| T::gelu_row(o, i[0]))
}

/// `dx = g·(s + 2·x·u'·s·(1 − s))`, `s = σ(2u)`, `u' = √(2/π)·(1 + 3c·x²)`.
fn gelu_bwd<T: F>(x: &[T], g: &[T], l: &Layout, _: f64) -> Vec<T> {
    new_rows(x.len(), last_dim(l), &[x, g], |o, i| {
        T::gelu_bwd_row(o, i[0], i[1])
    })
}

fused_op!(
    GeluTanh,
    GeluTanhBwd,
    "fused-gelu-tanh",
    gelu_fwd,
    gelu_bwd,
    "arg",
    cuda: "gelu",
    Elementwise
);

/// GELU, tanh approximation, with a one-pass backward.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluTanh(0.0))
}
