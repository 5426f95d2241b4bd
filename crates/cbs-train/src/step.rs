//! One flow-matching optimisation step: batch in, updated weights and EMA out. Shared by the
//! training loop and `cbs bench train`, so the benchmark times exactly what training runs.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use cbs_flow::interpolant::{expand_time, velocity_mse};
use cbs_flow::path::Interpolant;
use cbs_models::{Architecture, Kernels, Trainable};

use crate::config::TrainSection;
use crate::dist::{Collective, Single};
use crate::ema::Ema;
use crate::optim::{grad_sums, step_control, AdamW, AdamWParams};
use crate::{Result, TrainError};

/// Noise, data, times and labels of one step (`x0`, `x1`: `[B, ...]`, `t`, `y`: `[B]`).
pub struct Batch {
    pub x0: Tensor,
    pub x1: Tensor,
    pub t: Tensor,
    pub y: Tensor,
    /// Seed of the dropout masks of this step (backbones with dropout only).
    pub dropout_seed: u64,
    /// Per-sample loss weights `[B]` (`train.loss_weighting`), `None` for unweighted.
    pub w: Option<Tensor>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepOutcome {
    Updated {
        loss: f64,
        grad_norm: f64,
        /// Each sample's unweighted squared error, mean over its elements (`[B]`): the
        /// per-time-bin losses of `metrics.jsonl`.
        per_sample: Vec<f32>,
    },
    /// The loss or the gradient norm was NaN or infinite; nothing was updated (weights,
    /// moments and EMA are as before the step).
    NonFinite {
        loss: f64,
        /// Set when the loss was finite but the gradient norm was not.
        grad_norm: Option<f64>,
    },
}

/// The numbers of one step, still on the device.
#[derive(Debug)]
pub struct PendingStep {
    /// The batch loss (averaged over the data-parallel group), one value.
    pub loss: Tensor,
    /// `[grad_scale, apply, grad_norm]` ([`crate::optim::step_control`]).
    pub control: Tensor,
    /// Each sample's unweighted squared error, mean over its elements (`[B]`).
    pub per_sample: Tensor,
}

impl PendingStep {
    pub fn read(&self) -> Result<StepOutcome> {
        Ok(read_pending([self])?.remove(0))
    }

    /// `[loss, grad_scale, apply, grad_norm, per_sample…]` in f64 (exact for the f32 values).
    fn row(&self) -> Result<Tensor> {
        Ok(Tensor::cat(
            &[
                self.loss.flatten_all()?.to_dtype(DType::F64)?,
                self.control.to_dtype(DType::F64)?,
                self.per_sample.to_dtype(DType::F64)?,
            ],
            0,
        )?)
    }
}

/// The outcomes of several steps in order, read back in one transfer (one host
/// synchronisation for all of them).
pub fn read_pending<'a>(
    steps: impl IntoIterator<Item = &'a PendingStep>,
) -> Result<Vec<StepOutcome>> {
    let steps: Vec<&PendingStep> = steps.into_iter().collect();
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    let rows = steps.iter().map(|s| s.row()).collect::<Result<Vec<_>>>()?;
    let all = Tensor::cat(&rows, 0)?.to_vec1::<f64>()?;
    let mut at = 0;
    let mut out = Vec::with_capacity(steps.len());
    for s in steps {
        let n = 1 + cbs_kernels::ops::optim::CONTROL_LEN + s.per_sample.elem_count();
        let r = &all[at..at + n];
        at += n;
        let (loss, apply, norm) = (r[0], r[2], r[3]);
        out.push(if !loss.is_finite() {
            StepOutcome::NonFinite {
                loss,
                grad_norm: None,
            }
        } else if apply == 0.0 {
            StepOutcome::NonFinite {
                loss,
                grad_norm: Some(norm),
            }
        } else {
            StepOutcome::Updated {
                loss,
                grad_norm: norm,
                per_sample: r[4..].iter().map(|&v| v as f32).collect(),
            }
        });
    }
    Ok(out)
}

/// Milliseconds spent in each phase of [`Stepper::step_pending`] (accumulated over calls).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseTimes {
    /// Interpolation, forward pass, target, loss.
    pub forward_ms: f64,
    pub backward_ms: f64,
    /// Gradient norm, clipping and the AdamW update.
    pub optimizer_ms: f64,
    pub ema_ms: f64,
}

