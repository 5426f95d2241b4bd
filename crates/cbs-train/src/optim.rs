//! AdamW whose moment buffers can be saved and restored (candle's own keeps them private,
//! which rules out exact resume). The update is `torch.optim.AdamW`'s, term for term. On the
//! CPU it runs as two in-place passes per parameter ([`cbs_kernels::ops::optim`]).

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::Result;
use cbs_kernels::ops::optim::{self as inplace, MomentUpdate, ParamUpdate};
use cbs_models::Kernels;

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
                mv.inplace_op2(
                    &g,
                    &MomentUpdate {
                        beta1,
                        beta2,
                        grad_scale,
                    },
                )?;
                p.inplace_op2(
                    mv,
                    &ParamUpdate {
                        decay: 1.0 - lr * weight_decay,
                        step_size,
                        bc2_sqrt,
                        eps,
                    },
                )?;
                continue;
            }
            let g = if grad_scale != 1.0 {
                (g * grad_scale)?
            } else {
                g
            };
            let m = ((mv.get(0)? * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((mv.get(1)? * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + eps)?;
            let mut p = p.detach();
            if weight_decay != 0.0 {
                p = (p * (1.0 - lr * weight_decay))?;
            }
            let p = (p - ((&m / &denom)? * step_size)?)?;
            var.set(&p)?;
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

/// Global L2 norm of all gradients present in `grads` for `vars`.
pub fn grad_norm(vars: &[(String, Var)], grads: &GradStore, kernels: Kernels) -> Result<f64> {
    let mut sum = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v) {
            if kernels == Kernels::Fused && inplace::applies(g) {
                sum += inplace::sum_sq(g)?;
                continue;
            }
            sum += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    Ok(sum.sqrt())
}
