//! SiLU (`x·σ(x)`) with a one-pass backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::*;

fn silu_fwd<T: F>(x: &[T], l: &Layout, _: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x], |o, i| {
        for (o, &x) in o.iter_mut().zip(i[0]) {
            let x = x.f();
            *o = T::of(x * sigmoid_pair::<T>(x).0);
        }
    });
    out
}

/// `dx = g·σ(x)·(1 + x·(1 − σ(x)))`.
fn silu_bwd<T: F>(x: &[T], g: &[T], l: &Layout, _: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x, g], |o, i| {
        for ((o, &x), &g) in o.iter_mut().zip(i[0]).zip(i[1]) {
            let x = x.f();
            let (s, sc) = sigmoid_pair::<T>(x);
            *o = T::of(g.f() * s * (1.0 + x * sc));
        }
    });
    out
}

fused_op!(
    Silu,
    SiluBwd,
    "fused-silu",
    silu_fwd,
    silu_bwd,
    "arg",
    cuda: "silu",
    Elementwise
);

/// SiLU (`x·σ(x)`), with a one-pass backward.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Silu(0.0))
}
