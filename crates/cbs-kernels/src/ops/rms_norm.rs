//! RMSNorm fused with the adaLN modulation (JiT's `modulate(norm(x), shift, scale)`): one
//! node whose backward returns (dx, da, dshift) packed in one buffer, per-sample sums in f64
//! added in sample order.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::*;
#[cfg(feature = "cuda")]
use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage};

#[cfg(feature = "cuda")]
const CUDA: cuda::Module = cuda::ptx_module!("rms_norm");

/// `1/√(mean(x²) + eps)` of one row.
#[inline(always)]
pub(crate) fn rms_rstd<T: F>(x: &[T], eps: f64) -> f64 {
    1.0 / (lane_sum(x, |v| v * v) / x.len().max(1) as f64 + eps).sqrt()
}

simd_kernel! {
    /// One token: `o = x·rstd·a + shift`.
    fn rms_mod_row<T: F>(o: &mut [T], xr: &[T], a: &[T], sh: &[T], eps: f64) {
        let rstd = rms_rstd(xr, eps);
        for (((o, &x), &a), &sh) in o.iter_mut().zip(xr).zip(a).zip(sh) {
            *o = T::of(x.f() * rstd * a.f() + sh.f());
        }
    }
}

simd_kernel! {
    /// One sample of the backward: with `x̂ = x·rstd`, `ĝ = g·a`, writes
    /// `dx = rstd·(ĝ − x̂·mean(ĝ·x̂))` per token and returns `[da | dshift] = [Σ_n g·x̂ | Σ_n g]`.
    fn rms_mod_bwd_sample<T: F>(dx: &mut [T], x: &[T], g: &[T], a: &[T], c: usize, eps: f64)
        -> Vec<f64>
    {
        let mut acc = vec![0.0f64; 2 * c];
        let (a_a, a_sh) = acc.split_at_mut(c);
        for ((dx, xr), gr) in dx.chunks_mut(c).zip(x.chunks(c)).zip(g.chunks(c)) {
            let rstd = rms_rstd(xr, eps);
            let m = lane_sum3(gr, a, xr, |g, a, x| g * a * x) * rstd / c as f64;
            let it = dx.iter_mut().zip(xr).zip(gr).zip(a);
            for ((((o, &x), &g), &a), (aa, ash)) in it.zip(a_a.iter_mut().zip(a_sh.iter_mut())) {
                let (xh, g) = (x.f() * rstd, g.f());
                *o = T::of(rstd * (g * a.f() - xh * m));
                *aa += g * xh;
                *ash += g;
            }
        }
        acc
    }
}

/// Forward: (x, a, shift) → `RMS(x)·a + shift`; the parameter is epsilon.
struct RmsModulate(f64);
/// Backward: (x, a, grad) → packed (dx, da, dshift).
struct RmsModulateBwd(f64);

impl CustomOp3 for RmsModulate {
    fn name(&self) -> &'static str {
        "fused-rms-norm-modulate"
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
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, a, sh| {
            new_chunks(x.len(), 0, c, |r, o| {
                let b = r / n;
                let (a, sh) = (&a[b * c..(b + 1) * c], &sh[b * c..(b + 1) * c]);
                rms_mod_row(o, &x[r * c..(r + 1) * c], a, sh, self.0)
            })
            .0
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
            let (x, a) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let shift = cuda::view::<T>(s3, l3, op)?;
            let mut y = cuda::alloc::<T>(dev, rows * c, op)?;
            launch!(CUDA.func::<T>(dev, "rms_mod_fwd")?, cuda::rows(rows, c, op)?;
                &x, &a, &shift, &mut y, &rows, &n, &c, &eps);
            cuda::wrap(y, dev)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        _shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(a, &grad.contiguous()?, &RmsModulateBwd(self.0))?;
        let mut g = unpack(&packed, x.dims3()?, 2)?.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

impl CustomOp3 for RmsModulateBwd {
    fn name(&self) -> &'static str {
        "fused-rms-norm-modulate-bwd"
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
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, a, g| {
            let (dx, acc) = new_chunks(x.len(), 2 * b * c, n * c, |b, dx| {
                let rows = b * n * c..(b + 1) * n * c;
                let a = &a[b * c..(b + 1) * c];
                rms_mod_bwd_sample(dx, &x[rows.clone()], &g[rows], a, c, self.0)
            });
            pack(dx, &acc, 2, c)
        });
        Ok((out, Shape::from(b * n * c + 2 * b * c)))
    }

    /// Two kernels: dx and each token's rstd, then the per-sample sums from them.
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
            let (x, a) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let g = cuda::view::<T>(s3, l3, op)?;
            let mut out = cuda::alloc::<T>(dev, len, op)?;
            let mut stats = cuda::scratch(dev, rows, op)?;
            launch!(CUDA.func::<T>(dev, "rms_mod_bwd_rows")?, cuda::rows(rows, c, op)?;
                &x, &a, &g, &mut out, &mut stats, &rows, &n, &c, &eps);
            launch!(CUDA.func::<T>(dev, "rms_mod_bwd_cols")?, cuda::columns(c, b, op)?;
                &x, &g, &stats, &mut out, &b, &n, &c);
            cuda::wrap(out, dev)
        });
        Ok((out, Shape::from(len)))
    }
}

pub fn rms_norm_modulate(x: &Tensor, a: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &shift.contiguous()?, RmsModulate(eps))
}
