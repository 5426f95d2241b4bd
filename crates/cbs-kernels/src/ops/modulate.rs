//! LayerNorm (no affine) fused with the adaLN modulation `·(1 + scale) + shift` of a DiT/SiT
//! block: `x` `[B, N, C]`, `shift`, `scale` `[B, C]` broadcast over the `N` tokens. The
//! backward returns (dx, dshift, dscale) packed in one buffer; per-sample sums in f64, one
//! sample per task.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::layer_norm::row_stats;
use super::*;
#[cfg(feature = "cuda")]
use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage};

#[cfg(feature = "cuda")]
const CUDA: cuda::Module = cuda::ptx_module!("modulate");

/// `y = x̂·(1 + scale) + shift`, `x̂ = (x − mean)·rstd` per token.
pub(crate) fn ln_mod_fwd<T: F>(
    x: &[T],
    shift: &[T],
    scale: &[T],
    n: usize,
    c: usize,
    eps: f64,
) -> Vec<T> {
    new_chunks(x.len(), 0, c, |r, o| {
        let b = r / n;
        let xr = &x[r * c..(r + 1) * c];
        let (sh, sc) = (&shift[b * c..(b + 1) * c], &scale[b * c..(b + 1) * c]);
        ln_mod_row(o, xr, sh, sc, eps)
    })
    .0
}

simd_kernel! {
    /// One token of [`ln_mod_fwd`].
    fn ln_mod_row<T: F>(o: &mut [T], xr: &[T], sh: &[T], sc: &[T], eps: f64) {
        let (mean, rstd) = row_stats(xr, eps);
        for (((o, &x), &sh), &sc) in o.iter_mut().zip(xr).zip(sh).zip(sc) {
            *o = T::of((x.f() - mean) * rstd * (1.0 + sc.f()) + sh.f());
        }
    }
}

/// With `ĝ = g·(1 + scale)`: `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))` per token, plus
/// `residual` when it is not empty (a block half's skip connection, added while the row is
/// in cache); `dshift = Σ_n g`, `dscale = Σ_n g·x̂`; statistics recomputed from `x`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ln_mod_bwd<T: F>(
    x: &[T],
    scale: &[T],
    g: &[T],
    residual: &[T],
    n: usize,
    c: usize,
    eps: f64,
) -> Vec<T> {
    let b = x.len() / (n * c).max(1);
    let (dx, acc) = new_chunks(x.len(), 2 * b * c, n * c, |b, dx| {
        let rows = b * n * c..(b + 1) * n * c;
        let sc = &scale[b * c..(b + 1) * c];
        let res = residual.get(rows.clone()).unwrap_or(&[]);
        ln_mod_bwd_sample(dx, &x[rows.clone()], &g[rows], res, sc, c, eps)
    });
    pack(dx, &acc, 2, c)
}

simd_kernel! {
    /// One sample of [`ln_mod_bwd`]: writes its `dx` rows, returns `[dshift | dscale]`.
    fn ln_mod_bwd_sample<T: F>(
        dx: &mut [T],
        x: &[T],
        g: &[T],
        res: &[T],
        sc: &[T],
        c: usize,
        eps: f64
    ) -> Vec<f64> {
        let mut acc = vec![0.0f64; 2 * c];
        let (a_sh, a_sc) = acc.split_at_mut(c);
        for (r, ((dx, xr), gr)) in dx.chunks_mut(c).zip(x.chunks(c)).zip(g.chunks(c)).enumerate() {
            let (mean, rstd) = row_stats(xr, eps);
            let mg = lane_sum3(gr, sc, sc, |g, s, _| g * (1.0 + s)) / c as f64;
            let mgx = lane_sum3(gr, sc, xr, |g, s, x| g * (1.0 + s) * (x - mean) * rstd) / c as f64;
            let it = dx.iter_mut().zip(xr).zip(gr).zip(sc);
            for ((((o, &x), &g), &s), (ash, asc)) in it.zip(a_sh.iter_mut().zip(a_sc.iter_mut())) {
                let (xh, g) = ((x.f() - mean) * rstd, g.f());
                *o = T::of(rstd * (g * (1.0 + s.f()) - mg - xh * mgx));
                *ash += g;
                *asc += g * xh;
            }
            if let Some(rr) = res.get(r * c..(r + 1) * c) {
                for (o, &v) in dx.iter_mut().zip(rr) {
                    *o = T::of(o.f() + v.f());
                }
            }
        }
        acc
    }
}

