//! The linear interpolant and the velocity regression loss.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `x_t = t·x1 + (1 − t)·x0`, with `t` of shape `[B]` broadcast over the remaining dims.
pub fn interpolate(x0: &Tensor, x1: &Tensor, t: &Tensor) -> Result<Tensor> {
    let t = expand_time(t, x1)?;
    // x0 + t·(x1 − x0) is the same point with one fewer broadcast multiply.
    x0.add(&x1.sub(x0)?.broadcast_mul(&t)?)
}

/// The regression target of the linear path: `x1 − x0`.
pub fn target_velocity(x0: &Tensor, x1: &Tensor) -> Result<Tensor> {
    x1.sub(x0)
}

/// Mean squared error over all elements. On the CPU (f32/f64) one fused pass with a
/// hand-written backward ([`mse_fused`]) unless `CBS_FUSED=0`; elsewhere [`mse_composed`].
pub fn velocity_mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let fusable = |t: &Tensor| t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64);
    if fused_enabled() && fusable(pred) && fusable(target) && pred.elem_count() > 0 {
        mse_fused(pred, target)
    } else {
        mse_composed(pred, target)
    }
}

/// `CBS_FUSED=0` turns the fused kernels off (the same switch as `cbs_models::nn`).
fn fused_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CBS_FUSED").map_or(true, |v| v != "0"))
}

/// Mean over all elements of `(a − b)²`, op by op (any device; the reference for the fused one).
pub fn mse_composed(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.sub(b)?.sqr()?.mean_all()
}

/// Mean over all elements of `(a − b)²` as one CPU kernel (f32/f64, sums in f64) whose
/// backward gives both inputs their gradient in one pass: `da = 2·g·(a − b)/n = −db`.
/// No gradient of the gradient.
pub fn mse_fused(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("mse: shape mismatch {:?} vs {:?}", a.shape(), b.shape());
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, Mse)
}

/// Forward: (a, b) → scalar mean of `(a − b)²`.
struct Mse;
/// Backward: (a, b) → `[2, …]` packed (da, db) for the upstream scalar gradient `.0`.
struct MseBwd(f64);

fn slices<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((lo, hi)) => Ok(&s.as_slice::<T>()?[lo..hi]),
        None => bail!("mse: input must be contiguous"),
    }
}

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
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(vec![mse_fwd::<f32>(slices(s1, l1)?, slices(s2, l2)?)])
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(vec![mse_fwd::<f64>(slices(s1, l1)?, slices(s2, l2)?)])
            }
            _ => bail!("fused-mse: only f32 and f64 (matching) are supported"),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let k = 2.0 * g / a.elem_count() as f64;
        let packed = a.apply_op2_no_bwd(b, &MseBwd(k))?;
        let n = a.elem_count();
        let da = packed.narrow(0, 0, n)?.reshape(a.shape())?;
        let db = packed.narrow(0, n, n)?.reshape(b.shape())?;
        Ok((Some(da), Some(db)))
    }
}

impl CustomOp2 for MseBwd {
    fn name(&self) -> &'static str {
        "fused-mse-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(mse_bwd::<f32>(slices(s1, l1)?, slices(s2, l2)?, self.0))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(mse_bwd::<f64>(slices(s1, l1)?, slices(s2, l2)?, self.0))
            }
            _ => bail!("fused-mse-bwd: only f32 and f64 (matching) are supported"),
        };
        Ok((out, Shape::from(2 * l1.shape().elem_count())))
    }
}

/// Reshape `[B]` times to `[B, 1, …, 1]` matching the rank of `like`.
pub fn expand_time(t: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mut dims = vec![1usize; like.rank()];
    dims[0] = t.dim(0)?;
    t.reshape(dims)
}
