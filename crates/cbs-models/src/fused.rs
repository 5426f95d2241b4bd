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

macro_rules! dispatch1 {
    ($s:expr, $l:expr, $name:expr, $body:ident) => {
        match $s {
            CpuStorage::F32(_) => {
                let x = contiguous::<f32>($s, $l, $name)?;
                Ok((CpuStorage::F32($body(x, $l)), $l.shape().clone()))
            }
            CpuStorage::F64(_) => {
                let x = contiguous::<f64>($s, $l, $name)?;
                Ok((CpuStorage::F64($body(x, $l)), $l.shape().clone()))
            }
            _ => candle_core::bail!("{}: only f32 and f64 are supported", $name),
        }
    };
}

macro_rules! dispatch2 {
    ($s1:expr, $l1:expr, $s2:expr, $l2:expr, $name:expr, $body:ident) => {{
        if $l1.shape() != $l2.shape() {
            candle_core::bail!(
                "{}: shape mismatch {:?} vs {:?}",
                $name,
                $l1.shape(),
                $l2.shape()
            );
        }
        match ($s1, $s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let a = contiguous::<f32>($s1, $l1, $name)?;
                let b = contiguous::<f32>($s2, $l2, $name)?;
                Ok((CpuStorage::F32($body(a, b, $l1)), $l1.shape().clone()))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let a = contiguous::<f64>($s1, $l1, $name)?;
                let b = contiguous::<f64>($s2, $l2, $name)?;
                Ok((CpuStorage::F64($body(a, b, $l1)), $l1.shape().clone()))
            }
            _ => candle_core::bail!("{}: only f32 and f64 (matching) are supported", $name),
        }
    }};
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

// ---------------------------------------------------------------- GELU (tanh approximation)

struct GeluTanh;
struct GeluTanhBwd;

fn gelu_fwd<T: F>(x: &[T], l: &Layout) -> Vec<T> {
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

fn gelu_bwd<T: F>(x: &[T], g: &[T], l: &Layout) -> Vec<T> {
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

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "fused-gelu-tanh"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch1!(s, l, self.name(), gelu_fwd)
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluTanhBwd)?,
        ))
    }
}

impl CustomOp2 for GeluTanhBwd {
    fn name(&self) -> &'static str {
        "fused-gelu-tanh-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch2!(s1, l1, s2, l2, self.name(), gelu_bwd)
    }
}

// ---------------------------------------------------------------- softmax over the last dim

struct Softmax;
struct SoftmaxBwd;

fn softmax_fwd<T: F>(x: &[T], l: &Layout) -> Vec<T> {
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
fn softmax_bwd<T: F>(y: &[T], g: &[T], l: &Layout) -> Vec<T> {
    let mut out = vec![T::of(0.0); y.len()];
    par_rows(&mut out, last_dim(l), &[y, g], |o, i| {
        let dot: f64 = i[0].iter().zip(i[1]).map(|(y, g)| y.f() * g.f()).sum();
        for ((o, &y), &g) in o.iter_mut().zip(i[0]).zip(i[1]) {
            *o = T::of(y.f() * (g.f() - dot));
        }
    });
    out
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax-last"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch1!(s, l, self.name(), softmax_fwd)
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?,
        ))
    }
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-last-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch2!(s1, l1, s2, l2, self.name(), softmax_bwd)
    }
}

// ---------------------------------------------------------------- LayerNorm without affine

struct LayerNorm(f64);
struct LayerNormBwd(f64);

fn row_stats<T: F>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|v| v.f()).sum::<f64>() / n;
    let var = x.iter().map(|v| (v.f() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl LayerNorm {
    fn run<T: F>(&self, x: &[T], l: &Layout) -> Vec<T> {
        let eps = self.0;
        let mut out = vec![T::of(0.0); x.len()];
        par_rows(&mut out, last_dim(l), &[x], |o, i| {
            let (mean, rstd) = row_stats(i[0], eps);
            for (o, &x) in o.iter_mut().zip(i[0]) {
                *o = T::of((x.f() - mean) * rstd);
            }
        });
        out
    }
}

impl LayerNormBwd {
    /// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, statistics recomputed from `x`.
    fn run<T: F>(&self, x: &[T], g: &[T], l: &Layout) -> Vec<T> {
        let eps = self.0;
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
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let f32_run = |x: &[f32], l: &Layout| self.run(x, l);
        let f64_run = |x: &[f64], l: &Layout| self.run(x, l);
        match s {
            CpuStorage::F32(_) => Ok((
                CpuStorage::F32(f32_run(contiguous(s, l, self.name())?, l)),
                l.shape().clone(),
            )),
            CpuStorage::F64(_) => Ok((
                CpuStorage::F64(f64_run(contiguous(s, l, self.name())?, l)),
                l.shape().clone(),
            )),
            _ => candle_core::bail!("{}: only f32 and f64 are supported", self.name()),
        }
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &LayerNormBwd(self.0),
        )?))
    }
}

impl CustomOp2 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: shape mismatch", self.name());
        }
        match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (a, b) = (
                    contiguous(s1, l1, self.name())?,
                    contiguous(s2, l2, self.name())?,
                );
                Ok((
                    CpuStorage::F32(self.run::<f32>(a, b, l1)),
                    l1.shape().clone(),
                ))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (a, b) = (
                    contiguous(s1, l1, self.name())?,
                    contiguous(s2, l2, self.name())?,
                );
                Ok((
                    CpuStorage::F64(self.run::<f64>(a, b, l1)),
                    l1.shape().clone(),
                ))
            }
            _ => candle_core::bail!("{}: only f32 and f64 (matching) are supported", self.name()),
        }
    }
}

// ---------------------------------------------------------------- entry points

/// GELU, tanh approximation, with a one-pass backward.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluTanh)
}

/// Softmax over the last dimension, with a one-pass backward.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// LayerNorm over the last dimension without affine parameters; the backward recomputes the
/// row statistics instead of storing them.
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(LayerNorm(eps))
}
