//! Training: exact resume, checkpoints, configuration errors, divergence handling, AdamW.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use cbs_data::ImageDataset;
use cbs_models::ModelSpec;
use cbs_train::checkpoint::{self, WeightsKind};
use cbs_train::optim::{AdamW, AdamWParams};
use cbs_train::{train, TrainConfig, TrainError, TrainOptions};

/// 48 grey 8×8 images in 3 classes: a class pattern (top half, left half, checkerboard)
/// plus a little noise.
fn toy_data() -> ImageDataset {
    let n = 48;
    let mut s = 12345u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 59) as u8
    };
    let mut images = Vec::with_capacity(n * 64);
    for i in 0..n {
        for y in 0..8 {
            for x in 0..8 {
                let on = match i % 3 {
                    0 => y < 4,
                    1 => x < 4,
                    _ => (x + y) % 2 == 0,
                };
                images.push(if on { 220 } else { 10 } + next());
            }
        }
    }
    ImageDataset {
        images,
        labels: (0..n as u32).map(|i| i % 3).collect(),
        channels: 1,
        height: 8,
        width: 8,
        num_classes: 3,
    }
}

fn toy_config(steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig {
        model: ModelSpec::new("sit-nano-4"),
        data: Default::default(),
        train: Default::default(),
    };
    let t = &mut cfg.train;
    t.steps = steps;
    t.batch_size = 8;
    t.lr = 1e-3;
    t.warmup_steps = 2;
    t.grad_clip = 0.5;
    t.ema_decay = 0.9;
    t.log_every = 1;
    t.checkpoint_every = 3;
    t.keep_checkpoints = 10;
    t.seed = 7;
    cfg
}

fn run(dir: &Path, cfg: &TrainConfig, resume: bool) -> cbs_train::Result<cbs_train::TrainSummary> {
    let opts = TrainOptions {
        resume,
        device: Device::Cpu,
    };
    train(dir, cfg, &toy_data(), &opts, &mut |_| {})
}

fn bits(path: &Path) -> Vec<(String, Vec<u32>)> {
    let map = cbs_models::weights::load_safetensors(path, &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<u32>)> = map
        .into_iter()
        .map(|(k, t)| {
            let f = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k, f.into_iter().map(f32::to_bits).collect())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn resume_reproduces_an_uninterrupted_run_bit_for_bit() {
    let whole = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let full = run(whole.path(), &toy_config(6), false).unwrap();
    let first = run(split.path(), &toy_config(3), false).unwrap();
    let second = run(split.path(), &toy_config(6), true).unwrap();
    assert_eq!(second.start_step, 3);
    let mut resumed = first.losses.clone();
    resumed.extend(second.losses.iter().copied());
    let to_bits = |v: &[(u64, f64)]| v.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(
        to_bits(&full.losses),
        to_bits(&resumed),
        "loss sequences differ"
    );
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let a = bits(&full.checkpoint.join(file));
        let b = bits(&second.checkpoint.join(file));
        assert_eq!(a.len(), b.len());
        for ((na, va), (nb, vb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(va == vb, "{file}: tensor {na} differs after resume");
        }
    }
    // metrics.jsonl holds each step once, in order.
    let m = std::fs::read_to_string(split.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = m
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn metric_lines_after_the_last_checkpoint_are_dropped_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), &toy_config(3), false).unwrap();
    // Simulate a crash after step 4 was logged but before any checkpoint of it.
    let m = dir.path().join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&m).unwrap();
    text.push_str("{\"step\":4,\"loss\":9.0}\n");
    std::fs::write(&m, text).unwrap();
    run(dir.path(), &toy_config(4), true).unwrap();
    let text = std::fs::read_to_string(&m).unwrap();
    assert_eq!(text.lines().count(), 4);
    assert!(!text.contains("9.0"));
}

#[test]
fn loss_falls_on_toy_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = toy_config(60);
    cfg.train.checkpoint_every = 60;
    let s = run(dir.path(), &cfg, false).unwrap();
    let mean = |r: &[(u64, f64)]| r.iter().map(|x| x.1).sum::<f64>() / r.len() as f64;
    let (early, late) = (mean(&s.losses[..10]), mean(&s.losses[50..]));
    assert!(late < 0.8 * early, "loss did not fall: {early} → {late}");
}

#[test]
fn existing_run_needs_resume_and_resume_needs_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let e = run(dir.path(), &toy_config(3), true).unwrap_err();
    assert!(e.to_string().contains("holds no checkpoint"), "{e}");
    run(dir.path(), &toy_config(3), false).unwrap();
    let e = run(dir.path(), &toy_config(3), false).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = toy_config(20);
    cfg.train.lr = 1e30;
    cfg.train.warmup_steps = 0;
    cfg.train.grad_clip = 0.0;
    cfg.train.checkpoint_every = 1;
    let e = run(dir.path(), &cfg, false).unwrap_err();
    let TrainError::NonFinite {
        step,
        last_checkpoint,
        ..
    } = &e
    else {
        panic!("expected NonFinite, got {e}");
    };
    let kept = last_checkpoint
        .clone()
        .expect("a checkpoint before the divergence");
    assert!(e.to_string().contains("last good checkpoint"), "{e}");
    let state = checkpoint::read_state(&kept).unwrap();
    assert_eq!(state.step, step - 1);
    assert!(state.last_loss.is_finite());
    assert_eq!(checkpoint::latest(dir.path()).unwrap(), Some(kept));
}

