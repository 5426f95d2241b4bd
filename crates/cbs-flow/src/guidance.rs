//! Classifier-free guidance as a velocity-field wrapper.

use candle_core::{Result, Tensor};

use crate::VelocityField;

/// `v = v_uncond + s·(v_cond − v_uncond)` on all channels.
///
/// Conditional and unconditional passes share one batch of size `2B` (labels, then null
/// labels). With `scale == 1`, or without labels, it is the plain conditional field.
pub struct Guided<F> {
    pub inner: F,
    pub scale: f64,
}

impl<F: VelocityField> VelocityField for Guided<F> {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let (Some(y), Some(null)) = (y, self.inner.null_class()) else {
            return self.inner.velocity(x, t, y);
        };
        if self.scale == 1.0 {
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

    fn null_class(&self) -> Option<u32> {
        self.inner.null_class()
    }
}
