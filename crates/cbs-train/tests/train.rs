//! Training: exact resume, checkpoints, configuration errors, divergence handling, AdamW.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use cbs_data::ImageDataset;
use cbs_models::{ModelSpec, Precision};
use cbs_train::checkpoint::{self, WeightsKind};
use cbs_train::optim::{AdamW, AdamWParams};
use cbs_train::{train, TrainConfig, TrainError, TrainOptions};

#[path = "train/checkpointing.rs"]
mod checkpointing;
#[path = "train/dist.rs"]
mod dist;
#[path = "train/host_reads.rs"]
mod host_reads;

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
        ..TrainOptions::default()
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
    // Parse the lines: a timing figure (images/s) may contain any text, so compare values.
    let text = std::fs::read_to_string(&m).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = lines.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    let step4_loss = lines[3]["loss"].as_f64().unwrap();
    assert_ne!(step4_loss, 9.0, "the stale step-4 line survived the resume");
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

/// Half precision through the whole trainer: f32 weights, optimizer state and EMA on disk,
/// losses that track the f32 run and fall as it does, and a resume as exact as in f32.
#[test]
fn half_precision_training_keeps_f32_state_and_tracks_f32() {
    let mut cfg = toy_config(30);
    cfg.train.checkpoint_every = 15;
    let f32_dir = tempfile::tempdir().unwrap();
    let full = run(f32_dir.path(), &cfg, false).unwrap();
    // bf16 for the transformer (no convolution); f16 stands in where the CPU lacks bf16.
    for precision in [Precision::Bf16, Precision::F16] {
        cfg.train.precision = precision;
        let dir = tempfile::tempdir().unwrap();
        let half = run(dir.path(), &cfg, false).unwrap();
        // (Step 1 is identical: SiT's zero-initialised output layer predicts 0 in any dtype.)
        let mut differs = false;
        for (f, h) in full.losses.iter().zip(&half.losses).take(5) {
            let rel = (f.1 - h.1).abs() / f.1;
            assert!(
                rel < 0.05,
                "{precision}: step {} loss {} vs f32 {}",
                h.0,
                h.1,
                f.1
            );
            differs |= rel > 0.0;
        }
        assert!(
            differs,
            "{precision}: losses identical to f32: the half path did not run"
        );
        let mean = |r: &[(u64, f64)]| r.iter().map(|x| x.1).sum::<f64>() / r.len() as f64;
        assert!(mean(&half.losses[25..]) < 0.8 * mean(&half.losses[..5]));
        let ck = checkpoint::latest(dir.path()).unwrap().unwrap();
        for file in [
            checkpoint::MODEL_FILE,
            checkpoint::EMA_FILE,
            checkpoint::OPTIMIZER_FILE,
        ] {
            let map = cbs_models::weights::load_safetensors(&ck.join(file), &Device::Cpu).unwrap();
            for (name, t) in &map {
                assert_eq!(t.dtype(), DType::F32, "{precision}: {file} `{name}`");
            }
        }
        let text = std::fs::read_to_string(dir.path().join(checkpoint::CONFIG_FILE)).unwrap();
        assert!(
            text.contains(&format!("precision = \"{precision}\"")),
            "{text}"
        );
        // Resume from the middle checkpoint: the same weights as the uninterrupted run.
        let resumed = tempfile::tempdir().unwrap();
        let mut first = cfg.clone();
        first.train.steps = 15;
        run(resumed.path(), &first, false).unwrap();
        run(resumed.path(), &cfg, true).unwrap();
        let last = |d: &Path| {
            checkpoint::latest(d)
                .unwrap()
                .unwrap()
                .join(checkpoint::MODEL_FILE)
        };
        assert_eq!(
            bits(&last(dir.path())),
            bits(&last(resumed.path())),
            "{precision}"
        );
    }
}

/// A data set whose reads fail from the `fail_from`-th batch on.
struct Failing {
    inner: ImageDataset,
    calls: std::sync::atomic::AtomicUsize,
    fail_from: usize,
}

impl cbs_data::Dataset for Failing {
    fn len(&self) -> usize {
        cbs_data::Dataset::len(&self.inner)
    }
    fn sample_shape(&self) -> Vec<usize> {
        self.inner.sample_shape()
    }
    fn num_classes(&self) -> usize {
        cbs_data::Dataset::num_classes(&self.inner)
    }
    fn batch(&self, indices: &[usize], flips: &[bool]) -> cbs_data::Result<(Vec<f32>, Vec<u32>)> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= self.fail_from {
            return Err(cbs_data::DataError::Invalid {
                field: "batch",
                reason: format!("read {n} failed on purpose"),
            });
        }
        self.inner.batch(indices, flips)
    }
}

/// The loader thread's error reaches the caller (no hang, no panic), after the steps whose
/// batches were read, and the checkpoint written before it stays.
#[test]
fn a_failing_loader_stops_training_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = Failing {
        inner: toy_data(),
        calls: Default::default(),
        fail_from: 5,
    };
    let cfg = toy_config(20);
    let err = train(
        dir.path(),
        &cfg,
        &data,
        &TrainOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("failed on purpose"), "{err}");
    let ck = checkpoint::latest(dir.path()).unwrap().unwrap();
    assert!(ck.ends_with("step-00000003"), "{}", ck.display());
}

// ---------------------------------------------------------------------------------------------
// Every backbone through the same trainer.

fn backbone_config(preset: &str, steps: u64) -> TrainConfig {
    let mut cfg = toy_config(steps);
    cfg.model = ModelSpec::new(preset);
    cfg.train.checkpoint_every = steps;
    cfg.train.keep_checkpoints = 1;
    cfg
}

