//! In-place kernels for the per-step parameter passes: AdamW's moment and weight updates, the
//! EMA, and the squared gradient norm. CPU (f32/f64), and CUDA (f32/bf16, f32 arithmetic;
//! `optim.cu`) with the `cuda` feature.
//!
//! Composed from tensor ops, AdamW alone is about fifteen passes over every parameter, each
//! allocating a fresh tensor (measured on sit-s-4: 175 ms of a 2.1 s step, and the EMA 42 ms
//! more). Here each update is one pass that writes into the existing buffers. Arithmetic is in
//! f64 and rounded once per stored value, except the f32 weight update (see `ParamKernel`); the composed versions remain the path on other
//! devices and for non-contiguous or other-dtype tensors ([`applies`]).

use crate::par;
use crate::simd::simd_kernel;
use crate::slices::contiguous;
use candle_core::{
    bail, CpuStorage, DType, Device, InplaceOp2, Layout, Result, Storage, Tensor, WithDType,
};

/// Elements per parallel task: large enough that the split costs nothing next to the work.
const CHUNK: usize = 1 << 15;

/// Whether the in-place kernels handle `t`: contiguous, and on the CPU f32/f64 or (with the
/// `cuda` feature) on CUDA f32/bf16.
pub fn applies(t: &Tensor) -> bool {
    let cpu = matches!(t.device(), Device::Cpu) && matches!(t.dtype(), DType::F32 | DType::F64);
    let cuda = cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), DType::F32 | DType::BF16);
    (cpu || cuda) && t.is_contiguous()
}

/// Runs `f` over matching chunks of `dst` (chunk `CHUNK·w`) and `src` (chunk `CHUNK`), in
/// parallel: `w` destination values per source value.
fn zip_chunks<T: WithDType, S: WithDType>(
    dst: &mut [T],
    w: usize,
    src: &[S],
    f: impl Fn(&mut [T], &[S]) + Sync + Send,
) {
    par::chunks_mut(dst, CHUNK * w, |i, d| {
        f(d, &src[i * CHUNK..src.len().min((i + 1) * CHUNK)])
    });
}

/// Moments stored as one `[2, …]` tensor (first `m`, then `v`): `m ← β₁m + (1−β₁)g'`,
/// `v ← β₂v + (1−β₂)g'²` with `g' = scale·g`.
pub struct MomentUpdate {
    pub beta1: f64,
    pub beta2: f64,
    pub grad_scale: f64,
}

/// `θ ← θ(1 − lr·wd) − step_size · m / (√v / bc2_sqrt + eps)` from the `[2, …]` moments.
pub struct ParamUpdate {
    pub decay: f64,
    pub step_size: f64,
    pub bc2_sqrt: f64,
    pub eps: f64,
}

/// `e ← decay·e + (1 − decay)·θ`.
pub struct EmaUpdate {
    pub decay: f64,
}

fn moments<T: WithDType>(mv: &mut [T], g: &[T], u: &MomentUpdate) -> Result<()> {
    let n = g.len();
    if mv.len() != 2 * n {
        bail!(
            "adamw moments: {} values for a {n}-element gradient",
            mv.len()
        );
    }
    let (m, v) = mv.split_at_mut(n);
    let (b1, b2, s) = (u.beta1, u.beta2, u.grad_scale);
    par::chunks_mut2(m, CHUNK, v, CHUNK, |i, m, v| {
        moments_chunk(m, v, &g[i * CHUNK..][..m.len()], b1, b2, s)
    });
    Ok(())
}

simd_kernel! {
    fn moments_chunk<T: WithDType>(m: &mut [T], v: &mut [T], g: &[T], b1: f64, b2: f64, s: f64) {
        for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
            let g = s * g.to_f64();
            *m = T::from_f64(b1 * m.to_f64() + (1.0 - b1) * g);
            *v = T::from_f64(b2 * v.to_f64() + (1.0 - b2) * g * g);
        }
    }
}

fn params<T: ParamKernel>(p: &mut [T], mv: &[T], u: &ParamUpdate) -> Result<()> {
    let n = p.len();
    if mv.len() != 2 * n {
        bail!(
            "adamw update: {} moment values for {n} parameters",
            mv.len()
        );
    }
    let (m, v) = mv.split_at(n);
    par::chunks_mut(p, CHUNK, |i, p| {
        let (m, v) = (&m[i * CHUNK..][..p.len()], &v[i * CHUNK..][..p.len()]);
        T::update(p, m, v, u)
    });
    Ok(())
}

/// The weight update's arithmetic per storage type: f64 for f64; for f32 in f32, as
/// PyTorch's AdamW does it (a square root and a division per value: in f64 this pass took
/// 3% of a sit-s-4 step, twice the moment update's).
trait ParamKernel: WithDType {
    fn update(p: &mut [Self], m: &[Self], v: &[Self], u: &ParamUpdate);
}

