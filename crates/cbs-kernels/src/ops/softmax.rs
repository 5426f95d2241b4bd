//! Softmax over the last dimension with a one-pass backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::*;

fn softmax_fwd<T: F>(x: &[T], l: &Layout, _: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x], |o, i| {
        let max = i[0].iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f()));
        let mut sum = 0.0;
        for (o, &x) in o.iter_mut().zip(i[0]) {
            let e = T::exp_k(x.f() - max);
            sum += e;
            *o = T::of(e);
        }
        for o in o.iter_mut() {
            *o = T::of(o.f() / sum);
        }
    });
    out
}

/// `dx = y ⊙ (g − Σ g·y)` per row.
fn softmax_bwd<T: F>(y: &[T], g: &[T], l: &Layout, _: f64) -> Vec<T> {
    let out = new_rows(y.len(), last_dim(l), &[y, g], |o, i| {
        let dot: f64 = i[0].iter().zip(i[1]).map(|(y, g)| y.f() * g.f()).sum();
        for ((o, &y), &g) in o.iter_mut().zip(i[0]).zip(i[1]) {
            *o = T::of(y.f() * (g.f() - dot));
        }
    });
    out
}

fused_op!(
    Softmax,
    SoftmaxBwd,
    "fused-softmax-last",
    softmax_fwd,
    softmax_bwd,
    "res",
    cuda: "softmax",
    Rows
);

/// Softmax over the last dimension, with a one-pass backward.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax(0.0))
}
