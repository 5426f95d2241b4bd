//! In-place kernels for the per-step parameter passes: AdamW's moment and weight updates, the
//! EMA, and the gradient norm with its clipping decision. CPU (f32/f64), and CUDA (f32/bf16,
//! f32 arithmetic; `optim.cu`, launched from `optim_cuda.rs`) with the `cuda` feature.
//!
//! Composed from tensor ops, AdamW alone is about fifteen passes over every parameter, each
//! allocating a fresh tensor (measured on sit-s-4: 175 ms of a 2.1 s step, and the EMA 42 ms
//! more). Here each update is one pass that writes into the existing buffers. Arithmetic is in
//! f64 and rounded once per stored value, except the f32 weight update (see `ParamKernel`);
//! the composed versions remain the path on other devices and for non-contiguous or
//! other-dtype tensors ([`applies`]).
//!
//! **No host round trip per step.** The gradient norm, the clipping scale and whether the step
//! may be applied at all (loss and norm finite) are computed on the device into a small
//! *control* tensor ([`step_control`]: `[grad_scale, apply, grad_norm]`), which the update
//! kernels read where they run: a non-finite step leaves moments, weights and EMA untouched
//! without the host having looked at a single value. The trainer reads the step's numbers back
//! only at its logging intervals.

use crate::par;
use crate::simd::simd_kernel;
use crate::slices::contiguous;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Device, InplaceOp3, Layout, Result, Shape,
    Tensor, WithDType,
};

/// Elements per parallel task: large enough that the split costs nothing next to the work.
const CHUNK: usize = 1 << 15;

/// Values of a control tensor: `[grad_scale, apply (1 or 0), grad_norm]`.
pub const CONTROL_LEN: usize = 3;

/// The dtype of control tensors and squared-norm partials on `device`: f64 on the CPU (the
/// norm and clipping scale as exact as the f64 host arithmetic they replace), f32 on CUDA
/// (what the kernels read).
pub fn control_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F64
    } else {
        DType::F32
    }
}

/// Whether [`step_control`] and [`sum_sq_tensor`] have a kernel for `device` (the CPU, and
/// CUDA with the `cuda` feature).
pub fn control_applies(device: &Device) -> bool {
    device.is_cpu() || (cfg!(feature = "cuda") && device.is_cuda())
}