#[test]
fn every_image_backbone_learns_the_toy_data() {
    for preset in ["sit-nano-4", "jit-nano-4", "unet-mini"] {
        let dir = tempfile::tempdir().unwrap();
        let s = run(dir.path(), &backbone_config(preset, 200), false).unwrap();
        let mean = |r: &[(u64, f64)]| r.iter().map(|x| x.1).sum::<f64>() / r.len() as f64;
        let (early, late) = (mean(&s.losses[..20]), mean(&s.losses[180..]));
        assert!(
            late < 0.7 * early,
            "{preset}: loss did not fall enough in 200 steps: {early} → {late}"
        );
    }
}

#[test]
fn jit_resumes_bit_for_bit_with_logit_normal_times() {
    let whole = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let cfg = |steps| {
        let mut c = toy_config(steps);
        c.model = ModelSpec::new("jit-nano-4");
        c
    };
    let full = run(whole.path(), &cfg(6), false).unwrap();
    run(split.path(), &cfg(3), false).unwrap();
    let second = run(split.path(), &cfg(6), true).unwrap();
    assert_eq!(full.losses[3..], second.losses[..]);
    assert_eq!(
        bits(&full.checkpoint.join("model.safetensors")),
        bits(&second.checkpoint.join("model.safetensors"))
    );
}

