//! JiT's per-head RMS qk-norm fused with the 2-D rotary embedding, reading and writing the
//! `[B, N, 3C]` qkv layout so that attention follows without a copy.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::rms_norm::rms_rstd;
use super::*;
#[cfg(feature = "cuda")]
use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage};

#[cfg(feature = "cuda")]
const CUDA: cuda::Module = cuda::ptx_module!("qk_norm_rope");

/// Head width, token count and the `[2, N, d]` (cos, sin) table of a qk-norm + RoPE op after
/// checking the shapes: `qkv` `[B, N, 3·H·d]`, `w` `[2, d]`.
fn qk_dims(
    op: &str,
    qkv: &Layout,
    w: &Layout,
    rope: &[usize],
    heads: usize,
) -> Result<(usize, usize)> {
    let (_, n, c3) = qkv.shape().dims3()?;
    if heads == 0 || !c3.is_multiple_of(3 * heads) || !(c3 / (3 * heads)).is_multiple_of(2) {
        bail!("{op}: {c3} qkv channels do not split into 3 × {heads} heads of an even width");
    }
    let d = c3 / (3 * heads);
    if w.dims() != [2, d] {
        bail!(
            "{op}: expected the [2, {d}] (q_norm, k_norm) weights, got {:?}",
            w.dims()
        );
    }
    if rope != [2, n, d] {
        bail!("{op}: expected a [2, {n}, {d}] (cos, sin) table for {n} tokens, got {rope:?}");
    }
    Ok((n, d))
}

simd_kernel! {
    /// One token `[q | k | v]` (`3·H·d`): q and k normalised per head with their weights
    /// (`w` = `[wq | wk]`) and rotated, pairs `(2i, 2i+1)`: `(y₀·cos₀ − y₁·sin₀,
    /// y₁·cos₁ + y₀·sin₁)`; v copied.
    fn qk_rope_row<T: F>(o: &mut [T], x: &[T], w: &[T], cos: &[T], sin: &[T], d: usize, eps: f64) {
        let c = x.len() / 3;
        for (h, (o, x)) in o[..2 * c].chunks_mut(d).zip(x[..2 * c].chunks(d)).enumerate() {
            let w = &w[(h * d / c) * d..][..d]; // heads of q use wq, heads of k use wk
            let rstd = rms_rstd(x, eps);
            for ((((o, x), w), cs), sn) in o.chunks_exact_mut(2)
                .zip(x.chunks_exact(2))
                .zip(w.chunks_exact(2))
                .zip(cos.chunks_exact(2))
                .zip(sin.chunks_exact(2))
            {
                let y0 = x[0].f() * rstd * w[0].f();
                let y1 = x[1].f() * rstd * w[1].f();
                o[0] = T::of(y0 * cs[0].f() - y1 * sn[0].f());
                o[1] = T::of(y1 * cs[1].f() + y0 * sn[1].f());
            }
        }
        o[2 * c..].copy_from_slice(&x[2 * c..]);
    }
}

simd_kernel! {
    /// One sample of the backward (`n` tokens): the rotation transposed, then the RMSNorm
    /// backward per head; v's gradient passes through. Returns `dw` = `[dwq | dwk]`.
    fn qk_rope_bwd_sample<T: F>(
        dx: &mut [T],
        x: &[T],
        g: &[T],
        w: &[T],
        cos: &[T],
        sin: &[T],
        c3: usize,
        d: usize,
        eps: f64
    ) -> Vec<f64> {
        let c = c3 / 3;
        let mut dw = vec![0.0f64; 2 * d];
        let mut gy = vec![0.0f64; d];
        for (t, ((dx, x), g)) in dx.chunks_mut(c3).zip(x.chunks(c3)).zip(g.chunks(c3)).enumerate() {
            let (cs, sn) = (&cos[t * d..(t + 1) * d], &sin[t * d..(t + 1) * d]);
            for (h, ((dx, x), g)) in dx[..2 * c]
                .chunks_mut(d)
                .zip(x[..2 * c].chunks(d))
                .zip(g[..2 * c].chunks(d))
                .enumerate()
            {
                let part = h * d / c;
                let (w, dw) = (&w[part * d..][..d], &mut dw[part * d..][..d]);
                // dy₀ = g₀·cos₀ + g₁·sin₁, dy₁ = g₁·cos₁ − g₀·sin₀.
                for (i, gy) in gy.chunks_exact_mut(2).enumerate() {
                    let (g0, g1) = (g[2 * i].f(), g[2 * i + 1].f());
                    gy[0] = g0 * cs[2 * i].f() + g1 * sn[2 * i + 1].f();
                    gy[1] = g1 * cs[2 * i + 1].f() - g0 * sn[2 * i].f();
                }
                let rstd = rms_rstd(x, eps);
                let mut m = 0.0;
                for ((&gy, &w), &x) in gy.iter().zip(w).zip(x) {
                    m += gy * w.f() * x.f();
                }
                let m = m * rstd / d as f64;
                for ((((o, &gy), &w), &x), dw) in dx.iter_mut().zip(&gy).zip(w).zip(x).zip(dw) {
                    let xh = x.f() * rstd;
                    *o = T::of(rstd * (gy * w.f() - xh * m));
                    *dw += gy * xh;
                }
            }
            dx[2 * c..].copy_from_slice(&g[2 * c..]);
        }
        dw
    }
}

/// Forward: (qkv, w) → qkv with q and k normalised and rotated; holds the `[2, N, d]`
/// (cos, sin) table (a constant).
struct QkNormRope {
    rope: Tensor,
    heads: usize,
    eps: f64,
}
/// Backward: (qkv, w, grad) → packed (dqkv, dw).
struct QkNormRopeBwd {
    rope: Tensor,
    heads: usize,
    eps: f64,
}