/// A control tensor that always applies the update, with gradients scaled by `grad_scale`.
pub fn fixed_control(grad_scale: f64, device: &Device) -> Result<Tensor> {
    Tensor::new(&[grad_scale, 1.0, 0.0], &Device::Cpu)?
        .to_dtype(control_dtype(device))?
        .to_device(device)
}

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
/// `v ← β₂v + (1−β₂)g'²` with `g' = grad_scale·g`, the scale taken from the control tensor.
pub struct MomentUpdate {
    pub beta1: f64,
    pub beta2: f64,
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

fn moments<T: WithDType>(mv: &mut [T], g: &[T], u: &MomentUpdate, scale: f64) -> Result<()> {
    let n = g.len();
    if mv.len() != 2 * n {
        bail!(
            "adamw moments: {} values for a {n}-element gradient",
            mv.len()
        );
    }
    let (m, v) = mv.split_at_mut(n);
    let (b1, b2, s) = (u.beta1, u.beta2, scale);
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

fn params<T: ParamKernel>(p: &mut [T], mv: &[T], u: &ParamUpdate, _: f64) -> Result<()> {
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

fn ema<T: WithDType>(e: &mut [T], p: &[T], u: &EmaUpdate, _: f64) -> Result<()> {
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

/// The gradient scale of a CPU control tensor, or `None` when it says not to apply the step.
fn cpu_control(s: &CpuStorage, l: &Layout, op: &str) -> Result<Option<f64>> {
    let (a, b) = offsets(l, op)?;
    let c: Vec<f64> = match s {
        CpuStorage::F64(x) => x[a..b].to_vec(),
        CpuStorage::F32(x) => x[a..b].iter().map(|&v| f64::from(v)).collect(),
        _ => bail!("{op}: the control tensor must be f32 or f64"),
    };
    if c.len() != CONTROL_LEN {
        bail!(
            "{op}: a control tensor has {CONTROL_LEN} values, got {}",
            c.len()
        );
    }
    Ok((c[1] != 0.0).then_some(c[0]))
}

macro_rules! inplace_op {
    ($ty:ty, $name:literal, $kernel:ident, $cuda:ident) => {
        impl InplaceOp3 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                dst: &mut CpuStorage,
                dst_l: &Layout,
                src: &CpuStorage,
                src_l: &Layout,
                ctrl: &CpuStorage,
                ctrl_l: &Layout,
            ) -> Result<()> {
                let op = $name;
                let Some(scale) = cpu_control(ctrl, ctrl_l, op)? else {
                    return Ok(());
                };
                let (a, b) = offsets(dst_l, op)?;
                let (c, d) = offsets(src_l, op)?;
                match (dst, src) {
                    (CpuStorage::F32(x), CpuStorage::F32(y)) => {
                        $kernel(&mut x[a..b], &y[c..d], self, scale)
                    }
                    (CpuStorage::F64(x), CpuStorage::F64(y)) => {
                        $kernel(&mut x[a..b], &y[c..d], self, scale)
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
                ctrl: &candle_core::CudaStorage,
                ctrl_l: &Layout,
            ) -> Result<()> {
                super::optim_cuda::$cuda(self, dst, dst_l, src, src_l, ctrl, ctrl_l)
            }
        }
    };
}

inplace_op!(MomentUpdate, "adamw-moments", moments, moments);
inplace_op!(ParamUpdate, "adamw-update", params, params);
inplace_op!(EmaUpdate, "ema-update", ema, ema);

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

fn cpu_sum_sq<T: WithDType>(x: &[T]) -> f64 {
    // Chunk sums added in chunk order: the norm does not depend on thread timing.
    par::map(x.len().div_ceil(CHUNK), |i| {
        chunk_sum_sq(&x[i * CHUNK..x.len().min((i + 1) * CHUNK)])
    })
    .iter()
    .sum()
}

/// `Σ g²` in f64 over a CPU or CUDA tensor, read back to the host (any layout is made
/// contiguous first). The trainer keeps the sum on the device instead ([`sum_sq_tensor`]).
pub fn sum_sq(g: &Tensor) -> Result<f64> {
    sum_sq_tensor(g)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()
        .map(|v| v[0])
}

/// `Σ g²` as a one-element tensor on `g`'s device, of the [`control_dtype`]: on the CPU
/// summed in f64 (chunk sums in chunk order), on CUDA per-block f32 partial sums added by one
/// block in a fixed order. Deterministic on both.
pub fn sum_sq_tensor(g: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op1_no_bwd(&SumSq)
}

struct SumSq;

impl CustomOp1 for SumSq {
    fn name(&self) -> &'static str {
        "sum-sq"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let v = match s {
            CpuStorage::F32(_) => cpu_sum_sq(contiguous::<f32>(s, l, "sum_sq")?),
            CpuStorage::F64(_) => cpu_sum_sq(contiguous::<f64>(s, l, "sum_sq")?),
            _ => bail!("sum_sq: only f32 and f64 are supported"),
        };
        Ok((CpuStorage::F64(vec![v]), Shape::from(1)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::optim_cuda::sum_sq(s, l)?, Shape::from(1)))
    }
}

/// The control tensor of one step (`[grad_scale, apply, grad_norm]`, see the module doc) from
/// the step's loss and the per-parameter squared gradient norms `sums` (`[k]`, from
/// [`sum_sq_tensor`]): `grad_norm = √Σ sums` (added in order), `apply` when the loss and the
/// norm are finite, and `grad_scale = max_norm / (grad_norm + 1e-6)` when `max_norm > 0` and
/// the norm exceeds it, else 1 (PyTorch's `clip_grad_norm_`). Computed where the tensors live.
pub fn step_control(loss: &Tensor, sums: &Tensor, max_norm: f64) -> Result<Tensor> {
    loss.contiguous()?
        .apply_op2_no_bwd(&sums.contiguous()?, &StepControl { max_norm })
}

struct StepControl {
    max_norm: f64,
}

/// The scalar arithmetic of [`step_control`], shared with the tests' expectations.
pub fn control_values(loss: f64, sums: impl IntoIterator<Item = f64>, max_norm: f64) -> [f64; 3] {
    let mut sum = 0f64;
    for s in sums {
        sum += s;
    }
    let norm = sum.sqrt();
    let apply = loss.is_finite() && norm.is_finite();
    let scale = if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    };
    [scale, f64::from(u8::from(apply)), norm]
}

impl CustomOp2 for StepControl {
    fn name(&self) -> &'static str {
        "step-control"
    }

    fn cpu_fwd(
        &self,
        loss: &CpuStorage,
        loss_l: &Layout,
        sums: &CpuStorage,
        sums_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        if loss_l.shape().elem_count() != 1 {
            bail!(
                "{op}: the loss must be one value, got shape {:?}",
                loss_l.dims()
            );
        }
        let (a, _) = offsets(loss_l, op)?;
        let loss = match loss {
            CpuStorage::F32(x) => f64::from(x[a]),
            CpuStorage::F64(x) => x[a],
            CpuStorage::BF16(x) => x[a].to_f64(),
            CpuStorage::F16(x) => x[a].to_f64(),
            _ => bail!("{op}: the loss must be a float"),
        };
        let CpuStorage::F64(_) = sums else {
            bail!("{op}: the squared norms must be f64 on the CPU");
        };
        let sums = contiguous::<f64>(sums, sums_l, op)?;
        let c = control_values(loss, sums.iter().copied(), self.max_norm);
        Ok((CpuStorage::F64(c.to_vec()), Shape::from(CONTROL_LEN)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        loss: &candle_core::CudaStorage,
        loss_l: &Layout,
        sums: &candle_core::CudaStorage,
        sums_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = super::optim_cuda::step_control(self.max_norm, loss, loss_l, sums, sums_l)?;
        Ok((out, Shape::from(CONTROL_LEN)))
    }
}
