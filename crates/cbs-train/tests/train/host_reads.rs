//! Reading the step's numbers back only at logging steps (`HostReads::Logging`, the default on
//! GPUs): the same numbers, checkpoints and reports as reading after every step, and a
//! non-finite step still never reaches the weights or a checkpoint.

use std::path::Path;

use candle_core::{Device, Tensor};
use cbs_models::{Kernels, ModelSpec};
use cbs_train::checkpoint;
use cbs_train::optim::{grad_norm, step_control};
use cbs_train::step::{Batch, StepOutcome, Stepper};
use cbs_train::{train, HostReads, TrainConfig, TrainError, TrainOptions, TrainSection};

use super::{bits, toy_config, toy_data};

/// (step, loss, grad_norm, checkpoint written) of each report.
type Reports = Vec<(u64, f64, f64, bool)>;

fn run_with(
    dir: &Path,
    cfg: &TrainConfig,
    host_reads: HostReads,
) -> (cbs_train::Result<cbs_train::TrainSummary>, Reports) {
    let opts = TrainOptions {
        device: Device::Cpu,
        host_reads,
        ..TrainOptions::default()
    };
    let mut reports = Vec::new();
    let r = train(dir, cfg, &toy_data(), &opts, &mut |r| {
        reports.push((r.step, r.loss, r.grad_norm, r.checkpoint.is_some()))
    });
    (r, reports)
}

/// metrics.jsonl without the wall-clock field.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(checkpoint::METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("images_per_s");
            v
        })
        .collect()
}

#[test]
fn reading_at_logging_steps_changes_no_number() {
    let mut cfg = toy_config(13);
    cfg.train.log_every = 5;
    cfg.train.checkpoint_every = 4;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (every, every_reports) = run_with(a.path(), &cfg, HostReads::EveryStep);
    let (logging, logging_reports) = run_with(b.path(), &cfg, HostReads::Logging);
    let (every, logging) = (every.unwrap(), logging.unwrap());
    let to_bits = |v: &[(u64, f64)]| v.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(to_bits(&every.losses), to_bits(&logging.losses));
    assert_eq!(every.losses.len(), 13);
    // Every step reported once, in order, with the same loss and norm; the checkpoint steps
    // (4, 8, 12, 13) flagged in both.
    assert_eq!(every_reports.len(), 13);
    assert_eq!(
        every_reports
            .iter()
            .map(|r| (r.0, r.1.to_bits(), r.2.to_bits(), r.3))
            .collect::<Vec<_>>(),
        logging_reports
            .iter()
            .map(|r| (r.0, r.1.to_bits(), r.2.to_bits(), r.3))
            .collect::<Vec<_>>()
    );
    let saved: Vec<u64> = logging_reports
        .iter()
        .filter(|r| r.3)
        .map(|r| r.0)
        .collect();
    assert_eq!(saved, vec![4, 8, 12, 13]);
    assert_eq!(metrics(a.path()), metrics(b.path()));
    assert_eq!(
        metrics(b.path())
            .iter()
            .map(|m| m["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![5, 10, 13]
    );
    for file in [
        checkpoint::MODEL_FILE,
        checkpoint::EMA_FILE,
        checkpoint::OPTIMIZER_FILE,
    ] {
        assert_eq!(
            bits(&every.checkpoint.join(file)),
            bits(&logging.checkpoint.join(file)),
            "{file}"
        );
    }
}

#[test]
fn a_divergence_read_late_names_its_step_and_no_checkpoint_holds_it() {
    let mut cfg = toy_config(20);
    cfg.train.lr = 1e30;
    cfg.train.warmup_steps = 0;
    cfg.train.grad_clip = 0.0;
    cfg.train.checkpoint_every = 1;
    let a = tempfile::tempdir().unwrap();
    let (every, _) = run_with(a.path(), &cfg, HostReads::EveryStep);
    let Err(TrainError::NonFinite { step: bad, .. }) = every else {
        panic!("expected a divergence");
    };
    // Read at logging steps only, with checkpoints every 10: the run goes on past the bad
    // step until the next read, which names the same step and keeps the last good checkpoint.
    cfg.train.log_every = 10;
    cfg.train.checkpoint_every = 10;
    let b = tempfile::tempdir().unwrap();
    let (logging, reports) = run_with(b.path(), &cfg, HostReads::Logging);
    let e = logging.unwrap_err();
    let TrainError::NonFinite {
        step,
        last_checkpoint,
        ..
    } = &e
    else {
        panic!("expected NonFinite, got {e}");
    };
    assert_eq!(*step, bad, "{e}");
    assert!(reports.iter().all(|r| r.0 < bad && r.1.is_finite()));
    match last_checkpoint {
        Some(kept) => {
            let state = checkpoint::read_state(kept).unwrap();
            assert!(state.step < bad);
            assert_eq!(checkpoint::latest(b.path()).unwrap().as_ref(), Some(kept));
        }
        None => assert!(bad <= 10 && checkpoint::latest(b.path()).unwrap().is_none()),
    }
}

fn batch(poison: bool) -> Batch {
    let dev = Device::Cpu;
    let n = 4 * 16 * 16;
    let f = |k: usize| -> Tensor {
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 31 + k * 7) % 200) as f32 / 100.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (4, 1, 16, 16), &dev).unwrap()
    };
    let mut x1 = f(2);
    if poison {
        x1 = (x1 * f64::NAN).unwrap();
    }
    Batch {
        x0: f(1),
        x1,
        t: Tensor::new(&[0.2f32, 0.4, 0.6, 0.8], &dev).unwrap(),
        y: Tensor::new(&[0u32, 1, 2, 0], &dev).unwrap(),
        dropout_seed: 0,
        w: None,
    }
}

