//! Flow-matching building blocks shared by every stage of `cbs`.
//!
//! Conventions (see `docs/ARCHITECTURE.md`): time `t ∈ [0, 1]`, `t = 0` is noise `x0 ~ N(0, I)`,
//! `t = 1` is data `x1`; the linear interpolant is `x_t = t·x1 + (1 − t)·x0` and the regression
//! target is the velocity `x1 − x0`. Sampling integrates `dx/dt = v(x, t)` from 0 to 1.
//!
//! - [`VelocityField`]: anything that maps `(x, t, y)` to a velocity — trained networks, the
//!   closed-form Gaussian-mixture oracle, a set of time-specialised experts.
//! - [`interpolant`]: forming `x_t` and the target, and the velocity MSE; [`path`]: the
//!   linear, GVP and VP paths (`x_t = α·x1 + σ·x0`) a run trains on.
//! - [`solver`]: fixed-step Euler and Heun integrators over an explicit time grid, and
//!   [`adaptive`]'s Dormand–Prince 5(4) within each grid interval; [`sde`]: Euler–Maruyama
//!   sampling of SiT's SDE on the same grids.

pub mod adaptive;
pub mod guidance;
pub mod interpolant;
pub mod path;
pub mod sde;
pub mod solver;

use candle_core::{Result, Tensor};

/// A time-dependent velocity field `v(x, t, y)`.
///
/// - `x`: `[B, ...]` state (images `[B, C, H, W]`, points `[B, D]`), float dtype.
/// - `t`: `[B]` times in `[0, 1]`, same dtype as `x`.
/// - `y`: optional `[B]` class labels (`u32`); the null (unconditional) class is
///   [`VelocityField::null_class`] when the field is class-conditional.
///
/// Implementations must be differentiable with respect to `x` (candle autograd), so that
/// vector–Jacobian products (`x` as a `Var`, backward of `(v · ε).sum()`) give `Jᵀε`.
pub trait VelocityField {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor>;

    /// [`VelocityField::velocity`] when every sample shares one time, `t_host`, which the
    /// caller (a sampler) knows on the host: a field that branches on the time (a guidance
    /// interval) reads it from here instead of waiting for the device. `t` holds `t_host`
    /// rounded to `x`'s dtype.
    fn velocity_shared(
        &self,
        x: &Tensor,
        t: &Tensor,
        t_host: f64,
        y: Option<&Tensor>,
    ) -> Result<Tensor> {
        let _ = t_host;
        self.velocity(x, t, y)
    }

    /// Label of the null class used for classifier-free guidance, if the field is conditional.
    fn null_class(&self) -> Option<u32> {
        None
    }
}

impl<T: VelocityField + ?Sized> VelocityField for &T {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        (**self).velocity(x, t, y)
    }
    fn velocity_shared(
        &self,
        x: &Tensor,
        t: &Tensor,
        t_host: f64,
        y: Option<&Tensor>,
    ) -> Result<Tensor> {
        (**self).velocity_shared(x, t, t_host, y)
    }
    fn null_class(&self) -> Option<u32> {
        (**self).null_class()
    }
}

impl<T: VelocityField + ?Sized> VelocityField for Box<T> {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        (**self).velocity(x, t, y)
    }
    fn velocity_shared(
        &self,
        x: &Tensor,
        t: &Tensor,
        t_host: f64,
        y: Option<&Tensor>,
    ) -> Result<Tensor> {
        (**self).velocity_shared(x, t, t_host, y)
    }
    fn null_class(&self) -> Option<u32> {
        (**self).null_class()
    }
}