/// `f(cos, sin)` on the two halves of the rope table as slices of `T`.
fn with_table<T: F, R>(rope: &Tensor, f: impl FnOnce(&[T], &[T]) -> R) -> Result<R> {
    super::with_slice::<T, _>(rope, |t| {
        let (cos, sin) = t.split_at(t.len() / 2);
        Ok(f(cos, sin))
    })
}

impl CustomOp2 for QkNormRope {
    fn name(&self) -> &'static str {
        "fused-qk-norm-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, d) = qk_dims(op, l1, l2, self.rope.dims(), self.heads)?;
        let c3 = l1.dims()[2];
        let (rope, eps) = (&self.rope, self.eps);
        let out = with_slices2!(op, (s1, l1), (s2, l2), |x, w| {
            with_table(rope, |cos, sin| {
                new_chunks(x.len(), 0, c3, |r, o| {
                    let t = r % n;
                    let (cs, sn) = (&cos[t * d..(t + 1) * d], &sin[t * d..(t + 1) * d]);
                    qk_rope_row(o, &x[r * c3..(r + 1) * c3], w, cs, sn, d, eps)
                })
                .0
            })?
        });
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (n, d) = qk_dims(op, l1, l2, self.rope.dims(), self.heads)?;
        let (dev, heads, eps) = (&s1.device, self.heads, self.eps as f32);
        let (len, c3) = (l1.shape().elem_count(), l1.dims()[2]);
        let rows = len / c3;
        let out = dispatch!(op, s1.dtype(), |T| {
            let (x, w) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            cuda::with_view::<T, _>(&self.rope, op, |rope| {
                let mut y = cuda::alloc::<T>(dev, len, op)?;
                launch!(CUDA.func::<T>(dev, "qk_rope_fwd")?, cuda::rows(rows, c3, op)?;
                    &x, &w, &rope, &mut y, &rows, &n, &heads, &d, &eps);
                Ok(cuda::wrap(y, dev))
            })?
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let bwd = QkNormRopeBwd {
            rope: self.rope.clone(),
            heads: self.heads,
            eps: self.eps,
        };
        let packed = qkv.apply_op3_no_bwd(w, &grad.contiguous()?, &bwd)?;
        let mut g = split_packed(&packed, &[qkv.shape().clone(), w.shape().clone()])?.into_iter();
        Ok((g.next(), g.next()))
    }
}

impl CustomOp3 for QkNormRopeBwd {
    fn name(&self) -> &'static str {
        "fused-qk-norm-rope-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, d) = qk_dims(op, l1, l2, self.rope.dims(), self.heads)?;
        if l3.dims() != l1.dims() {
            bail!("{op}: gradient {:?} vs input {:?}", l3.dims(), l1.dims());
        }
        let c3 = l1.dims()[2];
        let (rope, eps) = (&self.rope, self.eps);
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, w, g| {
            with_table(rope, |cos, sin| {
                let (dx, acc) = new_chunks(x.len(), 2 * d, n * c3, |b, dx| {
                    let rows = b * n * c3..(b + 1) * n * c3;
                    qk_rope_bwd_sample(dx, &x[rows.clone()], &g[rows], w, cos, sin, c3, d, eps)
                });
                append_sum(dx, &acc, 2 * d)
            })?
        });
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * d)))
    }

    /// Three kernels: dqkv and each head's rstd; partial weight gradients over chunks of
    /// tokens; their sum (fixed order: no atomics).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (n, d) = qk_dims(op, l1, l2, self.rope.dims(), self.heads)?;
        if l3.dims() != l1.dims() {
            bail!("{op}: gradient {:?} vs input {:?}", l3.dims(), l1.dims());
        }
        let (dev, heads, eps) = (&s1.device, self.heads, self.eps as f32);
        let (len, c3) = (l1.shape().elem_count(), l1.dims()[2]);
        let rows = len / c3;
        // About 256 chunks: enough blocks for the partial sums, few partials to add.
        let chunk = rows.div_ceil(256).max(1);
        let chunks = rows.div_ceil(chunk);
        let out = dispatch!(op, s1.dtype(), |T| {
            let (x, w) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let g = cuda::view::<T>(s3, l3, op)?;
            cuda::with_view::<T, _>(&self.rope, op, |rope| {
                let mut out = cuda::alloc::<T>(dev, len + 2 * d, op)?;
                let mut rstds = cuda::scratch(dev, rows * 2 * heads, op)?;
                let mut part = cuda::scratch(dev, chunks * 2 * d, op)?;
                launch!(CUDA.func::<T>(dev, "qk_rope_bwd_rows")?, cuda::rows(rows, c3, op)?;
                    &x, &w, &rope, &g, &mut out, &mut rstds, &rows, &n, &heads, &d, &eps);
                launch!(CUDA.func::<T>(dev, "qk_rope_bwd_dw")?, cuda::columns(2 * d, chunks, op)?;
                    &x, &rope, &g, &rstds, &mut part, &rows, &n, &heads, &d, &chunk);
                launch!(CUDA.func::<T>(dev, "qk_rope_bwd_sum")?, cuda::columns(2 * d, 1, op)?;
                    &part, &mut out, &chunks, &rows, &heads, &d);
                Ok(cuda::wrap(out, dev))
            })?
        });
        Ok((out, Shape::from(len + 2 * d)))
    }
}

pub fn qk_norm_rope(
    qkv: &Tensor,
    w: &Tensor,
    rope: &Tensor,
    heads: usize,
    eps: f64,
) -> Result<Tensor> {
    let op = QkNormRope {
        rope: rope.contiguous()?.detach(),
        heads,
        eps,
    };
    qkv.contiguous()?.apply_op2(&w.contiguous()?, op)
}
