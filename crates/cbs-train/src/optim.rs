//! AdamW whose moment buffers can be saved and restored (candle's own keeps them private,
//! which rules out exact resume). The update is `torch.optim.AdamW`'s, term for term. With
//! the fused kernels it runs as two in-place passes per parameter
//! ([`cbs_kernels::ops::optim`]).
//!
//! Gradient clipping and the non-finite guard are decided on the device: [`grad_sums`] and
//! [`step_control`] give the step's control tensor (`[grad_scale, apply, grad_norm]`), which
//! [`AdamW::step_with`] and the EMA read where they run, so a training step never waits for
//! the host.

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};

use crate::Result;
use cbs_kernels::ops::optim::{self as inplace, control_dtype, MomentUpdate, ParamUpdate};
use cbs_models::Kernels;

/// `new` where the control tensor says to apply the step, else `old` (the composed paths'
/// version of the kernels' early return).
pub(crate) fn gate(ctrl: &Tensor, new: &Tensor, old: &Tensor) -> Result<Tensor> {
    let apply = ctrl.narrow(0, 1, 1)?.ne(0.0)?; // [1] u8
    Ok(apply.broadcast_as(new.shape())?.where_cond(new, old)?)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    pub params: AdamWParams,
    /// Number of updates applied so far (bias correction uses it).
    pub step: u64,
    vars: Vec<(String, Var)>,
    /// Per variable `[2, …shape]`: `exp_avg` then `exp_avg_sq` (one buffer, so one in-place
    /// pass updates both).
    moments: Vec<Tensor>,
    /// `Fused`: two in-place passes per parameter on the CPU; `Composed`: tensor ops.
    kernels: Kernels,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|(_, v)| {
                let dims: Vec<usize> = std::iter::once(2).chain(v.dims().iter().copied()).collect();
                Tensor::zeros(dims, v.dtype(), v.device())
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            step: 0,
            vars,
            moments,
            kernels: Kernels::Fused,
        })
    }

    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// One update with learning rate `lr`; gradients are multiplied by `grad_scale` first
    /// (gradient clipping). Variables without a gradient are left untouched (as torch does).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        let Some((_, v)) = self.vars.first() else {
            self.step += 1;
            return Ok(());
        };
        let ctrl = inplace::fixed_control(grad_scale, v.device())?;
        self.step_with(grads, lr, &ctrl)
    }

    /// [`AdamW::step`] with the gradient scale, and whether to apply the update at all, read
    /// from the control tensor `ctrl` on the device ([`step_control`]). A step the control
    /// refuses leaves moments and weights unchanged but still counts in [`AdamW::step`]: the
    /// trainer ends the run before such a state reaches a checkpoint.
    pub fn step_with(&mut self, grads: &GradStore, lr: f64, ctrl: &Tensor) -> Result<()> {
        self.step += 1;
        let AdamWParams {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            // Gradients carry the op graph of the step that made them; keeping them (through
            // the moments) would chain every step's graph to the next and leak memory.
            let g = g.detach();
            let p = var.as_tensor();
            let mv = &self.moments[i];
            let fused = self.kernels == Kernels::Fused;
            if fused && inplace::applies(p) && inplace::applies(mv) && g.dtype() == p.dtype() {
                let g = g.contiguous()?;
                mv.inplace_op3(&g, ctrl, &MomentUpdate { beta1, beta2 })?;
                p.inplace_op3(
                    mv,
                    ctrl,
                    &ParamUpdate {
                        decay: 1.0 - lr * weight_decay,
                        step_size,
                        bc2_sqrt,
                        eps,
                    },
                )?;
                continue;
            }
            let g = g.broadcast_mul(&ctrl.narrow(0, 0, 1)?.to_dtype(g.dtype())?)?;
            let (m0, v0) = (mv.get(0)?, mv.get(1)?);
            let m = ((&m0 * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&v0 * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + eps)?;
            let p0 = p.detach();
            let mut p = p0.clone();
            if weight_decay != 0.0 {
                p = (p * (1.0 - lr * weight_decay))?;
            }
            let p = (p - ((&m / &denom)? * step_size)?)?;
            var.set(&gate(ctrl, &p, &p0)?)?;
            let (m, v) = (gate(ctrl, &m, &m0)?, gate(ctrl, &v, &v0)?);
            self.moments[i] = Tensor::stack(&[m, v], 0)?.detach();
        }
        Ok(())
    }

    /// `exp_avg.<name>` and `exp_avg_sq.<name>` tensors (f32 on the CPU) for a checkpoint.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("exp_avg.{name}"), self.moments[i].get(0)?));
            out.push((format!("exp_avg_sq.{name}"), self.moments[i].get(1)?));
        }
        Ok(out)
    }

    /// Restore the moments saved by [`AdamW::state_tensors`]; `lookup` returns a saved tensor.
    pub fn load_state(
        &mut self,
        step: u64,
        lookup: &dyn Fn(&str) -> Option<Tensor>,
    ) -> std::result::Result<(), String> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let mut parts = Vec::with_capacity(2);
            for prefix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{prefix}.{name}");
                let t = lookup(&key).ok_or_else(|| format!("missing optimizer tensor `{key}`"))?;
                if t.dims() != var.dims() {
                    return Err(format!(
                        "optimizer tensor `{key}` has shape {:?}, parameter has {:?}",
                        t.dims(),
                        var.dims()
                    ));
                }
                parts.push(
                    t.to_dtype(DType::F32)
                        .and_then(|t| t.to_dtype(var.dtype()))
                        .and_then(|t| t.to_device(var.device()))
                        .map_err(|e| e.to_string())?,
                );
            }
            self.moments[i] = Tensor::stack(&parts, 0).map_err(|e| e.to_string())?;
        }
        self.step = step;
        Ok(())
    }
}

