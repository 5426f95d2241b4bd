//! The CUDA side of `optim.rs`: one grid-stride kernel per in-place pass (`optim.cu`), writing
//! into the destination's buffer, each reading the step's control tensor on the device; the
//! squared norm as per-block partials summed by one block; the control values by one thread.

#![cfg(feature = "cuda")]

use super::optim::{EmaUpdate, MomentUpdate, ParamUpdate, CONTROL_LEN};
use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage};
use candle_core::{bail, DType, Layout, Result};

const CUDA: cuda::Module = cuda::ptx_module!("optim");

fn offsets(l: &Layout, op: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(o) => Ok(o),
        None => bail!("{op}: tensors must be contiguous"),
    }
}

/// The destination's offset range and the element count `n` of the smaller tensor, after
/// checking that the destination has `dst_per_n` values per `n` and the source `src_per_n`.
fn range(
    op: &str,
    dst: &Layout,
    src: &Layout,
    (dst_per_n, src_per_n): (usize, usize),
) -> Result<((usize, usize), usize)> {
    let (d, s) = (offsets(dst, op)?, offsets(src, op)?);
    let (nd, ns) = (d.1 - d.0, s.1 - s.0);
    if nd * src_per_n != ns * dst_per_n {
        bail!("{op}: {nd} destination values for {ns} source values");
    }
    Ok((d, nd / dst_per_n))
}

/// The control tensor as the kernels read it: `CONTROL_LEN` contiguous f32 values.
fn control<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<cuda::CudaView<'a, f32>> {
    if s.dtype() != DType::F32 || l.shape().elem_count() != CONTROL_LEN {
        bail!(
            "{op}: the control tensor must be {CONTROL_LEN} f32 values on CUDA, got {:?} {:?}",
            s.dtype(),
            l.dims()
        );
    }
    cuda::view::<f32>(s, l, op)
}

pub(super) fn moments(
    u: &MomentUpdate,
    dst: &mut CudaStorage,
    dst_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    ctrl: &CudaStorage,
    ctrl_l: &Layout,
) -> Result<()> {
    let op = "adamw-moments";
    let ((a, b), n) = range(op, dst_l, src_l, (2, 1))?;
    let dev = dst.device.clone();
    let (b1, b2) = (u.beta1 as f32, u.beta2 as f32);
    let (c1, c2) = ((1.0 - u.beta1) as f32, (1.0 - u.beta2) as f32);
    let c = control(ctrl, ctrl_l, op)?;
    dispatch!(op, dst.dtype(), |T| {
        let g = cuda::view::<T>(src, src_l, op)?;
        let mut mv = dst.as_cuda_slice_mut::<T>()?.slice_mut(a..b);
        launch!(CUDA.func::<T>(&dev, "adamw_moments")?, cuda::elementwise(n);
            &mut mv, &g, &n, &b1, &c1, &b2, &c2, &c);
    });
    Ok(())
}

pub(super) fn params(
    u: &ParamUpdate,
    dst: &mut CudaStorage,
    dst_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    ctrl: &CudaStorage,
    ctrl_l: &Layout,
) -> Result<()> {
    let op = "adamw-update";
    let ((a, b), n) = range(op, dst_l, src_l, (1, 2))?;
    let dev = dst.device.clone();
    let f = |x: f64| x as f32;
    let (decay, step, bc2, eps) = (f(u.decay), f(u.step_size), f(u.bc2_sqrt), f(u.eps));
    let c = control(ctrl, ctrl_l, op)?;
    dispatch!(op, dst.dtype(), |T| {
        let mv = cuda::view::<T>(src, src_l, op)?;
        let mut p = dst.as_cuda_slice_mut::<T>()?.slice_mut(a..b);
        launch!(CUDA.func::<T>(&dev, "adamw_params")?, cuda::elementwise(n);
            &mut p, &mv, &n, &decay, &step, &bc2, &eps, &c);
    });
    Ok(())
}

pub(super) fn ema(
    u: &EmaUpdate,
    dst: &mut CudaStorage,
    dst_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    ctrl: &CudaStorage,
    ctrl_l: &Layout,
) -> Result<()> {
    let op = "ema-update";
    let ((a, b), n) = range(op, dst_l, src_l, (1, 1))?;
    let dev = dst.device.clone();
    let (d, c1) = (u.decay as f32, (1.0 - u.decay) as f32);
    let c = control(ctrl, ctrl_l, op)?;
    dispatch!(op, dst.dtype(), |T| {
        let p = cuda::view::<T>(src, src_l, op)?;
        let mut e = dst.as_cuda_slice_mut::<T>()?.slice_mut(a..b);
        launch!(CUDA.func::<T>(&dev, "ema_update")?, cuda::elementwise(n);
            &mut e, &p, &n, &d, &c1, &c);
    });
    Ok(())
}

/// One block's launch shape for the final, ordered sums.
fn one_block() -> cuda::LaunchConfig {
    cuda::LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `Σ x²` into a new one-element f32 tensor.
pub(super) fn sum_sq(s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let op = "sum_sq";
    let n = l.shape().elem_count();
    let dev = &s.device;
    if n == 0 {
        return Ok(cuda::wrap(dev.alloc_zeros::<f32>(1)?, dev));
    }
    let mut out = cuda::alloc::<f32>(dev, 1, op)?;
    let cfg = cuda::elementwise(n);
    let parts = cfg.grid_dim.0 as usize;
    dispatch!(op, s.dtype(), |T| {
        let x = cuda::view::<T>(s, l, op)?;
        let mut part = cuda::scratch(dev, parts, op)?;
        launch!(CUDA.func::<T>(dev, "sum_sq_partial")?, cfg; &x, &mut part, &n);
        launch!(CUDA.func::<f32>(dev, "sum_final")?, one_block(); &part, &parts, &mut out);
    });
    Ok(cuda::wrap(out, dev))
}

/// The `[grad_scale, apply, grad_norm]` control values (one thread; the sums added in order).
pub(super) fn step_control(
    max_norm: f64,
    loss: &CudaStorage,
    loss_l: &Layout,
    sums: &CudaStorage,
    sums_l: &Layout,
) -> Result<CudaStorage> {
    let op = "step-control";
    if loss_l.shape().elem_count() != 1 {
        bail!(
            "{op}: the loss must be one value, got shape {:?}",
            loss_l.dims()
        );
    }
    if sums.dtype() != DType::F32 {
        bail!(
            "{op}: the squared norms must be f32 on CUDA, got {:?}",
            sums.dtype()
        );
    }
    let dev = &loss.device;
    let k = sums_l.shape().elem_count();
    let s = cuda::view::<f32>(sums, sums_l, op)?;
    let mut out = cuda::alloc::<f32>(dev, CONTROL_LEN, op)?;
    let max_norm = max_norm as f32;
    let single = cuda::LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    dispatch!(op, loss.dtype(), |T| {
        let l = cuda::view::<T>(loss, loss_l, op)?;
        launch!(CUDA.func::<T>(dev, "step_control")?, single; &l, &s, &k, &max_norm, &mut out);
    });
    Ok(cuda::wrap(out, dev))
}
