//! AdamW whose moment buffers can be saved and restored (candle's own keeps them private,
//! which rules out exact resume). The update is `torch.optim.AdamW`'s, term for term.

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::Result;

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
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let zeros = |v: &Var| v.zeros_like();
        let exp_avg = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        let exp_avg_sq = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            step: 0,
            vars,
            exp_avg,
            exp_avg_sq,
        })
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
            let g = if grad_scale != 1.0 {
                (g * grad_scale)?
            } else {
                g
            };
            let m = ((&self.exp_avg[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.exp_avg_sq[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + eps)?;
            let mut p = var.as_tensor().detach();
            if weight_decay != 0.0 {
                p = (p * (1.0 - lr * weight_decay))?;
            }
            let p = (p - ((&m / &denom)? * step_size)?)?;
            var.set(&p)?;
            self.exp_avg[i] = m.detach();
            self.exp_avg_sq[i] = v.detach();
        }
        Ok(())
    }

    /// `exp_avg.<name>` and `exp_avg_sq.<name>` tensors (f32 on the CPU) for a checkpoint.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("exp_avg.{name}"), self.exp_avg[i].clone()));
            out.push((format!("exp_avg_sq.{name}"), self.exp_avg_sq[i].clone()));
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
            for (prefix, slot) in [
                ("exp_avg", &mut self.exp_avg[i]),
                ("exp_avg_sq", &mut self.exp_avg_sq[i]),
            ] {
                let key = format!("{prefix}.{name}");
                let t = lookup(&key).ok_or_else(|| format!("missing optimizer tensor `{key}`"))?;
                if t.dims() != var.dims() {
                    return Err(format!(
                        "optimizer tensor `{key}` has shape {:?}, parameter has {:?}",
                        t.dims(),
                        var.dims()
                    ));
                }
                *slot = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.to_dtype(var.dtype()))
                    .and_then(|t| t.to_device(var.device()))
                    .map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Global L2 norm of all gradients present in `grads` for `vars`.
pub fn grad_norm(vars: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut sum = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v) {
            sum += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    Ok(sum.sqrt())
}