/// The squared L2 norm of each gradient present in `grads` for `vars`, in the variables'
/// order, as one `[k]` tensor of [`control_dtype`] on their device (`None` without gradients).
pub fn grad_sums(
    vars: &[(String, Var)],
    grads: &GradStore,
    kernels: Kernels,
) -> Result<Option<Tensor>> {
    let mut sums = Vec::new();
    for (_, v) in vars {
        if let Some(g) = grads.get(v) {
            sums.push(if kernels == Kernels::Fused && inplace::applies(g) {
                inplace::sum_sq_tensor(g)?
            } else {
                g.sqr()?
                    .sum_all()?
                    .to_dtype(control_dtype(g.device()))?
                    .reshape(1)?
            });
        }
    }
    Ok(if sums.is_empty() {
        None
    } else {
        Some(Tensor::cat(&sums, 0)?)
    })
}

/// The step's control tensor `[grad_scale, apply, grad_norm]` from its loss and
/// [`grad_sums`] (see [`cbs_kernels::ops::optim::step_control`]): `apply` when the loss and
/// the gradient norm are finite; the scale clips the norm to `max_norm` (when > 0).
pub fn step_control(
    loss: &Tensor,
    sums: Option<&Tensor>,
    max_norm: f64,
    kernels: Kernels,
) -> Result<Tensor> {
    let dev = loss.device();
    let dt = control_dtype(dev);
    let zero;
    let sums = match sums {
        Some(s) => s,
        None => {
            zero = Tensor::zeros(1, dt, dev)?;
            &zero
        }
    };
    let fused = kernels == Kernels::Fused && inplace::control_applies(dev) && sums.dtype() == dt;
    if fused {
        return Ok(inplace::step_control(loss, sums, max_norm)?);
    }
    // Composed: the same decisions as tensor ops (`0·x = 0` exactly when x is finite).
    let norm = sums.to_dtype(dt)?.sum_all()?.sqrt()?;
    let loss = loss.to_dtype(dt)?.flatten_all()?.sum_all()?;
    let finite = |x: &Tensor| -> Result<Tensor> { Ok(x.affine(0.0, 0.0)?.eq(0.0)?.to_dtype(dt)?) };
    let apply = (finite(&loss)? * finite(&norm)?)?;
    let one = Tensor::ones((), dt, dev)?;
    let scale = if max_norm > 0.0 {
        let clipped = (Tensor::full(max_norm, (), &Device::Cpu)?
            .to_dtype(dt)?
            .to_device(dev)?
            / (&norm + 1e-6)?)?;
        norm.gt(max_norm)?.where_cond(&clipped, &one)?
    } else {
        one
    };
    Ok(Tensor::stack(&[scale, apply, norm], 0)?)
}

/// Global L2 norm of all gradients present in `grads` for `vars`, read back to the host.
pub fn grad_norm(vars: &[(String, Var)], grads: &GradStore, kernels: Kernels) -> Result<f64> {
    Ok(match grad_sums(vars, grads, kernels)? {
        Some(s) => s
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .iter()
            .sum::<f64>()
            .sqrt(),
        None => 0.0,
    })
}
