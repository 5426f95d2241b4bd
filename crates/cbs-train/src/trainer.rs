//! The training loop, top to bottom in [`train`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::Device;
use cbs_data::Dataset;
use serde::Serialize;

use crate::batches::BatchPlan;
use crate::checkpoint::{self, CheckpointData, CheckpointState, RngState};
use crate::config::TrainConfig;
use crate::options::TrainOptions;
use crate::step::{read_pending, PendingStep, StepOutcome, Stepper};
use crate::{io_err, Result, TrainError};

/// Reported to the caller after every step (the CLI draws its progress bar from it).
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub total: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub images_per_s: f64,
    /// Set on the step whose checkpoint was just written.
    #[serde(skip)]
    pub checkpoint: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub start_step: u64,
    pub final_step: u64,
    /// `(step, loss)` of every step run in this call.
    pub losses: Vec<(u64, f64)>,
    pub checkpoint: PathBuf,
    pub seconds: f64,
}

/// Bins of `[0, 1]` the per-time training loss of `metrics.jsonl` is reported on.
pub const LOSS_T_BINS: usize = 10;

/// The unweighted per-sample losses since the last log line, summed per time bin.
#[derive(Default)]
struct LossBins {
    sum: [f64; LOSS_T_BINS],
    count: [u64; LOSS_T_BINS],
}

impl LossBins {
    fn add(&mut self, times: &[f32], losses: &[f32]) {
        for (&t, &l) in times.iter().zip(losses) {
            let j = ((f64::from(t) * LOSS_T_BINS as f64) as usize).min(LOSS_T_BINS - 1);
            self.sum[j] += f64::from(l);
            self.count[j] += 1;
        }
    }

    /// The mean loss of each bin (`null` where no time fell), and a fresh start.
    fn take(&mut self) -> Vec<Option<f64>> {
        let out = self
            .sum
            .iter()
            .zip(&self.count)
            .map(|(&s, &c)| (c > 0).then(|| s / c as f64))
            .collect();
        *self = LossBins::default();
        out
    }
}

fn lr_at(cfg: &TrainConfig, step: u64) -> f64 {
    let t = &cfg.train;
    if t.warmup_steps > 0 && step < t.warmup_steps {
        t.lr * (step + 1) as f64 / t.warmup_steps as f64
    } else {
        t.lr
    }
}

