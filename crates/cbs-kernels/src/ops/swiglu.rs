//! The SwiGLU gate `silu(a)·b` over `[…, 2m]` = `[a | b]`.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::*;
#[cfg(feature = "cuda")]
use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage};

#[cfg(feature = "cuda")]
const CUDA: cuda::Module = cuda::ptx_module!("swiglu");

simd_kernel! {
    /// Rows of `[a | b]` (`2m`) → rows of `silu(a)·b` (`m`).
    fn swiglu_rows<T: F>(o: &mut [T], x: &[T], m: usize) {
        for (o, x) in o.chunks_mut(m).zip(x.chunks(2 * m)) {
            let (a, b) = x.split_at(m);
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                let a = a.f();
                *o = T::of(a * sigmoid_pair::<T>(a).0 * b.f());
            }
        }
    }
}

simd_kernel! {
    /// Rows of the backward: `da = g·b·σ(a)·(1 + a·(1 − σ(a)))`, `db = g·a·σ(a)`.
    fn swiglu_bwd_rows<T: F>(o: &mut [T], x: &[T], g: &[T], m: usize) {
        for ((o, x), g) in o.chunks_mut(2 * m).zip(x.chunks(2 * m)).zip(g.chunks(m)) {
            let (a, b) = x.split_at(m);
            let (da, db) = o.split_at_mut(m);
            for ((((da, db), &a), &b), &g) in da.iter_mut().zip(db).zip(a).zip(b).zip(g) {
                let (a, g) = (a.f(), g.f());
                let (s, sc) = sigmoid_pair::<T>(a);
                *da = T::of(g * b.f() * s * (1.0 + a * sc));
                *db = T::of(g * a * s);
            }
        }
    }
}

/// Rows per task of the SwiGLU kernels (a few thousand elements each).
fn swiglu_rows_per_task(m: usize) -> usize {
    (4096 / m.max(1)).max(1)
}

/// Forward: `[…, 2m]` → `[…, m]`.
struct SwiGlu;
/// Backward: (x, grad) → dx `[…, 2m]`.
struct SwiGluBwd;

fn half_last(op: &str, l: &Layout) -> Result<(usize, Shape)> {
    let mut dims = l.dims().to_vec();
    match dims.last_mut() {
        Some(m2) if *m2 % 2 == 0 && *m2 > 0 => {
            *m2 /= 2;
            Ok((*m2, Shape::from(dims)))
        }
        _ => bail!(
            "{op}: the last dimension must be even and positive, got {:?}",
            l.dims()
        ),
    }
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (m, shape) = half_last(op, l)?;
        let rows = swiglu_rows_per_task(m);
        let out = with_slices1!(op, (s, l), |x| {
            new_chunks(x.len() / 2, 0, rows * m, |i, o| {
                swiglu_rows(o, &x[i * rows * 2 * m..], m)
            })
            .0
        });
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (m, shape) = half_last(op, l)?;
        let (dev, len) = (&s.device, l.shape().elem_count() / 2);
        let rows = len / m;
        let out = dispatch!(op, s.dtype(), |T| {
            let x = cuda::view::<T>(s, l, op)?;
            let mut y = cuda::alloc::<T>(dev, len, op)?;
            launch!(CUDA.func::<T>(dev, "swiglu_fwd")?, cuda::elementwise(len);
                &x, &mut y, &rows, &m);
            cuda::wrap(y, dev)
        });
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &SwiGluBwd)?))
    }
}

impl CustomOp2 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "fused-swiglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (m, half) = half_last(op, l1)?;
        if l2.shape() != &half {
            bail!(
                "{op}: gradient {:?} for an output of {:?}",
                l2.dims(),
                half.dims()
            );
        }
        let rows = swiglu_rows_per_task(m);
        let out = with_slices2!(op, (s1, l1), (s2, l2), |x, g| {
            new_chunks(x.len(), 0, rows * 2 * m, |i, o| {
                swiglu_bwd_rows(o, &x[i * rows * 2 * m..], &g[i * rows * m..], m)
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
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (m, half) = half_last(op, l1)?;
        if l2.shape() != &half {
            bail!(
                "{op}: gradient {:?} for an output of {:?}",
                l2.dims(),
                half.dims()
            );
        }
        let (dev, len) = (&s1.device, l1.shape().elem_count());
        let rows = len / (2 * m);
        let out = dispatch!(op, s1.dtype(), |T| {
            let (x, g) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let mut dx = cuda::alloc::<T>(dev, len, op)?;
            launch!(CUDA.func::<T>(dev, "swiglu_bwd")?, cuda::elementwise(len / 2);
                &x, &g, &mut dx, &rows, &m);
            cuda::wrap(dx, dev)
        });
        Ok((out, l1.shape().clone()))
    }
}

pub fn swiglu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SwiGlu)
}