impl ParamKernel for f64 {
    fn update(p: &mut [f64], m: &[f64], v: &[f64], u: &ParamUpdate) {
        params_chunk(p, m, v, u.decay, u.step_size, u.bc2_sqrt, u.eps)
    }
}

impl ParamKernel for f32 {
    fn update(p: &mut [f32], m: &[f32], v: &[f32], u: &ParamUpdate) {
        let f = |x: f64| x as f32;
        params_chunk_f32(p, m, v, f(u.decay), f(u.step_size), f(u.bc2_sqrt), f(u.eps))
    }
}

simd_kernel! {
    fn params_chunk_f32(
        p: &mut [f32],
        m: &[f32],
        v: &[f32],
        decay: f32,
        step_size: f32,
        bc2_sqrt: f32,
        eps: f32
    ) {
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            *p = *p * decay - step_size * m / (v.sqrt() / bc2_sqrt + eps);
        }
    }
}

simd_kernel! {
    fn params_chunk<T: WithDType>(
        p: &mut [T],
        m: &[T],
        v: &[T],
        decay: f64,
        step_size: f64,
        bc2_sqrt: f64,
        eps: f64
    ) {
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            let denom = v.to_f64().sqrt() / bc2_sqrt + eps;
            *p = T::from_f64(p.to_f64() * decay - step_size * m.to_f64() / denom);
        }
    }
}

fn ema<T: WithDType>(e: &mut [T], p: &[T], u: &EmaUpdate) -> Result<()> {
    if e.len() != p.len() {
        bail!(
            "ema: {} averaged values for {} parameters",
            e.len(),
            p.len()
        );
    }
    let d = u.decay;
    zip_chunks(e, 1, p, |e, p| ema_chunk(e, p, d));
    Ok(())
}

simd_kernel! {
    fn ema_chunk<T: WithDType>(e: &mut [T], p: &[T], d: f64) {
        for (e, &p) in e.iter_mut().zip(p) {
            *e = T::from_f64(d * e.to_f64() + (1.0 - d) * p.to_f64());
        }
    }
}

fn offsets(l: &Layout, op: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(o) => Ok(o),
        None => bail!("{op}: tensors must be contiguous"),
    }
}

macro_rules! inplace_op {
    ($ty:ty, $name:literal, $kernel:ident, $cuda:ident) => {
        impl InplaceOp2 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                dst: &mut CpuStorage,
                dst_l: &Layout,
                src: &CpuStorage,
                src_l: &Layout,
            ) -> Result<()> {
                let op = $name;
                let (a, b) = offsets(dst_l, op)?;
                let (c, d) = offsets(src_l, op)?;
                match (dst, src) {
                    (CpuStorage::F32(x), CpuStorage::F32(y)) => {
                        $kernel(&mut x[a..b], &y[c..d], self)
                    }
                    (CpuStorage::F64(x), CpuStorage::F64(y)) => {
                        $kernel(&mut x[a..b], &y[c..d], self)
                    }
                    _ => bail!("{op}: only f32 and f64 (matching) are supported"),
                }
            }

            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                dst: &mut candle_core::CudaStorage,
                dst_l: &Layout,
                src: &candle_core::CudaStorage,
                src_l: &Layout,
            ) -> Result<()> {
                gpu::$cuda(self, dst, dst_l, src, src_l)
            }
        }
    };
}

inplace_op!(MomentUpdate, "adamw-moments", moments, moments);
inplace_op!(ParamUpdate, "adamw-update", params, params);
inplace_op!(EmaUpdate, "ema-update", ema, ema);

/// `Σ g²` in f64 over a CPU or CUDA tensor (any layout is made contiguous first; on CUDA, f32
/// per-block partial sums added on the host in f64).
pub fn sum_sq(g: &Tensor) -> Result<f64> {
    let g = g.contiguous()?;
    let (storage, layout) = g.storage_and_layout();
    simd_kernel! {
        /// Eight interleaved partial sums, so the loop vectorises.
        fn chunk_sum_sq<T: WithDType>(c: &[T]) -> f64 {
            let mut acc = [0.0f64; 8];
            let split = c.len() - c.len() % 8;
            for x in c[..split].chunks_exact(8) {
                for l in 0..8 {
                    acc[l] += x[l].to_f64() * x[l].to_f64();
                }
            }
            let tail: f64 = c[split..].iter().map(|v| v.to_f64() * v.to_f64()).sum();
            acc.iter().sum::<f64>() + tail
        }
    }
    fn sum<T: WithDType>(x: &[T]) -> f64 {
        // Chunk sums added in chunk order: the norm does not depend on thread timing.
        par::map(x.len().div_ceil(CHUNK), |i| {
            chunk_sum_sq(&x[i * CHUNK..x.len().min((i + 1) * CHUNK)])
        })
        .iter()
        .sum()
    }
    #[cfg(feature = "cuda")]
    if let Storage::Cuda(s) = &*storage {
        return gpu::sum_sq(s, layout);
    }
    let Storage::Cpu(s) = &*storage else {
        bail!("sum_sq: CPU tensors only");
    };
    Ok(match s {
        CpuStorage::F32(_) => sum(contiguous::<f32>(s, layout, "sum_sq")?),
        CpuStorage::F64(_) => sum(contiguous::<f64>(s, layout, "sum_sq")?),
        _ => bail!("sum_sq: only f32 and f64 are supported"),
    })
}

