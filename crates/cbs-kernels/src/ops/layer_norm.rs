//! LayerNorm over the last dimension without affine parameters; the backward recomputes
//! the row statistics instead of storing them.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::*;

#[inline(always)]
pub(crate) fn row_stats<T: F>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn layer_norm_fwd<T: F>(x: &[T], l: &Layout, eps: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x], |o, i| {
        let (mean, rstd) = row_stats(i[0], eps);
        for (o, &x) in o.iter_mut().zip(i[0]) {
            *o = T::of((x.f() - mean) * rstd);
        }
    });
    out
}

/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, statistics recomputed from `x`.
fn layer_norm_bwd<T: F>(x: &[T], g: &[T], l: &Layout, eps: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x, g], |o, i| {
        let (mean, rstd) = row_stats(i[0], eps);
        let n = i[0].len() as f64;
        let (mut mg, mut mgx) = (0.0, 0.0);
        for (&x, &g) in i[0].iter().zip(i[1]) {
            mg += g.f();
            mgx += g.f() * (x.f() - mean) * rstd;
        }
        let (mg, mgx) = (mg / n, mgx / n);
        for ((o, &x), &g) in o.iter_mut().zip(i[0]).zip(i[1]) {
            let xh = (x.f() - mean) * rstd;
            *o = T::of(rstd * (g.f() - mg - xh * mgx));
        }
    });
    out
}

fused_op!(
    LayerNorm,
    LayerNormBwd,
    "fused-layer-norm",
    layer_norm_fwd,
    layer_norm_bwd,
    "arg",
    cuda: "layer_norm",
    Rows
);

/// LayerNorm over the last dimension without affine parameters; the backward recomputes the
/// row statistics instead of storing them.
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(LayerNorm(eps))
}
