//! Mean squared error over all elements as one node whose backward gives both inputs their
//! gradient in one pass (the trainer's loss).

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::contiguous;
#[cfg(feature = "cuda")]
use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage};

#[cfg(feature = "cuda")]
const CUDA: cuda::Module = cuda::ptx_module!("mse");

/// Mean over all elements of `(a − b)²` as one CPU kernel (f32/f64, sums in f64; on CUDA
/// f32/bf16, sums in f32) whose backward gives both inputs their gradient in one pass:
/// `da = 2·g·(a − b)/n = −db`.
/// No gradient of the gradient.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("mse: shape mismatch {:?} vs {:?}", a.shape(), b.shape());
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, Mse)
}

/// Forward: (a, b) → scalar mean of `(a − b)²`.
struct Mse;
/// Backward: (a, b, g) → `[2, …]` packed (da, db) for the upstream scalar gradient `g`, read
/// where it lives (on CUDA the host never waits for it).
struct MseBwd;

fn mse_fwd<T: candle_core::WithDType>(a: &[T], b: &[T]) -> T {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&a, &b)| {
            let d = a.to_f64() - b.to_f64();
            d * d
        })
        .sum();
    T::from_f64(s / a.len() as f64)
}

fn mse_bwd<T: candle_core::WithDType>(a: &[T], b: &[T], k: f64) -> Vec<T> {
    let mut out: Vec<T> = a
        .iter()
        .zip(b)
        .map(|(&a, &b)| T::from_f64(k * (a.to_f64() - b.to_f64())))
        .collect();
    out.extend_from_within(..);
    for o in &mut out[a.len()..] {
        *o = T::from_f64(-o.to_f64());
    }
    out
}

impl CustomOp2 for Mse {
    fn name(&self) -> &'static str {
        "fused-mse"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(vec![mse_fwd::<f32>(
                contiguous(s1, l1, "fused-mse")?,
                contiguous(s2, l2, "fused-mse")?,
            )]),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(vec![mse_fwd::<f64>(
                contiguous(s1, l1, "fused-mse")?,
                contiguous(s2, l2, "fused-mse")?,
            )]),
            _ => bail!("fused-mse: only f32 and f64 (matching) are supported"),
        };
        Ok((out, Shape::from(())))
    }

    /// Per-block partial sums, then one block adds them in order: deterministic, no atomics.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        if l1.shape() != l2.shape() {
            bail!("{op}: shape mismatch {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let (dev, n) = (&s1.device, l1.shape().elem_count());
        let cfg = cuda::elementwise(n);
        let parts = cfg.grid_dim.0 as usize;
        let one_block = cuda::LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let out = dispatch!(op, s1.dtype(), |T| {
            let (a, b) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let mut part = cuda::scratch(dev, parts, op)?;
            let mut out = cuda::alloc::<T>(dev, 1, op)?;
            launch!(CUDA.func::<T>(dev, "mse_partial")?, cfg; &a, &b, &mut part, &n);
            launch!(CUDA.func::<T>(dev, "mse_final")?, one_block; &part, &parts, &mut out, &n);
            cuda::wrap(out, dev)
        });
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.reshape(1)?.contiguous()?;
        let packed = a.apply_op3_no_bwd(b, &grad, &MseBwd)?;
        let n = a.elem_count();
        let da = packed.narrow(0, 0, n)?.reshape(a.shape())?;
        let db = packed.narrow(0, n, n)?.reshape(b.shape())?;
        Ok((Some(da), Some(db)))
    }
}

impl CustomOp3 for MseBwd {
    fn name(&self) -> &'static str {
        "fused-mse-bwd"
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
        let Some((o, _)) = l3.contiguous_offsets() else {
            bail!("fused-mse-bwd: the upstream gradient must be contiguous");
        };
        let g = match s3 {
            CpuStorage::F32(x) => f64::from(x[o]),
            CpuStorage::F64(x) => x[o],
            _ => bail!("fused-mse-bwd: the upstream gradient must be f32 or f64"),
        };
        let k = 2.0 * g / l1.shape().elem_count() as f64;
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(mse_bwd::<f32>(
                contiguous(s1, l1, "fused-mse")?,
                contiguous(s2, l2, "fused-mse")?,
                k,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(mse_bwd::<f64>(
                contiguous(s1, l1, "fused-mse")?,
                contiguous(s2, l2, "fused-mse")?,
                k,
            )),
            _ => bail!("fused-mse-bwd: only f32 and f64 (matching) are supported"),
        };
        Ok((out, Shape::from(2 * l1.shape().elem_count())))
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
        if l1.shape() != l2.shape() {
            bail!("{op}: shape mismatch {:?} vs {:?}", l1.shape(), l2.shape());
        }
        if s3.dtype() != s1.dtype() || l3.shape().elem_count() != 1 {
            bail!(
                "{op}: the upstream gradient must be one {:?} value",
                s1.dtype()
            );
        }
        let (dev, n) = (&s1.device, l1.shape().elem_count());
        let out = dispatch!(op, s1.dtype(), |T| {
            let (a, b) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let g = cuda::view::<T>(s3, l3, op)?;
            let mut out = cuda::alloc::<T>(dev, 2 * n, op)?;
            launch!(CUDA.func::<T>(dev, "mse_bwd")?, cuda::elementwise(n);
                &a, &b, &g, &mut out, &n);
            cuda::wrap(out, dev)
        });
        Ok((out, Shape::from(2 * n)))
    }
}
