//! The gated residual `x + gate·h` of a DiT/SiT block (`x`, `h` `[B, N, C]`, `gate` `[B, C]`),
//! with a backward that returns (dx, dgate, dh) packed in one buffer.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::modulate::empty;
use super::*;
#[cfg(feature = "cuda")]
use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage};

#[cfg(feature = "cuda")]
const CUDA: cuda::Module = cuda::ptx_module!("gated_residual");

/// `y = x + gate·h`.
pub(crate) fn gated_fwd<T: F>(x: &[T], gate: &[T], h: &[T], n: usize, c: usize) -> Vec<T> {
    new_chunks(x.len(), 0, n * c, |b, o| {
        let rows = b * n * c..(b + 1) * n * c;
        gated_sample(o, &x[rows.clone()], &gate[b * c..(b + 1) * c], &h[rows], c)
    })
    .0
}

simd_kernel! {
    /// One sample of [`gated_fwd`].
    fn gated_sample<T: F>(o: &mut [T], x: &[T], gt: &[T], h: &[T], c: usize) {
        for ((o, x), h) in o.chunks_mut(c).zip(x.chunks(c)).zip(h.chunks(c)) {
            for (((o, &x), &h), &gt) in o.iter_mut().zip(x).zip(h).zip(gt) {
                *o = T::of(x.f() + gt.f() * h.f());
            }
        }
    }
}

/// `dh = g·gate`, `dgate = Σ_n g·h` (`dx = g` needs no kernel).
pub(crate) fn gated_bwd<T: F>(gate: &[T], h: &[T], g: &[T], n: usize, c: usize) -> Vec<T> {
    let (dh, acc) = new_chunks(h.len(), gate.len(), n * c, |b, dh| {
        let rows = b * n * c..(b + 1) * n * c;
        gated_bwd_sample(dh, &gate[b * c..(b + 1) * c], &h[rows.clone()], &g[rows], c)
    });
    pack(dh, &acc, 1, c)
}

simd_kernel! {
    /// One sample of [`gated_bwd`]: writes its `dh` rows, returns `dgate`.
    fn gated_bwd_sample<T: F>(dh: &mut [T], gt: &[T], h: &[T], g: &[T], c: usize) -> Vec<f64> {
        let mut acc = vec![0.0f64; c];
        for ((dh, hr), gr) in dh.chunks_mut(c).zip(h.chunks(c)).zip(g.chunks(c)) {
            for ((((o, &h), &g), &gt), a) in dh.iter_mut().zip(hr).zip(gr).zip(gt).zip(&mut acc) {
                *o = T::of(g.f() * gt.f());
                *a += g.f() * h.f();
            }
        }
        acc
    }
}

/// Forward: (x, gate, h) → `x + gate·h`.
struct GatedResidual;
/// Backward: (gate, h, grad) → packed (dh, dgate).
struct GatedResidualBwd;

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "fused-gated-residual"
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
        let (_, n, c) = bnc(op, l1, Some(l3), &[l2])?;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, gate, h| {
            gated_fwd(x, gate, h, n, c)
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
        let (b, n, c) = bnc(op, l1, Some(l3), &[l2])?;
        let (dev, len) = (&s1.device, b * n * c);
        let out = dispatch!(op, s1.dtype(), |T| {
            let (x, gate) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let h = cuda::view::<T>(s3, l3, op)?;
            let mut y = cuda::alloc::<T>(dev, len, op)?;
            launch!(CUDA.func::<T>(dev, "gated_fwd")?, cuda::elementwise(len);
                &x, &gate, &h, &mut y, &b, &n, &c);
            cuda::wrap(y, dev)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        gate: &Tensor,
        h: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = gate.apply_op3_no_bwd(h, &grad.contiguous()?, &GatedResidualBwd)?;
        let mut g = unpack(&packed, h.dims3()?, 1)?.into_iter();
        let (dh, dgate) = (g.next(), g.next());
        Ok((Some(grad.clone()), dgate, dh))
    }
}

impl CustomOp3 for GatedResidualBwd {
    fn name(&self) -> &'static str {
        "fused-gated-residual-bwd"
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
        let (b, n, c) = bnc(op, l2, Some(l3), &[l1])?;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |gate, h, g| {
            gated_bwd(gate, h, g, n, c)
        });
        Ok((out, Shape::from(b * n * c + b * c)))
    }

    /// Two kernels: dh element-wise, then the per-sample sums of dgate.
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
        let (b, n, c) = bnc(op, l2, Some(l3), &[l1])?;
        let (dev, len) = (&s1.device, b * n * c);
        let out = dispatch!(op, s1.dtype(), |T| {
            let (gate, h) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let g = cuda::view::<T>(s3, l3, op)?;
            let mut out = cuda::alloc::<T>(dev, len + b * c, op)?;
            launch!(CUDA.func::<T>(dev, "gated_bwd_dh")?, cuda::elementwise(len);
                &gate, &g, &mut out, &b, &n, &c);
            launch!(CUDA.func::<T>(dev, "gated_bwd_cols")?, cuda::columns(c, b, op)?;
                &h, &g, &mut out, &b, &n, &c);
            cuda::wrap(out, dev)
        });
        Ok((out, Shape::from(len + b * c)))
    }
}

/// `x + gate·h` with `x`, `h`: `[B, N, C]` and `gate`: `[B, C]` broadcast over the tokens.
pub fn gated_residual(x: &Tensor, gate: &Tensor, h: &Tensor) -> Result<Tensor> {
    if empty(x)? {
        bail!(
            "{}: empty input (callers take the composed version)",
            "fused-gated-residual"
        );
    }
    x.contiguous()?
        .apply_op3(&gate.contiguous()?, &h.contiguous()?, GatedResidual)
}