#[test]
fn jit_target_is_the_clamped_velocity() {
    use cbs_models::Architecture;
    let arch = ModelSpec::new("jit-nano-4").resolve(&[1, 8, 8], 3).unwrap();
    assert!(matches!(arch, Architecture::Jit(_)));
    let dev = Device::Cpu;
    let x0 = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.0]], &dev).unwrap();
    let x1 = Tensor::new(&[[1.0f32, 1.0], [-1.0, 3.0]], &dev).unwrap();
    let t = Tensor::new(&[0.5f32, 0.99], &dev).unwrap();
    let xt = cbs_flow::interpolant::interpolate(&x0, &x1, &t).unwrap();
    let got = arch
        .training_target(&x0, &x1, &xt, &t)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // t = 0.5: (x1 − x_t)/(1 − t) = x1 − x0; t = 0.99: (1 − t)(x1 − x0)/0.05 = 0.2 (x1 − x0).
    let want = [[0.5f32, 2.0], [-3.0 * 0.2, 3.0 * 0.2]];
    for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    let sit = ModelSpec::new("sit-nano-4").resolve(&[1, 8, 8], 3).unwrap();
    let u = sit.training_target(&x0, &x1, &xt, &t).unwrap();
    let diff = (u - (&x1 - &x0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}

/// Every shipped config parses, validates and builds its network (at the geometry its data
/// source implies); the paper-scale ones have the reference sizes.
#[test]
fn shipped_configs_parse_and_resolve() {
    use cbs_models::shapes::parameter_count;
    use cbs_train::DataSource;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut files = vec![];
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    let mut totals = std::collections::HashMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if text.contains("[[arm]]") {
            // An experiment file (cbs-experiment's tests parse those).
            continue;
        }
        if text.contains("[classifier]") {
            cbs_train::classifier::ClassifierRunConfig::from_file(f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            continue;
        }
        let cfg = TrainConfig::from_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let d = &cfg.data;
        let (shape, classes) = match d.source {
            DataSource::FashionMnist => (vec![1, 32, 32], 10),
            DataSource::Cifar10 => (vec![3, 32, 32], 10),
            DataSource::ImageFolder => {
                let s = d.image_size.unwrap();
                (vec![d.channels.unwrap_or(3), s, s], 1000)
            }
            DataSource::Latents => (vec![4, 32, 32], d.num_classes.unwrap()),
            DataSource::Gmm => (vec![2], 0),
            other => panic!("{}: no geometry for {other:?} in this test", f.display()),
        };
        let arch = cfg
            .model
            .resolve(&shape, classes)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        totals.insert(name, parameter_count(&arch).unwrap());
    }
    // torchcfm's CIFAR-10 UNet; SiT-B/2 and SiT-XL/2 as published (pos_embed included).
    assert_eq!(totals["cifar10-unet.toml"], 35_746_307);
    assert_eq!(totals["imagenet256-sit-b-2.toml"], 130_512_416);
    assert_eq!(totals["imagenet256-sit-xl-2.toml"], 675_129_632);
    assert_eq!(totals["imagenet64-jit-b-4.toml"], 130_674_480);
}

// ---------------------------------------------------------------------------------------------
// Time distributions.

#[test]
fn normal_cdf_and_quantile_match_reference_values() {
    use cbs_train::times::{normal_cdf, normal_quantile};
    // scipy.stats.norm.cdf. Relative error ~1e-10 to 5σ and ~1e-8 at 8σ (absolute error
    // below 1e-15): ample for drawing training times.
    for (x, want) in [
        (0.0, 0.5),
        (1.0, 0.841_344_746_068_542_9),
        (-2.0, 0.022_750_131_948_179_195),
        (3.0, 0.998_650_101_968_369_9),
        (-5.0, 2.866_515_718_791_939e-7),
        (-8.0, 6.220_960_574_271_785e-16),
    ] {
        let got = normal_cdf(x);
        assert!(
            ((got - want) / want).abs() < if x < -6.0 { 1e-7 } else { 1e-9 },
            "Φ({x}) = {got}, want {want}"
        );
    }
    for p in [1e-10, 1e-4, 0.02, 0.3, 0.5, 0.8, 0.99, 1.0 - 1e-9] {
        let x = normal_quantile(p);
        assert!(
            ((normal_cdf(x) - p) / p).abs() < 1e-11,
            "Φ(Φ⁻¹({p})) = {}",
            normal_cdf(x)
        );
    }
    assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
}

#[test]
fn time_distributions_follow_the_config_and_the_backbone() {
    use cbs_train::times::TimeDist;
    use cbs_train::TimeSampling;
    let sit = ModelSpec::new("sit-nano-4").resolve(&[1, 8, 8], 3).unwrap();
    let jit = ModelSpec::new("jit-nano-4").resolve(&[1, 8, 8], 3).unwrap();
    let mut tc = cbs_train::TrainSection::default();
    assert_eq!(
        TimeDist::resolve(&tc, &sit),
        TimeDist::Uniform { lo: 0.0, hi: 1.0 }
    );
    let ln = TimeDist::resolve(&tc, &jit);
    assert!(matches!(ln, TimeDist::LogitNormal { mean, std, .. } if mean == -0.8 && std == 0.8));
    // Untruncated: logit(t) has the configured mean and std (quadrature over u).
    let n = 20_000;
    let logits: Vec<f64> = (0..n)
        .map(|i| {
            let t = ln.time((i as f64 + 0.5) / n as f64);
            (t / (1.0 - t)).ln()
        })
        .collect();
    let mean = logits.iter().sum::<f64>() / n as f64;
    let sd = (logits.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    assert!(
        (mean + 0.8).abs() < 1e-3 && (sd - 0.8).abs() < 2e-3,
        "{mean} {sd}"
    );
    // Truncated to an expert's interval: inside it, monotone in u, ends reached.
    tc.t_range = [0.6, 0.7];
    tc.time_sampling = Some(TimeSampling::LogitNormal);
    let d = TimeDist::resolve(&tc, &sit);
    let ts: Vec<f64> = (0..=100).map(|i| d.time(i as f64 / 100.0)).collect();
    assert!(
        (ts[0] - 0.6).abs() < 1e-12 && (ts[100] - 0.7).abs() < 1e-9,
        "{ts:?}"
    );
    assert!(ts.windows(2).all(|w| w[0] < w[1]));
    // Mass shifts towards the mode (sigmoid(−0.8) ≈ 0.31): the median lies below the middle.
    assert!(ts[50] < 0.65);
    tc.time_sampling = Some(TimeSampling::Uniform);
    assert_eq!(
        TimeDist::resolve(&tc, &jit),
        TimeDist::Uniform { lo: 0.6, hi: 0.7 }
    );
}

#[test]
fn time_sampling_config_errors_name_the_field() {
    let text = "[model]\npreset = \"sit-nano-4\"\n[train]\ntime_sampling = \"gamma\"\n";
    let e = TrainConfig::from_toml(text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("time_sampling") || e.contains("gamma"), "{e}");
    assert!(e.contains("uniform") && e.contains("logit_normal"), "{e}");
    let text = "[model]\npreset = \"sit-nano-4\"\n[train]\nlogit_normal = [0.0, -1.0]\n";
    let e = TrainConfig::from_toml(text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.logit_normal"), "{e}");
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
    let a = checkpoint::load_for_inference(
        dir.path(),
        WeightsKind::Model,
        Precision::F32,
        &Device::Cpu,
    )
    .unwrap();
    let b = checkpoint::load_for_inference(
        &s.checkpoint,
        WeightsKind::Ema,
        Precision::F32,
        &Device::Cpu,
    )
    .unwrap();
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
    let e =
        checkpoint::load_for_inference(dir.path(), WeightsKind::Ema, Precision::F32, &Device::Cpu)
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

/// The in-place CPU AdamW (f32, gradient scaling, weight decay, a parameter large enough to
/// be split across threads, one parameter left without a gradient) against the update rule
/// written out in f64, and its state surviving `state_tensors` → `load_state`.
#[test]
fn inplace_adamw_matches_the_update_rule_and_restores() {
    let n = 70_000; // more than one parallel chunk
    let p0: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 1000) as f32 - 500.0) / 250.0)
        .collect();
    let make = || {
        let w = Var::from_tensor(&Tensor::new(p0.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let idle = Var::from_tensor(&Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        (w, idle)
    };
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let (lr, scale) = (0.01, 0.5);
    let (w, idle) = make();
    let vars = vec![
        ("w".to_string(), w.clone()),
        ("idle".to_string(), idle.clone()),
    ];
    let mut opt = AdamW::new(vars, params).unwrap();
    let (mut p, mut m, mut v): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        p0.iter().map(|&x| x as f64).collect(),
        vec![0.0; n],
        vec![0.0; n],
    );
    let step = |opt: &mut AdamW, w: &Var| {
        // loss = Σ w² ⇒ grad = 2w
        let grads = w
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads, lr, scale).unwrap();
    };
    for t in 1..=3 {
        step(&mut opt, &w);
        for i in 0..n {
            let g = scale * 2.0 * p[i];
            p[i] *= 1.0 - lr * params.weight_decay;
            m[i] = params.beta1 * m[i] + (1.0 - params.beta1) * g;
            v[i] = params.beta2 * v[i] + (1.0 - params.beta2) * g * g;
            let (bc1, bc2) = (1.0 - params.beta1.powi(t), 1.0 - params.beta2.powi(t));
            p[i] -= lr / bc1 * m[i] / ((v[i] / bc2).sqrt() + params.eps);
        }
    }
    let got = w.as_tensor().to_vec1::<f32>().unwrap();
    let worst = got
        .iter()
        .zip(&p)
        .map(|(&g, &w)| (g as f64 - w).abs() / w.abs().max(1e-3))
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "worst relative error {worst}");
    assert_eq!(idle.as_tensor().to_vec1::<f32>().unwrap(), [1.5, -2.0]);

    // Save and restore the moments into a fresh optimizer: the next step is bit-identical.
    let saved: std::collections::HashMap<String, Tensor> =
        opt.state_tensors().unwrap().into_iter().collect();
    let exp_avg = saved["exp_avg.w"].to_vec1::<f32>().unwrap();
    for i in (0..n).step_by(997) {
        assert!((exp_avg[i] as f64 - m[i]).abs() <= 1e-5 * m[i].abs().max(1e-3));
    }
    let (w2, idle2) = make();
    w2.set(w.as_tensor()).unwrap();
    let vars2 = vec![("w".to_string(), w2.clone()), ("idle".to_string(), idle2)];
    let mut opt2 = AdamW::new(vars2, params).unwrap();
    opt2.load_state(opt.step, &|k| saved.get(k).map(|t| t.copy().unwrap()))
        .unwrap();
    step(&mut opt, &w);
    step(&mut opt2, &w2);
    assert_eq!(
        w.as_tensor().to_vec1::<f32>().unwrap(),
        w2.as_tensor().to_vec1::<f32>().unwrap()
    );
    let e = opt2
        .load_state(3, &|k| (k != "exp_avg_sq.idle").then(|| saved[k].clone()))
        .unwrap_err();
    assert!(e.contains("exp_avg_sq.idle"), "{e}");
}

/// The in-place EMA and the gradient norm against their formulas.
#[test]
fn inplace_ema_and_grad_norm_match_their_formulas() {
    use cbs_train::ema::Ema;
    let n = 50_000;
    let a: Vec<f32> = (0..n).map(|i| (i % 101) as f32 / 50.0 - 1.0).collect();
    let w = Var::from_tensor(&Tensor::new(a.as_slice(), &Device::Cpu).unwrap()).unwrap();
    let vars = vec![("w".to_string(), w.clone())];
    let mut ema = Ema::new(&vars, 0.9).unwrap();
    let b: Vec<f32> = a.iter().map(|x| 3.0 * x + 1.0).collect();
    w.set(&Tensor::new(b.as_slice(), &Device::Cpu).unwrap())
        .unwrap();
    ema.update(&vars).unwrap();
    let got = ema.tensors[0].1.to_vec1::<f32>().unwrap();
    for i in 0..n {
        let want = 0.9 * a[i] as f64 + 0.1 * b[i] as f64;
        assert!(
            (got[i] as f64 - want).abs() < 1e-6,
            "{i}: {} vs {want}",
            got[i]
        );
    }
    // The EMA is its own copy: updating it leaves the weights alone.
    assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), b);

    let grads = w
        .as_tensor()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let norm = cbs_train::optim::grad_norm(&vars, &grads, cbs_models::Kernels::Fused).unwrap();
    let want = b
        .iter()
        .map(|&x| (2.0 * x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - want).abs() < 1e-9 * want, "{norm} vs {want}");
}