/// The network, its optimizer and its EMA.
pub struct Stepper {
    pub net: Trainable,
    pub vars: Vec<(String, Var)>,
    pub opt: AdamW,
    pub ema: Ema,
    pub grad_clip: f64,
    /// The run's op implementations (model, loss, optimizer passes).
    pub kernels: Kernels,
    /// The dtype of the forward pass: the variables' own (f32), or half precision with the
    /// variables cast per step.
    pub compute_dtype: DType,
    /// The interpolation path of `x_t` and the target.
    pub path: Interpolant,
    /// Recompute block activations in the backward pass (`train.activation_checkpointing`).
    pub checkpointing: bool,
    /// The data-parallel group: the loss and gradients are averaged over it after the
    /// backward pass ([`Single`]: training on one device).
    pub dist: Arc<dyn Collective>,
}

impl Stepper {
    /// Fresh reference-initialised weights (seed `tc.seed`), AdamW and EMA from `tc`.
    pub fn new(arch: &Architecture, tc: &TrainSection, device: &Device) -> Result<Self> {
        let net = Trainable::new(arch, tc.kernels, tc.seed, DType::F32, device)?;
        let vars = net.named_vars();
        let params = AdamWParams {
            beta1: tc.betas[0],
            beta2: tc.betas[1],
            eps: tc.eps,
            weight_decay: tc.weight_decay,
        };
        let opt = AdamW::new(vars.clone(), params)?.with_kernels(tc.kernels);
        let ema = Ema::new(&vars, tc.ema_decay)?.with_kernels(tc.kernels);
        Ok(Self {
            net,
            vars,
            opt,
            ema,
            grad_clip: tc.grad_clip,
            kernels: tc.kernels,
            compute_dtype: tc.precision.compute_dtype(),
            path: tc.path,
            checkpointing: tc.activation_checkpointing,
            dist: Arc::new(Single),
        })
    }

    /// Replaces the fresh weights by `tc.init_from`'s (when set) and restarts the EMA from
    /// them; returns where they came from. Called on a fresh run only (a resumed run reads its
    /// own checkpoint).
    pub fn init_from(&mut self, tc: &TrainSection) -> Result<Option<String>> {
        let Some(path) = &tc.init_from else {
            return Ok(None);
        };
        // A cbs checkpoint records its path: its velocity is that path's, and fine-tuning it
        // on another would start from the wrong field. (PyTorch files record none.)
        if !cbs_run::torch_checkpoint::is_torch_file(path) {
            let dir = cbs_run::checkpoint::resolve(path)?;
            let cfg =
                crate::config::TrainConfig::from_file(&dir.join(cbs_run::checkpoint::CONFIG_FILE))?;
            if cfg.train.path != tc.path {
                return Err(TrainError::Invalid {
                    field: "train.init_from",
                    value: path.display().to_string(),
                    expected: format!(
                        "a model trained on this run's path ({}); it was trained on {}",
                        tc.path, cfg.train.path
                    ),
                });
            }
        }
        let (tensors, source) =
            cbs_run::torch_checkpoint::load_weights(path, &self.net.arch, tc.init_weights)?;
        for (name, var) in &self.vars {
            // Present: load_weights checked every name and shape against the architecture.
            let t = tensors[name]
                .to_dtype(var.dtype())?
                .to_device(var.device())?;
            var.set(&t)?;
        }
        self.ema = Ema::new(&self.vars, tc.ema_decay)?.with_kernels(tc.kernels);
        Ok(Some(source))
    }

    /// Forward, loss, backward, gradient clipping, AdamW at `lr`, EMA; the step's numbers
    /// read back to the host.
    pub fn step(&mut self, b: &Batch, lr: f64) -> Result<StepOutcome> {
        self.step_pending(b, lr, None)?.read()
    }