#[test]
fn interrupted_checkpoint_write_leaves_the_previous_one_usable() {
    let dir = tempfile::tempdir().unwrap();
    let s = run(dir.path(), &toy_config(3), false).unwrap();
    // A crash in the middle of writing step 6: its temporary directory is half written.
    let tmp = checkpoint::checkpoints_dir(dir.path()).join("step-00000006.tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("model.safetensors"), b"garbage").unwrap();
    assert_eq!(
        checkpoint::latest(dir.path()).unwrap(),
        Some(s.checkpoint.clone())
    );
    let resumed = run(dir.path(), &toy_config(6), true).unwrap();
    assert_eq!(resumed.start_step, 3);
    assert!(!tmp.exists(), "the stale temporary directory is replaced");
}

#[test]
fn inference_loading_matches_the_trained_weights_and_checks_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let s = run(dir.path(), &toy_config(3), false).unwrap();
    let a = checkpoint::load_for_inference(dir.path(), WeightsKind::Model, &Device::Cpu).unwrap();
    let b = checkpoint::load_for_inference(&s.checkpoint, WeightsKind::Ema, &Device::Cpu).unwrap();
    assert_eq!(a.state.step, 3);
    let x = Tensor::ones((2, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[0.3f32, 0.8], &Device::Cpu).unwrap();
    let y = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
    let va = a.model.forward(&x, &t, &y).unwrap();
    let vb = b.model.forward(&x, &t, &y).unwrap();
    // EMA (decay 0.9, 3 steps) and raw weights differ, but both are finite and non-trivial.
    let d = (va - vb)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d > 0.0 && d.is_finite());
    // A weights file of another preset is refused, naming the first mismatched tensor.
    let other = tempfile::tempdir().unwrap();
    let mut cfg = toy_config(3);
    cfg.model = ModelSpec::new("sit-mini-4");
    run(other.path(), &cfg, false).unwrap();
    let from = checkpoint::latest(other.path()).unwrap().unwrap();
    std::fs::copy(
        from.join("ema.safetensors"),
        s.checkpoint.join("ema.safetensors"),
    )
    .unwrap();
    let e = checkpoint::load_for_inference(dir.path(), WeightsKind::Ema, &Device::Cpu)
        .err()
        .expect("mismatched weights must be refused");
    let msg = e.to_string();
    assert!(msg.contains("`blocks.0.adaLN_modulation.1.bias`"), "{msg}");
    assert!(msg.contains("ema.safetensors"), "{msg}");
}

#[test]
fn unknown_fields_and_wrong_types_name_the_field() {
    let p = Path::new("configs/test.toml");
    let base = "[model]\npreset = \"sit-nano-4\"\n[train]\nsteps = 10\n";
    TrainConfig::from_toml(base, p).unwrap();
    let e = TrainConfig::from_toml(&format!("{base}learning_rate = 1e-3\n"), p).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("learning_rate") && m.contains("configs/test.toml"),
        "{m}"
    );
    let e = TrainConfig::from_toml("[model]\npreset = \"x\"\n[train]\nsteps = \"ten\"\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("steps"), "{e}");
    let e = TrainConfig::from_toml("[model]\npreset = \"x\"\n[data]\nsource = \"mnist\"\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mnist") && e.contains("fashion_mnist"), "{e}");
    let e = TrainConfig::from_toml(&format!("{base}t_range = [0.5, 0.2]\n"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.t_range"), "{e}");
    let e = TrainConfig::from_toml(&format!("{base}[data]\ndata_fraction = 0.0\n"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.data_fraction"), "{e}");
}

#[test]
fn config_round_trips_through_toml() {
    let cfg = toy_config(9);
    let back = TrainConfig::from_toml(&cfg.to_toml(), Path::new("x.toml")).unwrap();
    assert_eq!(cfg, back);
}

#[test]
fn adamw_follows_the_torch_update_rule() {
    // Reference: torch.optim.AdamW written out for one scalar parameter per entry.
    let p0 = [0.5f64, -1.0, 2.0];
    let var = Var::from_tensor(&Tensor::new(&p0, &Device::Cpu).unwrap()).unwrap();
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::new(vec![("w".into(), var.clone())], params).unwrap();
    let (mut p, mut m, mut v) = (p0.to_vec(), [0.0; 3], [0.0; 3]);
    let lr = 0.01;
    for step in 1..=5 {
        // loss = Σ p³ ⇒ grad = 3p²
        let loss = var.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, lr, 1.0).unwrap();
        for i in 0..3 {
            let g = 3.0 * p[i] * p[i];
            p[i] *= 1.0 - lr * params.weight_decay;
            m[i] = params.beta1 * m[i] + (1.0 - params.beta1) * g;
            v[i] = params.beta2 * v[i] + (1.0 - params.beta2) * g * g;
            let bc1 = 1.0 - params.beta1.powi(step);
            let bc2 = 1.0 - params.beta2.powi(step);
            p[i] -= lr / bc1 * m[i] / ((v[i] / bc2).sqrt() + params.eps);
        }
    }
    let got = var.as_tensor().to_vec1::<f64>().unwrap();
    for (g, w) in got.iter().zip(&p) {
        assert!((g - w).abs() < 1e-12, "{g} vs {w}");
    }
    assert_eq!(opt.step, 5);
}
