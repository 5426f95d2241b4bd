//! Classifier-free guidance as a velocity-field wrapper.

use candle_core::{DType, Device, Result, Tensor};

use crate::VelocityField;

/// `v = v_uncond + s·(v_cond − v_uncond)` on all channels.
///
/// Conditional and unconditional passes share one batch of size `2B` (labels, then null
/// labels). With `scale == 1`, or without labels, it is the plain conditional field.
/// With an `interval` `(lo, hi)`, guidance applies only for `lo < t < hi` (JiT samples with
/// `(0.1, 1.0)`) and the plain conditional field is used elsewhere.
pub struct Guided<F> {
    pub inner: F,
    pub scale: f64,
    pub interval: Option<(f64, f64)>,
}

impl<F> Guided<F> {
    /// Guidance on the whole time range.
    pub fn new(inner: F, scale: f64) -> Self {
        Self {
            inner,
            scale,
            interval: None,
        }
    }
}

impl<F: VelocityField> Guided<F> {
    /// The guided velocity, with guidance on when `inside` (of the interval).
    fn guided(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>, inside: bool) -> Result<Tensor> {
        let (Some(y), Some(null)) = (y, self.inner.null_class()) else {
            return self.inner.velocity(x, t, y);
        };
        if self.scale == 1.0 || !inside {
            return self.inner.velocity(x, t, Some(y));
        }
        let b = x.dim(0)?;
        let x2 = Tensor::cat(&[x, x], 0)?;
        let t2 = Tensor::cat(&[t, t], 0)?;
        let nulls = Tensor::full(null, b, y.device())?;
        let y2 = Tensor::cat(&[y, &nulls], 0)?;
        let v = self.inner.velocity(&x2, &t2, Some(&y2))?;
        let v_cond = v.narrow(0, 0, b)?;
        let v_uncond = v.narrow(0, b, b)?;
        &v_uncond + ((v_cond - &v_uncond)? * self.scale)?
    }

    fn inside(&self, t0: f64) -> bool {
        self.interval.is_none_or(|(lo, hi)| lo < t0 && t0 < hi)
    }
}

impl<F: VelocityField> VelocityField for Guided<F> {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let inside = match (self.interval, y) {
            // Every sample of a sampling batch shares one time; the first one decides (read
            // back from the device: samplers call `velocity_shared` instead).
            (Some(_), Some(_)) => {
                let t0 = t.flatten_all()?.get(0)?.to_dtype(DType::F64)?;
                self.inside(t0.to_scalar::<f64>()?)
            }
            _ => true,
        };
        self.guided(x, t, y, inside)
    }

    fn velocity_shared(
        &self,
        x: &Tensor,
        t: &Tensor,
        t_host: f64,
        y: Option<&Tensor>,
    ) -> Result<Tensor> {
        // The time as the device holds it (rounded to the state's dtype), so the interval
        // decides exactly as `velocity` does; rounded on the CPU, no device read.
        let t0 = Tensor::new(t_host, &Device::Cpu)?
            .to_dtype(t.dtype())?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        self.guided(x, t, y, self.inside(t0))
    }

    fn null_class(&self) -> Option<u32> {
        self.inner.null_class()
    }
}