    /// [`Stepper::step`] without reading anything back: on an asynchronous device the host
    /// only queues work, and the numbers stay on the device until [`PendingStep::read`] or
    /// [`read_pending`]. Records the wall time of each phase into `times` when given (the
    /// device is synchronised at each phase boundary then, so the split is exact on
    /// asynchronous devices too).
    pub fn step_pending(
        &mut self,
        b: &Batch,
        lr: f64,
        mut times: Option<&mut PhaseTimes>,
    ) -> Result<PendingStep> {
        let device = b.x0.device().clone();
        let mut clock = std::time::Instant::now();
        let mut lap = |slot: fn(&mut PhaseTimes) -> &mut f64| -> Result<()> {
            if let Some(t) = times.as_deref_mut() {
                device.synchronize()?;
                let now = std::time::Instant::now();
                *slot(t) += (now - clock).as_secs_f64() * 1e3;
                clock = now;
            }
            Ok(())
        };
        let xt = self.path.interpolate(&b.x0, &b.x1, &b.t)?;
        // Mixed precision: a network reading the f32 variables cast to the compute dtype.
        let cast;
        let model = if self.compute_dtype == self.net.model.dtype() {
            &self.net.model
        } else {
            cast = self.net.cast_model(self.compute_dtype)?;
            &cast
        };
        let target = match self.path {
            Interpolant::Linear => self.net.arch.training_target(&b.x0, &b.x1, &xt, &b.t)?,
            path => path.target(&b.x0, &b.x1, &b.t)?,
        };
        // Σ w·(p − y)² as the plain MSE of √w-scaled operands keeps the fused loss kernel.
        let kernels = self.kernels;
        let loss_of = |pred: &Tensor| -> Result<Tensor> {
            Ok(match &b.w {
                Some(w) => {
                    let sw = expand_time(&w.sqrt()?.to_dtype(pred.dtype())?, pred)?;
                    velocity_mse(
                        &pred.broadcast_mul(&sw)?,
                        &target.broadcast_mul(&sw)?,
                        kernels,
                    )?
                }
                None => velocity_mse(pred, &target, kernels)?,
            })
        };
        // With checkpointing the backward pass runs here, block by block.
        let staged = match (self.checkpointing, model.staged()) {
            (true, Some(net)) => Some(crate::checkpointing::forward_backward(
                &net, &self.vars, &xt, &b.t, &b.y, &loss_of,
            )?),
            (true, None) => {
                return Err(TrainError::Invalid {
                    field: "train.activation_checkpointing",
                    value: "true".into(),
                    expected: "a transformer backbone (SiT or JiT)".into(),
                })
            }
            (false, _) => None,
        };
        // In the batch's dtype (f32) whatever the compute dtype, so the loss reduces in f32.
        let pred = match &staged {
            Some(c) => c.output.clone(),
            None => model.forward_train(&xt, &b.t, &b.y, b.dropout_seed)?,
        };
        let per_sample = (&pred - &target)?
            .detach()
            .sqr()?
            .flatten_from(1)?
            .mean(1)?; // [B]
        let (loss, mut staged_grads) = match staged {
            Some(c) => (c.loss, Some(c.grads)),
            None => (loss_of(&pred)?, None),
        };
        lap(|t| &mut t.forward_ms)?;
        let mut grads = match staged_grads.take() {
            Some(g) => g,
            None => loss.backward()?,
        };
        lap(|t| &mut t.backward_ms)?;
        let loss_out = if self.dist.reduces() {
            // The ranks average the loss and gradients in one collective: a rank's non-finite
            // loss makes the sum non-finite on every rank, so all of them skip the update.
            let world = self.dist.world_size();
            let mut local = vec![loss.to_dtype(DType::F32)?.reshape(1)?];
            for (_, v) in &self.vars {
                local.push(match grads.get(v) {
                    Some(g) => g.clone(),
                    None => v.zeros_like()?,
                });
            }
            let summed = self.dist.all_reduce_sum(&local)?;
            let inv = 1.0 / world as f64;
            for ((_, v), g) in self.vars.iter().zip(&summed[1..]) {
                grads.insert(v, (g * inv)?);
            }
            (&summed[0] * inv)?
        } else {
            loss.detach()
        };
        // Clipping and the non-finite guard, decided on the device: a finite loss can still
        // have an overflowing gradient, and neither may reach the weights or the optimizer
        // state (the control tensor stops the update kernels).
        let sums = grad_sums(&self.vars, &grads, self.kernels)?;
        let control = step_control(&loss_out, sums.as_ref(), self.grad_clip, self.kernels)?;
        self.opt.step_with(&grads, lr, &control)?;
        // Freeing the step's gradients and graph is part of the update's cost.
        drop((grads, loss, pred, target));
        lap(|t| &mut t.optimizer_ms)?;
        self.ema.update_with(&self.vars, &control)?;
        lap(|t| &mut t.ema_ms)?;
        Ok(PendingStep {
            loss: loss_out,
            control,
            per_sample,
        })
    }
}