/// Train (or continue training) the run in `run_dir`.
pub fn train(
    run_dir: &Path,
    cfg: &TrainConfig,
    data: &dyn Dataset,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<TrainSummary> {
    cfg.validate()?;
    let tc = &cfg.train;
    let device = &opts.device;
    tc.precision.configure_products();
    let arch = cfg
        .model
        .resolve(&data.sample_shape(), data.num_classes())?;
    check_geometry(&arch, data)?;

    let dist = opts.dist.0.clone();
    let (rank, world) = (dist.rank(), dist.world_size());
    if world == 0 || rank >= world || !tc.batch_size.is_multiple_of(world) {
        return Err(TrainError::Invalid {
            field: "train.batch_size",
            value: format!("{} on rank {rank} of {world}", tc.batch_size),
            expected: "a global batch divisible by the number of data-parallel ranks".into(),
        });
    }
    let writer = rank == 0;

    // Model, optimizer and EMA, fresh or from the latest checkpoint.
    let mut st = Stepper::new(&arch, tc, device)?;
    st.dist = dist.clone();
    cbs_core::atomic::create_dir_all(run_dir).map_err(io_err(run_dir))?;
    // One writer per run directory, for the whole call (rank 0 of a data-parallel group).
    let _lock = if writer {
        Some(cbs_run::RunLock::acquire(run_dir)?)
    } else {
        None
    };
    let existing = checkpoint::latest(run_dir)?;
    let start = match (&existing, opts.resume) {
        (Some(dir), true) => restore(dir, &arch, &mut st, device)?,
        (Some(dir), false) => {
            return Err(TrainError::Checkpoint {
                path: dir.clone(),
                message: "the output directory already holds a run; pass --resume to continue \
                          it, or choose another --out"
                    .into(),
            })
        }
        (None, true) => {
            return Err(TrainError::Checkpoint {
                path: run_dir.to_path_buf(),
                message: "--resume given but the directory holds no checkpoint".into(),
            })
        }
        (None, false) => {
            if let Some(source) = st.init_from(tc)? {
                tracing::info!(%source, "weights initialised from");
            }
            0
        }
    };
    if dist.reduces() {
        // The memory limit belongs to each machine, not to the run.
        let mut shared = cfg.clone();
        shared.data.max_memory_gib = None;
        let json = serde_json::to_string(&shared).map_err(|e| TrainError::Invalid {
            field: "config",
            value: e.to_string(),
            expected: "a serialisable configuration".into(),
        })?;
        crate::dist::check_same_run(dist.as_ref(), &json, start, device)?;
        // Every rank starts from rank 0's weights (also a barrier: no rank writes a checkpoint
        // before every rank has read the directory).
        let local: Vec<candle_core::Tensor> =
            st.vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        for ((_, v), t) in st.vars.iter().zip(dist.broadcast(&local, 0)?) {
            v.set(&t)?;
        }
    }
    if start >= tc.steps {
        tracing::info!(start, total = tc.steps, "run already complete");
    }
    let metrics_path = run_dir.join(checkpoint::METRICS_FILE);
    let mut metrics = if writer {
        cfg.write(&run_dir.join(checkpoint::CONFIG_FILE))?;
        truncate_metrics(&metrics_path, start)?;
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(io_err(&metrics_path))?,
        )
    } else {
        None
    };

    let b = tc.batch_size;
    let per_sample: usize = data.sample_shape().iter().product();
    let shape: Vec<usize> = std::iter::once(b / world)
        .chain(data.sample_shape())
        .collect();
    let plan = BatchPlan::new(cfg, &arch, data)?;
    let mut losses = Vec::new();
    let mut bins = LossBins::default();
    let mut last_ckpt = existing;
    let started = Instant::now();

    let every_step = opts.host_reads.every_step(device);
    // Steps run but not yet read back, and the wall time since the last read.
    let mut pending: Vec<(u64, f64, Vec<f32>, PendingStep)> = Vec::new();
    let mut window = Instant::now();

    std::thread::scope(|scope| -> Result<()> {
        let batches = plan.prefetch(scope, start..tc.steps);
        for s in start..tc.steps {
            let step = s + 1;
            let host = batches.recv().map_err(|_| TrainError::Invalid {
                field: "data",
                value: format!("no batch for step {step}"),
                expected: "the loader thread to prepare every step's batch".into(),
            })??;
            let host = host.shard(rank, world, per_sample);
            let times = host.times.clone();
            let batch = host.upload(&shape, device)?;
            let lr = lr_at(cfg, s);
            pending.push((step, lr, times, st.step_pending(&batch, lr, None)?));

            // Steps every rank reads at alike (a stop is agreed on there).
            let boundary = every_step
                || step % tc.log_every == 0
                || step % tc.checkpoint_every == 0
                || step == tc.steps;
            let mut stop = opts.stop.is_some_and(|f| f.load(Ordering::SeqCst));
            if dist.reduces() {
                // A stop asked of any rank stops all of them at the same step, agreed at a step
                // every rank reads at.
                stop = boundary && {
                    let flag = candle_core::Tensor::new(&[f32::from(u8::from(stop))], device)?;
                    dist.all_reduce_sum(&[flag])?[0].to_vec1::<f32>()?[0] > 0.0
                };
            }
            if !(boundary || stop) {
                continue;
            }

            // One transfer for every step since the last read.
            let outcomes = read_pending(pending.iter().map(|p| &p.3))?;
            let images_per_s = (b * pending.len()) as f64 / window.elapsed().as_secs_f64();
            window = Instant::now();
            let mut reports = Vec::with_capacity(pending.len());
            for ((step, lr, times, _), outcome) in pending.drain(..).zip(outcomes) {
                let (loss_val, gnorm) = match outcome {
                    StepOutcome::Updated {
                        loss,
                        grad_norm,
                        per_sample,
                    } => {
                        bins.add(&times, &per_sample);
                        (loss, grad_norm)
                    }
                    StepOutcome::NonFinite { loss, grad_norm } => {
                        return Err(TrainError::NonFinite {
                            step,
                            loss,
                            grad_norm,
                            last_checkpoint: last_ckpt.clone(),
                        })
                    }
                };
                losses.push((step, loss_val));
                if let (true, Some(m)) =
                    (step % tc.log_every == 0 || step == tc.steps, &mut metrics)
                {
                    // loss_t_bins: rank 0's shard (the loss itself is the global batch's).
                    let line = serde_json::json!({
                        "step": step, "loss": loss_val, "lr": lr,
                        "grad_norm": gnorm, "images_per_s": images_per_s,
                        "loss_t_bins": bins.take(),
                    });
                    writeln!(m, "{line}").map_err(io_err(&metrics_path))?;
                    tracing::info!(step, loss = loss_val, lr, grad_norm = gnorm, images_per_s);
                }
                reports.push(StepReport {
                    step,
                    total: tc.steps,
                    loss: loss_val,
                    lr,
                    grad_norm: gnorm,
                    images_per_s,
                    checkpoint: None,
                });
            }
            let save = step % tc.checkpoint_every == 0 || step == tc.steps || stop;
            if let (true, Some(m)) = (save, &mut metrics) {
                let dir = save_checkpoint(run_dir, cfg, &arch, &st, step, losses_last(&losses))?;
                m.flush().map_err(io_err(&metrics_path))?;
                if let Some(r) = reports.last_mut() {
                    r.checkpoint = Some(dir.clone());
                }
                last_ckpt = Some(dir);
            }
            reports.iter().for_each(&mut *progress);
            if stop && step < tc.steps {
                return Err(TrainError::Interrupted {
                    step,
                    checkpoint: last_ckpt.clone(),
                });
            }
        }
        Ok(())
    })?;
    if dist.reduces() {
        // Rank 0 has written the last checkpoint before it arrives here.
        dist.all_reduce_sum(&[candle_core::Tensor::zeros(
            1,
            candle_core::DType::F32,
            device,
        )?])?;
    }
    let checkpoint = match last_ckpt {
        Some(c) => c,
        None => checkpoint::latest(run_dir)?.ok_or_else(|| TrainError::Checkpoint {
            path: run_dir.to_path_buf(),
            message: "no checkpoint was written".into(),
        })?,
    };
    Ok(TrainSummary {
        start_step: start,
        final_step: tc.steps.max(start),
        losses,
        checkpoint,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The loss of the last step read (the checkpoint records it).
fn losses_last(losses: &[(u64, f64)]) -> f64 {
    losses.last().map_or(f64::NAN, |l| l.1)
}

/// Writes the checkpoint of `step` (weights, EMA with the fixed buffers, optimizer state,
/// generator state and the config) and returns its directory.
fn save_checkpoint(
    run_dir: &Path,
    cfg: &TrainConfig,
    arch: &cbs_models::Architecture,
    st: &Stepper,
    step: u64,
    loss: f64,
) -> Result<PathBuf> {
    let tc = &cfg.train;
    let state = CheckpointState {
        format_version: checkpoint::FORMAT_VERSION,
        step,
        rng: RngState {
            algorithm: "chacha8-stream-per-step".into(),
            seed: tc.seed,
            next_stream: step,
        },
        optimizer_step: st.opt.step,
        last_loss: loss,
        architecture: arch.clone(),
    };
    let model = st.net.state_dict();
    let mut ema_sd = st.ema.tensors.clone();
    ema_sd.extend(st.net.model.buffers());
    Ok(checkpoint::write(
        run_dir,
        &CheckpointData {
            state: &state,
            config: cfg,
            model: &model,
            ema: &ema_sd,
            optimizer: &st.opt.state_tensors()?,
        },
        tc.keep_checkpoints,
    )?)
}

fn check_geometry(arch: &cbs_models::Architecture, data: &dyn Dataset) -> Result<()> {
    if arch.sample_shape() != data.sample_shape() {
        return Err(TrainError::Invalid {
            field: "model",
            value: format!("samples of shape {:?}", arch.sample_shape()),
            expected: format!("the data set's sample shape {:?}", data.sample_shape()),
        });
    }
    if arch.num_classes() > 0 && arch.num_classes() < data.num_classes() {
        return Err(TrainError::Invalid {
            field: "model.num_classes",
            value: arch.num_classes().to_string(),
            expected: format!("at least the data set's {} classes", data.num_classes()),
        });
    }
    Ok(())
}

/// Restore weights, EMA and optimizer from `dir`; returns the step to continue from.
fn restore(
    dir: &Path,
    arch: &cbs_models::Architecture,
    st: &mut Stepper,
    device: &Device,
) -> Result<u64> {
    let (net, opt, ema) = (&st.net, &mut st.opt, &mut st.ema);
    let state = checkpoint::read_state(dir)?;
    if &state.architecture != arch {
        return Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "architecture differs from the config: checkpoint {:?}, config {:?}",
                state.architecture, arch
            ),
        });
    }
    let vars = net.named_vars();
    let buffers = net.model.buffers();
    cbs_models::weights::load_into_vars(&dir.join(checkpoint::MODEL_FILE), &vars, &buffers)?;
    let ema_path = dir.join(checkpoint::EMA_FILE);
    let ema_file = cbs_models::weights::load_safetensors(&ema_path, device)?;
    for (name, t) in ema.tensors.iter_mut() {
        let saved = ema_file.get(name).ok_or_else(|| TrainError::Checkpoint {
            path: ema_path.clone(),
            message: format!("missing tensor `{name}`"),
        })?;
        *t = saved.clone();
    }
    let opt_path = dir.join(checkpoint::OPTIMIZER_FILE);
    let opt_file = cbs_models::weights::load_safetensors(&opt_path, device)?;
    opt.load_state(state.optimizer_step, &|k| opt_file.get(k).cloned())
        .map_err(|message| TrainError::Checkpoint {
            path: opt_path.clone(),
            message,
        })?;
    tracing::info!(step = state.step, dir = %dir.display(), "resumed");
    Ok(state.step)
}

/// Drop metric lines logged after `step` (a crash after the last checkpoint leaves some).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    cbs_core::atomic::write_text(path, &kept)?;
    Ok(())
}