/// The `[data]` sources read from user files: CIFAR-10/100 binary batches, image folders and
/// ADM `.npz`, each from a TOML config and a generated tiny data set.
mod data_sources {
    use std::path::Path;

    use candle_core::{Device, Tensor};
    use cbs_train::{load_dataset, TrainConfig};

    fn config(data: &str) -> cbs_train::Result<TrainConfig> {
        let text = format!("[model]\npreset = \"sit-nano-4\"\n[data]\n{data}");
        Ok(TrainConfig::from_toml(
            &text,
            Path::new("configs/data.toml"),
        )?)
    }

    fn shape_classes_len(data: &str) -> (Vec<usize>, usize, usize) {
        let ds = load_dataset(&config(data).unwrap()).unwrap();
        (ds.sample_shape(), ds.num_classes(), ds.len())
    }

    /// TOML string literal of a path.
    fn lit(p: &Path) -> String {
        format!("{:?}", p.display().to_string())
    }

    /// A CRC-32 (IEEE) for the PNG chunks below.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// A valid 8-bit RGB PNG, pixels deflate-"stored" (cbs-train has no image encoder).
    fn png(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut raw = Vec::new();
        for y in 0..h {
            raw.push(0); // filter: none
            for x in 0..w {
                raw.extend(f(x, y));
            }
        }
        let mut z = vec![0x78, 0x01];
        let chunks: Vec<&[u8]> = raw.chunks(65535).collect();
        for (i, block) in chunks.iter().enumerate() {
            z.push(u8::from(i + 1 == chunks.len()));
            z.extend((block.len() as u16).to_le_bytes());
            z.extend((!(block.len() as u16)).to_le_bytes());
            z.extend(*block);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &v in &raw {
            a = (a + u32::from(v)) % 65521;
            b = (b + a) % 65521;
        }
        z.extend(((b << 16) | a).to_be_bytes());
        let mut ihdr = Vec::new();
        ihdr.extend(w.to_be_bytes());
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", z), (b"IEND", Vec::new())] {
            out.extend((data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend(&data);
            out.extend(&body);
            out.extend(crc32(&body).to_be_bytes());
        }
        out
    }

    #[test]
    fn data_sources_cifar_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let record = |label: &[u8]| [label, &[128u8; 3072][..]].concat();
        for b in 1..=5u8 {
            let bytes = [record(&[b]), record(&[b + 4])].concat();
            std::fs::write(dir.path().join(format!("data_batch_{b}.bin")), bytes).unwrap();
        }
        std::fs::write(dir.path().join("test_batch.bin"), record(&[0])).unwrap();
        std::fs::write(dir.path().join("train.bin"), record(&[3, 77]).repeat(3)).unwrap();
        let d = lit(dir.path());

        let src = format!("source = \"cifar10\"\ndir = {d}\n");
        assert_eq!(shape_classes_len(&src), (vec![3, 32, 32], 10, 10));
        let half = format!("{src}data_fraction = 0.5\n");
        assert_eq!(shape_classes_len(&half).2, 5);
        assert_eq!(shape_classes_len(&format!("{src}split = \"test\"\n")).2, 1);
        let cifar100 = format!("source = \"cifar100\"\ndir = {d}\n");
        assert_eq!(shape_classes_len(&cifar100), (vec![3, 32, 32], 100, 3));

        // No default location: the error names data.dir and the files.
        let e = config("source = \"cifar10\"\n").unwrap_err().to_string();
        assert!(
            e.contains("data.dir") && e.contains("data_batch_1.bin"),
            "{e}"
        );
        let e = config("source = \"cifar100\"\n").unwrap_err().to_string();
        assert!(e.contains("data.dir") && e.contains("train.bin"), "{e}");
        // A folder without the files: the loader names the missing file.
        let empty = tempfile::tempdir().unwrap();
        let cfg = config(&format!(
            "source = \"cifar10\"\ndir = {}\n",
            lit(empty.path())
        ));
        let e = load_dataset(&cfg.unwrap()).err().unwrap().to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
    }

    #[test]
    fn data_sources_image_folder_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("bird", 3u8), ("fish", 2)] {
            let sub = dir.path().join(class);
            std::fs::create_dir(&sub).unwrap();
            for i in 0..n {
                let bytes = png(20, 12, |x, y| [x as u8 * 9, y as u8 * 20, i * 50]);
                std::fs::write(sub.join(format!("{i}.png")), bytes).unwrap();
            }
        }
        let src = format!("source = \"image_folder\"\ndir = {}\n", lit(dir.path()));
        let rgb = format!("{src}image_size = 8\n");
        assert_eq!(shape_classes_len(&rgb), (vec![3, 8, 8], 2, 5));
        let gray = format!("{src}image_size = 8\nchannels = 1\ndata_fraction = 0.4\n");
        assert_eq!(shape_classes_len(&gray), (vec![1, 8, 8], 2, 2));
        let cfg = config(&gray).unwrap();
        let back = TrainConfig::from_toml(&cfg.to_toml(), Path::new("run/config.toml"));
        assert_eq!(back.unwrap(), cfg, "the saved config reloads");
        let ds = load_dataset(&config(&rgb).unwrap()).unwrap();
        let (x, y) = ds.batch(&[0, 4], &[false, true]).unwrap();
        assert_eq!(y, vec![0, 1]);
        assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));

        let e = config(&src).unwrap_err().to_string();
        assert!(
            e.contains("data.image_size") && e.contains("(unset)"),
            "{e}"
        );
        let e = config(&format!("{rgb}channels = 2\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.channels") && e.contains('2'), "{e}");
        let e = config(&format!("{src}image_size = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.image_size"), "{e}");
        let e = config(&format!("{src}image_size = \"big\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("image_size"), "{e}");
        let e = config("source = \"image_folder\"\nimage_size = 8\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.dir"), "{e}");
    }

    #[test]
    fn data_sources_npz_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.npz");
        let pixels: Vec<u8> = (0..4 * 6 * 6 * 3).map(|i| (i % 256) as u8).collect();
        let images = Tensor::from_vec(pixels, (4, 6, 6, 3), &Device::Cpu).unwrap();
        let labels = Tensor::new(&[2i64, 0, 5, 1], &Device::Cpu).unwrap();
        Tensor::write_npz(&[("arr_0", &images), ("arr_1", &labels)], &path).unwrap();

        let src = format!("source = \"npz\"\npath = {}\n", lit(&path));
        assert_eq!(shape_classes_len(&src), (vec![3, 6, 6], 6, 4));
        let declared = format!("{src}num_classes = 10\ndata_fraction = 0.5\n");
        assert_eq!(shape_classes_len(&declared), (vec![3, 6, 6], 10, 2));
        let e = load_dataset(&config(&format!("{src}num_classes = 4\n")).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("samples.npz") && e.contains("label 5"), "{e}");

        let e = config("source = \"npz\"\n").unwrap_err().to_string();
        assert!(e.contains("data.path"), "{e}");
        let e = config(&format!("source = \"npz\"\ndir = {}\n", lit(dir.path())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.path"), "{e}");
        let e = config(&format!("{src}num_classes = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.num_classes"), "{e}");
        std::fs::write(&path, b"truncated").unwrap();
        let e = load_dataset(&config(&src).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("samples.npz") && e.contains(".npz"), "{e}");
    }

    #[test]
    fn data_sources_reject_misplaced_or_unknown_settings() {
        for (data, field) in [
            ("image_size = 32\n", "data.image_size"),
            ("channels = 1\n", "data.channels"),
            ("path = \"x.npz\"\n", "data.path"),
            (
                "source = \"cifar10\"\ndir = \"d\"\nnum_classes = 3\n",
                "data.num_classes",
            ),
            (
                "source = \"gmm\"\ngmm = \"g.json\"\nimage_size = 8\n",
                "data.image_size",
            ),
        ] {
            let e = config(data).unwrap_err().to_string();
            assert!(
                e.contains(field) && e.contains("only read by"),
                "{data}: {e}"
            );
        }
        let e = config("source = \"cifar\"\n").unwrap_err().to_string();
        assert!(e.contains("cifar10") && e.contains("image_folder"), "{e}");
        let e = config("source = \"npz\"\npath = \"a.npz\"\nlabels = \"arr_1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("labels"), "{e}");
    }
}

/// A stop request (what SIGINT/SIGTERM set) ends training after the current step with that
/// step's checkpoint; resuming from it finishes with exactly the uninterrupted run's weights.
#[test]
fn a_stop_request_checkpoints_the_step_and_resumes_exactly() {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let cfg = toy_config(8); // checkpoints every 3 steps: step 4 is not one of them
    let full = tempfile::tempdir().unwrap();
    run(full.path(), &cfg, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        stop: Some(&STOP),
        ..TrainOptions::default()
    };
    let e = train(dir.path(), &cfg, &toy_data(), &opts, &mut |r| {
        if r.step == 4 {
            STOP.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap_err();
    let TrainError::Interrupted { step, checkpoint } = &e else {
        panic!("expected Interrupted, got {e}");
    };
    assert_eq!(*step, 5, "the step running when the stop came is finished");
    let ck = checkpoint.clone().expect("a checkpoint of the last step");
    assert!(ck.ends_with("step-00000005"), "{}", ck.display());
    assert!(e.to_string().contains("--resume"), "{e}");
    STOP.store(false, std::sync::atomic::Ordering::SeqCst);
    run(dir.path(), &cfg, true).unwrap();
    let last = |d: &Path| checkpoint::latest(d).unwrap().unwrap();
    for f in [
        checkpoint::MODEL_FILE,
        checkpoint::EMA_FILE,
        checkpoint::OPTIMIZER_FILE,
    ] {
        assert_eq!(
            bits(&last(full.path()).join(f)),
            bits(&last(dir.path()).join(f)),
            "{f}"
        );
    }
}

/// One writer per run directory: a second is refused with the holder named; the lock goes
/// with its holder.
#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let held = cbs_run::RunLock::acquire(dir.path()).unwrap();
    let e = run(dir.path(), &toy_config(3), false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("in use by process") && msg.contains(&std::process::id().to_string()),
        "{msg}"
    );
    assert!(
        checkpoint::latest(dir.path()).unwrap().is_none(),
        "nothing written"
    );
    drop(held);
    run(dir.path(), &toy_config(3), false).unwrap();
}

/// Diverging training never leaves non-finite weights or optimizer state in a checkpoint.
#[test]
fn checkpoints_after_a_divergence_hold_only_finite_values() {
    for preset in ["sit-nano-4", "mlp-64"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = toy_config(20);
        if preset == "mlp-64" {
            cfg = backbone_config("mlp-64", 20);
        }
        cfg.train.lr = 1e6;
        cfg.train.warmup_steps = 0;
        cfg.train.grad_clip = 0.0;
        cfg.train.checkpoint_every = 1;
        let opts = TrainOptions::default();
        let res = if preset == "mlp-64" {
            let pts: Vec<f32> = (0..256)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let data = cbs_data::PointDataset::new(pts, 2).unwrap();
            train(dir.path(), &cfg, &data, &opts, &mut |_| {})
        } else {
            train(dir.path(), &cfg, &toy_data(), &opts, &mut |_| {})
        };
        // Either the run stops (non-finite loss, gradient or state) or it completes; what is
        // on disk is finite either way.
        if let Err(e) = &res {
            let s = e.to_string();
            assert!(
                s.contains("non-finite") || s.contains("became"),
                "{preset}: {s}"
            );
        }
        if let Some(ck) = checkpoint::latest(dir.path()).unwrap() {
            for f in [
                checkpoint::MODEL_FILE,
                checkpoint::EMA_FILE,
                checkpoint::OPTIMIZER_FILE,
            ] {
                let map = cbs_models::weights::load_safetensors(&ck.join(f), &Device::Cpu).unwrap();
                for (name, t) in map {
                    let v = t
                        .flatten_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap();
                    assert!(v.iter().all(|x| x.is_finite()), "{preset}: {f} `{name}`");
                }
            }
        }
    }
}

/// `latest` may only name a checkpoint directory of the run, and stale half-written
/// checkpoints of any step are cleared before the next write.
#[test]
fn latest_stays_inside_the_run_and_stale_temporaries_are_cleared() {
    let other = tempfile::tempdir().unwrap();
    run(other.path(), &toy_config(3), false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), &toy_config(3), false).unwrap();
    let pointer = checkpoint::checkpoints_dir(dir.path()).join(checkpoint::LATEST_FILE);
    let escape = format!("../../{}/checkpoints/step-00000003", other.path().display());
    std::fs::write(&pointer, &escape).unwrap();
    let e = checkpoint::latest(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a checkpoint name"), "{e}");
    std::fs::write(&pointer, "step-00000003").unwrap();
    let stale = checkpoint::checkpoints_dir(dir.path()).join("step-00000001.tmp");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), vec![0u8; 1000]).unwrap();
    run(dir.path(), &toy_config(6), true).unwrap();
    assert!(
        !stale.exists(),
        "a stale temporary checkpoint of another step is removed"
    );
}

/// The weights of every variable, by name, as bits.
fn var_bits(st: &cbs_train::step::Stepper) -> Vec<(String, Vec<u32>)> {
    let mut v: Vec<(String, Vec<u32>)> = st
        .vars
        .iter()
        .map(|(k, var)| {
            let f = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k.clone(), f.into_iter().map(f32::to_bits).collect())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn init_from_starts_from_a_checkpoint_or_a_pytorch_file() {
    let trained = tempfile::tempdir().unwrap();
    run(trained.path(), &toy_config(6), false).unwrap();
    let ckpt = checkpoint::latest(trained.path()).unwrap().unwrap();
    let arch = toy_config(1).model.resolve(&[1, 8, 8], 3).unwrap();
    let only_vars = |file: &Path, st: &cbs_train::step::Stepper| -> Vec<(String, Vec<u32>)> {
        let names: Vec<&String> = st.vars.iter().map(|(k, _)| k).collect();
        bits(file)
            .into_iter()
            .filter(|(k, _)| names.contains(&k))
            .collect()
    };
    for which in [WeightsKind::Ema, WeightsKind::Model] {
        let mut tc = toy_config(1).train;
        tc.init_from = Some(trained.path().to_path_buf());
        tc.init_weights = which;
        let mut st = cbs_train::step::Stepper::new(&arch, &tc, &Device::Cpu).unwrap();
        let fresh = var_bits(&st);
        let source = st.init_from(&tc).unwrap().unwrap();
        assert!(source.contains(which.file_name()), "{source}");
        let want = only_vars(&ckpt.join(which.file_name()), &st);
        assert_eq!(var_bits(&st), want, "{which:?}");
        assert_ne!(var_bits(&st), fresh);
    }
    // A model of another interpolation path is refused (its velocity is another field).
    let mut tc = toy_config(1).train;
    tc.init_from = Some(trained.path().to_path_buf());
    tc.path = cbs_flow::path::Interpolant::Gvp;
    let mut st = cbs_train::step::Stepper::new(&arch, &tc, &Device::Cpu).unwrap();
    let e = st.init_from(&tc).unwrap_err().to_string();
    assert!(e.contains("train.init_from") && e.contains("linear"), "{e}");
    // The same EMA weights in JiT's checkpoint layout (`model_ema1`, keys under `net.`).
    let ema =
        cbs_models::weights::load_safetensors(&ckpt.join("ema.safetensors"), &Device::Cpu).unwrap();
    let sd = |prefix: &str| {
        cbs_torch::write::Value::OrderedDict(
            ema.iter()
                .map(|(k, t)| {
                    (
                        format!("{prefix}{k}"),
                        cbs_torch::write::Value::Tensor(t.clone()),
                    )
                })
                .collect(),
        )
    };
    let file = trained.path().join("checkpoint-6.pth");
    let value = cbs_torch::write::Value::Dict(vec![
        ("model_ema1".into(), sd("net.")),
        ("model".into(), sd("net.")),
    ]);
    cbs_torch::write::save(&file, &value, cbs_torch::Format::Zip).unwrap();
    let mut tc = toy_config(1).train;
    tc.init_from = Some(file.clone());
    let mut st = cbs_train::step::Stepper::new(&arch, &tc, &Device::Cpu).unwrap();
    let source = st.init_from(&tc).unwrap().unwrap();
    assert!(source.contains("model_ema1"), "{source}");
    assert_eq!(var_bits(&st), only_vars(&ckpt.join("ema.safetensors"), &st));

    // A run started from trained weights starts at a lower loss than a fresh one.
    let fresh = tempfile::tempdir().unwrap();
    let warm = tempfile::tempdir().unwrap();
    let a = run(fresh.path(), &toy_config(2), false).unwrap();
    let mut cfg = toy_config(2);
    cfg.train.init_from = Some(trained.path().to_path_buf());
    let b = run(warm.path(), &cfg, false).unwrap();
    assert!(
        b.losses[0].1 < a.losses[0].1,
        "{:?} vs {:?}",
        b.losses,
        a.losses
    );
    // The config records where the weights came from.
    let stored = TrainConfig::from_file(&warm.path().join("config.toml")).unwrap();
    assert_eq!(stored.train.init_from.as_deref(), Some(trained.path()));

    // Another architecture: a clear error naming the file and the shape.
    let other = ModelSpec::new("sit-nano-2").resolve(&[1, 8, 8], 3).unwrap();
    let mut tc = toy_config(1).train;
    tc.init_from = Some(trained.path().to_path_buf());
    let mut st = cbs_train::step::Stepper::new(&other, &tc, &Device::Cpu).unwrap();
    let err = st.init_from(&tc).err().unwrap().to_string();
    assert!(
        err.contains("ema.safetensors") && err.contains("shape"),
        "{err}"
    );
}

/// ERD and Min-SNR weights: ERD-l1 leaves the linear-path velocity loss unweighted, ERD-rms is
/// √(t² + (1 − t)²) there, JiT's l1 is ∝ t; every weighting has mean 1 under the run's time
/// distribution (per interval by default, over [0, 1] with `global`).
#[test]
fn loss_weights_follow_erd_and_are_normalised() {
    use cbs_train::config::{LossWeighting, WeightNorm};
    use cbs_train::times::TimeDist;
    use cbs_train::weighting::LossWeights;
    let sit = ModelSpec::new("sit-nano-4").resolve(&[1, 8, 8], 3).unwrap();
    let jit = ModelSpec::new("jit-nano-4").resolve(&[1, 8, 8], 3).unwrap();
    let mut tc = cbs_train::TrainSection::default();
    assert!(LossWeights::resolve(&tc, &sit).is_none());
    tc.loss_weighting = LossWeighting::ErdL1;
    let w = LossWeights::resolve(&tc, &sit).unwrap();
    for t in [0.0, 0.3, 0.9] {
        assert!((w.weight(t) - 1.0).abs() < 1e-12);
    }
    tc.loss_weighting = LossWeighting::ErdRms;
    let w = LossWeights::resolve(&tc, &sit).unwrap();
    let ratio = w.weight(0.5) / w.weight(0.0);
    assert!((ratio - 0.5f64.sqrt()).abs() < 1e-12, "{ratio}");
    tc.loss_weighting = LossWeighting::ErdL1;
    let w = LossWeights::resolve(&tc, &jit).unwrap();
    assert!((w.weight(0.8) / w.weight(0.2) - 4.0).abs() < 1e-9);

    // Mean 1 under the distribution the weights were normalised for.
    let mean_under = |w: &LossWeights, d: &TimeDist| {
        let n = 100_000;
        (0..n)
            .map(|i| w.weight(d.time((i as f64 + 0.5) / n as f64)))
            .sum::<f64>()
            / n as f64
    };
    for (kind, path) in [
        (LossWeighting::ErdRms, cbs_flow::path::Interpolant::Linear),
        (LossWeighting::MinSnr, cbs_flow::path::Interpolant::Linear),
        (LossWeighting::ErdL1, cbs_flow::path::Interpolant::Gvp),
    ] {
        tc.loss_weighting = kind;
        tc.path = path;
        tc.t_range = [0.6, 1.0];
        tc.loss_weighting_norm = WeightNorm::Interval;
        let w = LossWeights::resolve(&tc, &sit).unwrap();
        let d = TimeDist::resolve(&tc, &sit);
        assert!((mean_under(&w, &d) - 1.0).abs() < 1e-6, "{kind:?} interval");
        tc.loss_weighting_norm = WeightNorm::Global;
        let wg = LossWeights::resolve(&tc, &sit).unwrap();
        let mut all = tc.clone();
        all.t_range = [0.0, 1.0];
        let dg = TimeDist::resolve(&all, &sit);
        assert!((mean_under(&wg, &dg) - 1.0).abs() < 1e-6, "{kind:?} global");
        assert!(
            (mean_under(&wg, &d) - 1.0).abs() > 1e-3,
            "{kind:?}: the two norms differ"
        );
    }
    // Min-SNR-γ for velocity targets: min(SNR, γ)/(SNR + 1) (linear: SNR = t²/(1 − t)²).
    tc.loss_weighting = LossWeighting::MinSnr;
    tc.path = cbs_flow::path::Interpolant::Linear;
    tc.t_range = [0.0, 1.0];
    let w = LossWeights::resolve(&tc, &sit).unwrap();
    let snr = |t: f64| (t / (1.0 - t)).powi(2);
    let want = |t: f64| snr(t).min(5.0) / (snr(t) + 1.0);
    assert!((w.omega(0.3) - want(0.3)).abs() < 1e-12);
    assert!((w.omega(0.9) - want(0.9)).abs() < 1e-12);
}

/// The weighted loss of a step is the mean of `w_b` times each sample's squared error.
#[test]
fn weighted_step_loss_is_the_weighted_mean() {
    use cbs_train::step::{Batch, StepOutcome, Stepper};
    let cfg = toy_config(1);
    let arch = cfg.model.resolve(&[1, 8, 8], 3).unwrap();
    let dev = Device::Cpu;
    let mut st = Stepper::new(&arch, &cfg.train, &dev).unwrap();
    let r = |seed: u64| Tensor::randn(0f32, 1.0, (4, 1, 8, 8), &dev).unwrap() * (seed as f64);
    let w = [0.5f32, 2.0, 1.0, 0.25];
    let batch = Batch {
        x0: r(1).unwrap(),
        x1: r(1).unwrap(),
        t: Tensor::new(&[0.1f32, 0.4, 0.6, 0.95], &dev).unwrap(),
        y: Tensor::new(&[0u32, 1, 2, 0], &dev).unwrap(),
        dropout_seed: 0,
        w: Some(Tensor::new(&w, &dev).unwrap()),
    };
    let StepOutcome::Updated {
        loss, per_sample, ..
    } = st.step(&batch, 0.0).unwrap()
    else {
        panic!("non-finite")
    };
    let want: f64 = per_sample
        .iter()
        .zip(w)
        .map(|(l, w)| f64::from(*l) * f64::from(w))
        .sum::<f64>()
        / 4.0;
    assert!((loss - want).abs() < 1e-5 * want, "{loss} vs {want}");
}

/// A weighted run trains and logs the per-time-bin losses.
#[test]
fn weighted_training_logs_loss_per_time_bin() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = toy_config(4);
    cfg.train.loss_weighting = cbs_train::config::LossWeighting::ErdRms;
    run(dir.path(), &cfg, false).unwrap();
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let bins = first["loss_t_bins"].as_array().unwrap();
    assert_eq!(bins.len(), cbs_train::LOSS_T_BINS);
    let filled: Vec<f64> = bins.iter().filter_map(|b| b.as_f64()).collect();
    // One step of 8 samples: at most 8 bins have a loss, each positive.
    assert!(!filled.is_empty() && filled.len() <= 8);
    assert!(filled.iter().all(|&l| l > 0.0 && l.is_finite()));
}
