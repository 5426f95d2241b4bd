//! Exponential moving average of the weights: `ema ← decay·ema + (1 − decay)·θ` every step.

use candle_core::{Tensor, Var};

use crate::Result;
use cbs_kernels::ops::optim::{self as inplace, EmaUpdate};
use cbs_models::Kernels;

pub struct Ema {
    pub decay: f64,
    /// Sorted like the variables it tracks.
    pub tensors: Vec<(String, Tensor)>,
    /// `Fused`: one in-place pass per tensor on the CPU; `Composed`: tensor ops.
    pub kernels: Kernels,
}

impl Ema {
    /// Starts as an exact copy of the weights (as the reference does).
    pub fn new(vars: &[(String, Var)], decay: f64) -> Result<Self> {
        let tensors = vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            tensors,
            kernels: Kernels::Fused,
        })
    }

    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        let Some((_, v)) = vars.first() else {
            return Ok(());
        };
        self.update_with(vars, &inplace::fixed_control(1.0, v.device())?)
    }

    /// [`Ema::update`] when the step's control tensor says the step was applied (see
    /// [`crate::optim::step_control`]); otherwise nothing changes.
    pub fn update_with(&mut self, vars: &[(String, Var)], ctrl: &Tensor) -> Result<()> {
        for ((_, e), (_, v)) in self.tensors.iter_mut().zip(vars) {
            let p = v.as_tensor();
            let fused = self.kernels == Kernels::Fused;
            if fused && inplace::applies(e) && inplace::applies(p) && e.dtype() == p.dtype() {
                e.inplace_op3(p, ctrl, &EmaUpdate { decay: self.decay })?;
                continue;
            }
            // Detached: otherwise each average holds the previous one's op graph, and the
            // whole history stays alive.
            let new = ((&*e * self.decay)? + (v.as_tensor().detach() * (1.0 - self.decay))?)?;
            *e = crate::optim::gate(ctrl, &new, e)?.detach();
        }
        Ok(())
    }
}