/// The CUDA versions of the in-place passes: one grid-stride kernel each, writing into the
/// destination's buffer.
#[cfg(feature = "cuda")]
mod gpu {
    use super::{offsets, EmaUpdate, MomentUpdate, ParamUpdate};
    use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage};
    use candle_core::{bail, Layout, Result};

    const CUDA: cuda::Module = cuda::ptx_module!("optim");

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

    pub(super) fn moments(
        u: &MomentUpdate,
        dst: &mut CudaStorage,
        dst_l: &Layout,
        src: &CudaStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let op = "adamw-moments";
        let ((a, b), n) = range(op, dst_l, src_l, (2, 1))?;
        let dev = dst.device.clone();
        let (b1, b2, s) = (u.beta1 as f32, u.beta2 as f32, u.grad_scale as f32);
        let (c1, c2) = ((1.0 - u.beta1) as f32, (1.0 - u.beta2) as f32);
        dispatch!(op, dst.dtype(), |T| {
            let g = cuda::view::<T>(src, src_l, op)?;
            let mut mv = dst.as_cuda_slice_mut::<T>()?.slice_mut(a..b);
            launch!(CUDA.func::<T>(&dev, "adamw_moments")?, cuda::elementwise(n);
                &mut mv, &g, &n, &b1, &c1, &b2, &c2, &s);
        });
        Ok(())
    }

    pub(super) fn params(
        u: &ParamUpdate,
        dst: &mut CudaStorage,
        dst_l: &Layout,
        src: &CudaStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let op = "adamw-update";
        let ((a, b), n) = range(op, dst_l, src_l, (1, 2))?;
        let dev = dst.device.clone();
        let f = |x: f64| x as f32;
        let (decay, step, bc2, eps) = (f(u.decay), f(u.step_size), f(u.bc2_sqrt), f(u.eps));
        dispatch!(op, dst.dtype(), |T| {
            let mv = cuda::view::<T>(src, src_l, op)?;
            let mut p = dst.as_cuda_slice_mut::<T>()?.slice_mut(a..b);
            launch!(CUDA.func::<T>(&dev, "adamw_params")?, cuda::elementwise(n);
                &mut p, &mv, &n, &decay, &step, &bc2, &eps);
        });
        Ok(())
    }

    pub(super) fn ema(
        u: &EmaUpdate,
        dst: &mut CudaStorage,
        dst_l: &Layout,
        src: &CudaStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let op = "ema-update";
        let ((a, b), n) = range(op, dst_l, src_l, (1, 1))?;
        let dev = dst.device.clone();
        let (d, c) = (u.decay as f32, (1.0 - u.decay) as f32);
        dispatch!(op, dst.dtype(), |T| {
            let p = cuda::view::<T>(src, src_l, op)?;
            let mut e = dst.as_cuda_slice_mut::<T>()?.slice_mut(a..b);
            launch!(CUDA.func::<T>(&dev, "ema_update")?, cuda::elementwise(n);
                &mut e, &p, &n, &d, &c);
        });
        Ok(())
    }

    pub(super) fn sum_sq(s: &CudaStorage, l: &Layout) -> Result<f64> {
        let op = "sum_sq";
        let n = l.shape().elem_count();
        if n == 0 {
            return Ok(0.0);
        }
        let cfg = cuda::elementwise(n);
        let dev = &s.device;
        let part = dispatch!(op, s.dtype(), |T| {
            let x = cuda::view::<T>(s, l, op)?;
            let mut part = cuda::scratch(dev, cfg.grid_dim.0 as usize, op)?;
            launch!(CUDA.func::<T>(dev, "sum_sq_partial")?, cfg; &x, &mut part, &n);
            part
        });
        Ok(dev.clone_dtoh(&part)?.iter().map(|&v| v as f64).sum())
    }
}