fn state_bits(st: &Stepper) -> Vec<Vec<u32>> {
    let flat = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    let mut out: Vec<Vec<u32>> = st.vars.iter().map(|(_, v)| flat(v.as_tensor())).collect();
    out.extend(st.ema.tensors.iter().map(|(_, t)| flat(t)));
    out.extend(st.opt.state_tensors().unwrap().iter().map(|(_, t)| flat(t)));
    out
}

#[test]
fn a_non_finite_step_leaves_weights_moments_and_ema_untouched() {
    let arch = ModelSpec::new("sit-nano-4")
        .resolve(&[1, 16, 16], 3)
        .unwrap();
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let tc = TrainSection {
            lr: 1e-3,
            seed: 5,
            kernels,
            ..Default::default()
        };
        let mut st = Stepper::new(&arch, &tc, &Device::Cpu).unwrap();
        let out = st.step(&batch(false), 1e-3).unwrap();
        assert!(matches!(out, StepOutcome::Updated { .. }), "{kernels:?}");
        let before = state_bits(&st);
        let pending = st.step_pending(&batch(true), 1e-3, None).unwrap();
        // Nothing was read yet, and nothing changed.
        assert_eq!(state_bits(&st), before, "{kernels:?}");
        let out = pending.read().unwrap();
        assert!(
            matches!(out, StepOutcome::NonFinite { grad_norm: None, ref loss } if loss.is_nan()),
            "{kernels:?}: {out:?}"
        );
        // An applied step does change them (the comparison above can fail).
        st.step(&batch(false), 1e-3).unwrap();
        assert_ne!(state_bits(&st), before, "{kernels:?}");
    }
}

#[test]
fn composed_and_fused_step_controls_agree() {
    let dev = Device::Cpu;
    for (loss, sums, clip) in [
        (0.5f32, vec![9.0f64, 16.0], 1.0),
        (0.5, vec![9.0, 16.0], 10.0),
        (0.5, vec![9.0, 16.0], 0.0),
        (f32::NAN, vec![1.0], 1.0),
        (0.5, vec![f64::INFINITY], 1.0),
    ] {
        let l = Tensor::new(&[loss], &dev).unwrap();
        let s = Tensor::new(sums.as_slice(), &dev).unwrap();
        let fused = step_control(&l, Some(&s), clip, Kernels::Fused)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let composed = step_control(&l, Some(&s), clip, Kernels::Composed)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert_eq!(fused[..2], composed[..2], "{loss} {sums:?} {clip}");
        let same_norm = fused[2] == composed[2] || (fused[2].is_nan() && composed[2].is_nan());
        assert!(same_norm, "{fused:?} vs {composed:?}");
    }
    // The host-side norm helper reads the same sums.
    let w = candle_core::Var::new(&[3f32, 4.0], &dev).unwrap();
    let grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
    let vars = vec![("w".to_string(), w)];
    assert_eq!(
        grad_norm(&vars, &grads, Kernels::Fused).unwrap(),
        2f64.sqrt()
    );
}