/// Forward: (x, shift, scale) → `LN(x)·(1 + scale) + shift`; the parameter is epsilon.
struct LnModulate(f64);
/// Backward: (x, scale, grad) → packed (dx, dshift, dscale).
struct LnModulateBwd(f64);

impl CustomOp3 for LnModulate {
    fn name(&self) -> &'static str {
        "fused-layer-norm-modulate"
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
        let (_, n, c) = bnc(op, l1, None, &[l2, l3])?;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, sh, sc| {
            ln_mod_fwd(x, sh, sc, n, c, self.0)
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
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (b, n, c) = bnc(op, l1, None, &[l2, l3])?;
        let (dev, rows, eps) = (&s1.device, b * n, self.0 as f32);
        let out = dispatch!(op, s1.dtype(), |T| {
            let x = cuda::view::<T>(s1, l1, op)?;
            let (shift, scale) = (cuda::view::<T>(s2, l2, op)?, cuda::view::<T>(s3, l3, op)?);
            let mut y = cuda::alloc::<T>(dev, rows * c, op)?;
            launch!(CUDA.func::<T>(dev, "ln_mod_fwd")?, cuda::rows(rows, c, op)?;
                &x, &shift, &scale, &mut y, &rows, &n, &c, &eps);
            cuda::wrap(y, dev)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(scale, &grad.contiguous()?, &LnModulateBwd(self.0))?;
        let mut g = unpack(&packed, x.dims3()?, 2)?.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

impl CustomOp3 for LnModulateBwd {
    fn name(&self) -> &'static str {
        "fused-layer-norm-modulate-bwd"
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
        let (b, n, c) = bnc(op, l1, Some(l3), &[l2])?;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, sc, g| {
            ln_mod_bwd(x, sc, g, &[], n, c, self.0)
        });
        Ok((out, Shape::from(b * n * c + 2 * b * c)))
    }

    /// Two kernels: dx and each token's statistics, then the per-sample sums from them.
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
        let (b, n, c) = bnc(op, l1, Some(l3), &[l2])?;
        let (dev, rows, eps) = (&s1.device, b * n, self.0 as f32);
        let len = rows * c + 2 * b * c;
        let out = dispatch!(op, s1.dtype(), |T| {
            let x = cuda::view::<T>(s1, l1, op)?;
            let (scale, g) = (cuda::view::<T>(s2, l2, op)?, cuda::view::<T>(s3, l3, op)?);
            let mut out = cuda::alloc::<T>(dev, len, op)?;
            let mut stats = cuda::scratch(dev, 2 * rows, op)?;
            launch!(CUDA.func::<T>(dev, "ln_mod_bwd_rows")?, cuda::rows(rows, c, op)?;
                &x, &scale, &g, &mut out, &mut stats, &rows, &n, &c, &eps);
            launch!(CUDA.func::<T>(dev, "ln_mod_bwd_cols")?, cuda::columns(c, b, op)?;
                &x, &g, &stats, &mut out, &b, &n, &c);
            cuda::wrap(out, dev)
        });
        Ok((out, Shape::from(len)))
    }
}

/// An empty tensor has nothing to fuse (and zero-length chunks cannot be split): callers take
/// the composed versions ([`crate::applies`] is false for it).
pub(crate) fn empty(x: &Tensor) -> Result<bool> {
    let (b, n, c) = x.dims3()?;
    Ok(b * n * c == 0)
}

/// `LN(x)·(1 + scale) + shift`: LayerNorm over the last dimension without affine parameters
/// (epsilon `eps`) fused with the adaLN modulation; `x`: `[B, N, C]`, `shift`, `scale`:
/// `[B, C]`. The backward recomputes the row statistics.
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    if empty(x)? {
        bail!(
            "{}: empty input (callers take the composed version)",
            "fused-layer-norm-modulate"
        );
    }
    x.contiguous()?
        .apply_op3(&shift.contiguous()?, &scale.contiguous()?, LnModulate(eps))
}
