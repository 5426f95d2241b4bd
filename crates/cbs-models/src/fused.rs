//! Fused CPU kernels with hand-written backward passes for the element-wise and row-wise
//! operations that dominate a CPU training step (measured: candle's composed GELU and softmax
//! backward cost more than the matrix products).
//!
//! Each forward is one pass over contiguous memory; each backward is one more pass that
//! recomputes what it needs instead of keeping intermediates alive. The callers in
//! [`crate::nn`] use them on the CPU for f32/f64 and fall back to the composed (autograd)
//! versions elsewhere. Gradients of gradients are not provided.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;
/// Below this many elements the work is not split across threads.
const PAR_MIN: usize = 1 << 14;

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Apply `f` to matching chunks of `out` and `inputs`, in parallel for large tensors.
fn par_rows<T: Send + Sync + Copy>(
    out: &mut [T],
    row: usize,
    inputs: &[&[T]],
    f: impl Fn(&mut [T], &[&[T]]) + Sync,
) {
    let run = |(i, o): (usize, &mut [T])| {
        let ins: Vec<&[T]> = inputs.iter().map(|x| &x[i * row..(i + 1) * row]).collect();
        f(o, &ins)
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(row).enumerate().for_each(run);
    } else {
        out.chunks_mut(row).enumerate().for_each(run);
    }
}

/// Float arithmetic in f64 for both storage types keeps one kernel per op.
trait F: WithDType + Send + Sync + Copy {
    fn f(self) -> f64;
    fn of(v: f64) -> Self;
}
impl F for f32 {
    fn f(self) -> f64 {
        self as f64
    }
    fn of(v: f64) -> Self {
        v as f32
    }
}
impl F for f64 {
    fn f(self) -> f64 {
        self
    }
    fn of(v: f64) -> Self {
        v
    }
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

/// One fused operation: a forward `CustomOp1` whose backward is a `CustomOp2` over
/// (`saved`, upstream gradient), where `saved` is the forward's input (`"arg"`) or output
/// (`"res"`).
/// `$ffn(x, layout, p)` and `$bfn(saved, grad, layout, p)` are the kernels; `p` is the op's
/// scalar parameter (LayerNorm's epsilon; unused by the others).
macro_rules! fused_op {
    ($fwd:ident, $bwd:ident, $name:literal, $ffn:ident, $bfn:ident, $saved:literal) => {
        struct $fwd(f64);
        struct $bwd(f64);

        impl CustomOp1 for $fwd {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
                let out = match s {
                    CpuStorage::F32(_) => {
                        CpuStorage::F32($ffn(contiguous(s, l, $name)?, l, self.0))
                    }
                    CpuStorage::F64(_) => {
                        CpuStorage::F64($ffn(contiguous(s, l, $name)?, l, self.0))
                    }
                    _ => candle_core::bail!("{}: only f32 and f64 are supported", $name),
                };
                Ok((out, l.shape().clone()))
            }
            fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
                let saved = if $saved == "res" { res } else { arg };
                Ok(Some(
                    saved.apply_op2_no_bwd(&grad.contiguous()?, &$bwd(self.0))?,
                ))
            }
        }

        impl CustomOp2 for $bwd {
            fn name(&self) -> &'static str {
                concat!($name, "-bwd")
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let name = self.name();
                if l1.shape() != l2.shape() {
                    candle_core::bail!(
                        "{name}: shape mismatch {:?} vs {:?}",
                        l1.shape(),
                        l2.shape()
                    );
                }
                let out = match (s1, s2) {
                    (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32($bfn(
                        contiguous(s1, l1, name)?,
                        contiguous(s2, l2, name)?,
                        l1,
                        self.0,
                    )),
                    (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64($bfn(
                        contiguous(s1, l1, name)?,
                        contiguous(s2, l2, name)?,
                        l1,
                        self.0,
                    )),
                    _ => candle_core::bail!("{name}: only f32 and f64 (matching) are supported"),
                };
                Ok((out, l1.shape().clone()))
            }
        }
    };
}

// ---------------------------------------------------------------- GELU (tanh approximation)

fn gelu_fwd<T: F>(x: &[T], l: &Layout, _: f64) -> Vec<T> {
    let mut out = vec![T::of(0.0); x.len()];
    par_rows(&mut out, last_dim(l), &[x], |o, i| {
        for (o, &x) in o.iter_mut().zip(i[0]) {
            let x = x.f();
            let u = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
            *o = T::of(0.5 * x * (1.0 + u.tanh()));
        }
    });
    out
}

fn gelu_bwd<T: F>(x: &[T], g: &[T], l: &Layout, _: f64) -> Vec<T> {
    let mut out = vec![T::of(0.0); x.len()];
    par_rows(&mut out, last_dim(l), &[x, g], |o, i| {
        for ((o, &x), &g) in o.iter_mut().zip(i[0]).zip(i[1]) {
            let x = x.f();
            let th = (SQRT_2_OVER_PI * (x + GELU_C * x * x * x)).tanh();
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x);
            *o = T::of(g.f() * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du));
        }
    });
    out
}

fused_op!(
    GeluTanh,
    GeluTanhBwd,
    "fused-gelu-tanh",
    gelu_fwd,
    gelu_bwd,
    "arg"
);

// ---------------------------------------------------------------- softmax over the last dim

fn softmax_fwd<T: F>(x: &[T], l: &Layout, _: f64) -> Vec<T> {
    let mut out = vec![T::of(0.0); x.len()];
    par_rows(&mut out, last_dim(l), &[x], |o, i| {
        let max = i[0].iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f()));
        let mut sum = 0.0;
        for (o, &x) in o.iter_mut().zip(i[0]) {
            let e = (x.f() - max).exp();
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
    let mut out = vec![T::of(0.0); y.len()];
    par_rows(&mut out, last_dim(l), &[y, g], |o, i| {
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
    "res"
);

// ---------------------------------------------------------------- LayerNorm without affine

fn row_stats<T: F>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|v| v.f()).sum::<f64>() / n;
    let var = x.iter().map(|v| (v.f() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn layer_norm_fwd<T: F>(x: &[T], l: &Layout, eps: f64) -> Vec<T> {
    let mut out = vec![T::of(0.0); x.len()];
    par_rows(&mut out, last_dim(l), &[x], |o, i| {
        let (mean, rstd) = row_stats(i[0], eps);
        for (o, &x) in o.iter_mut().zip(i[0]) {
            *o = T::of((x.f() - mean) * rstd);
        }
    });
    out
}

/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, statistics recomputed from `x`.
fn layer_norm_bwd<T: F>(x: &[T], g: &[T], l: &Layout, eps: f64) -> Vec<T> {
    let mut out = vec![T::of(0.0); x.len()];
    par_rows(&mut out, last_dim(l), &[x, g], |o, i| {
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
    "arg"
);

// ---------------------------------------------------------------- entry points

/// GELU, tanh approximation, with a one-pass backward.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluTanh(0.0))
}

/// Softmax over the last dimension, with a one-pass backward.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax(0.0))
}

/// LayerNorm over the last dimension without affine parameters; the backward recomputes the
/// row statistics instead of storing them.
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(LayerNorm(eps))
}
