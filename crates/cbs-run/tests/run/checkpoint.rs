use std::path::Path;

use candle_core::{DType, Device, Tensor};
use cbs_models::spec::Trainable;
use cbs_models::{ModelSpec, Precision};
use cbs_run::checkpoint::{self, checkpoints_dir, CheckpointData, CheckpointState, FORMAT_VERSION};
use cbs_run::{RngState, TrainConfig, WeightsKind};

fn config() -> TrainConfig {
    let text = "[model]\npreset = \"mlp-64\"\n[data]\nsource = \"gmm\"\ngmm = \"g.json\"\n";
    TrainConfig::from_toml(text, Path::new("c.toml")).unwrap()
}

/// Writes the checkpoint of `step` with real weights of an mlp-64 on 2-D points.
fn write_step(run: &Path, step: u64, keep: usize) -> std::path::PathBuf {
    let arch = ModelSpec::new("mlp-64").resolve(&[2], 0).unwrap();
    let net = Trainable::new(
        &arch,
        cbs_models::Kernels::Fused,
        step,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let tensors: Vec<(String, Tensor)> = net
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let state = CheckpointState {
        format_version: FORMAT_VERSION,
        step,
        rng: RngState {
            algorithm: "chacha8".into(),
            seed: 0,
            next_stream: step,
        },
        optimizer_step: step,
        last_loss: 0.5,
        architecture: arch,
    };
    let cfg = config();
    checkpoint::write(
        run,
        &CheckpointData {
            state: &state,
            config: &cfg,
            model: &tensors,
            ema: &tensors,
            optimizer: &[],
        },
        keep,
    )
    .unwrap()
}

#[test]
fn checkpoints_commit_whole_directories_and_latest_follows() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    assert_eq!(checkpoint::latest(run).unwrap(), None);
    let first = write_step(run, 1, 2);
    assert_eq!(checkpoint::latest(run).unwrap(), Some(first.clone()));
    write_step(run, 2, 2);
    let third = write_step(run, 3, 2);
    assert_eq!(checkpoint::latest(run).unwrap(), Some(third.clone()));
    assert!(!first.exists(), "pruned to the newest two");
    let mut names: Vec<String> = std::fs::read_dir(checkpoints_dir(run))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["latest", "step-00000002", "step-00000003"]);
    let mut files: Vec<String> = std::fs::read_dir(&third)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "config.toml",
            "ema.safetensors",
            "model.safetensors",
            "optimizer.safetensors",
            "state.json"
        ]
    );
    assert_eq!(checkpoint::read_state(&third).unwrap().step, 3);
    assert_eq!(checkpoint::read_config(&third).unwrap(), config());
    // A run directory resolves to its latest checkpoint, which loads for inference.
    assert_eq!(checkpoint::resolve(run).unwrap(), third);
    let m = checkpoint::load_for_inference(run, WeightsKind::Model, Precision::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(m.state.step, 3);
}

#[test]
fn an_interrupted_checkpoint_is_invisible_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let good = write_step(run, 4, 3);
    // A crash while writing step 5 leaves its temporary directory behind.
    let tmp = checkpoints_dir(run).join("step-00000005.tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("model.safetensors"), b"partial").unwrap();
    assert_eq!(checkpoint::latest(run).unwrap(), Some(good));
    let fresh = write_step(run, 5, 3);
    assert!(!tmp.exists());
    assert_eq!(checkpoint::latest(run).unwrap(), Some(fresh));
}

/// Non-finite weights are refused both ways: a checkpoint holding them is never written, and
/// one that holds them anyway (written by something else) is not loaded for sampling.
#[test]
fn non_finite_weights_are_neither_written_nor_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let ck = write_step(run, 1, 3);
    let ema = cbs_models::weights::load_safetensors(&ck.join(checkpoint::EMA_FILE), &Device::Cpu)
        .unwrap();
    let mut tensors: Vec<(String, Tensor)> = ema.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let (name, t) = tensors[0].clone();
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[1] = f32::NAN;
    tensors[0].1 = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
    // Written behind the checkpoint writer's back:
    cbs_models::weights::save_safetensors(&ck.join(checkpoint::EMA_FILE), &tensors).unwrap();
    let e = checkpoint::load_for_inference(run, WeightsKind::Ema, Precision::F32, &Device::Cpu)
        .err()
        .expect("NaN weights must not load")
        .to_string();
    assert!(e.contains(&format!("`{name}`")) && e.contains("NaN"), "{e}");
    assert!(e.contains("refusing to load"), "{e}");
    // The raw weights are still fine.
    checkpoint::load_for_inference(run, WeightsKind::Model, Precision::F32, &Device::Cpu).unwrap();
    // And the writer refuses them.
    let state = checkpoint::read_state(&ck).unwrap();
    let cfg = config();
    let e = checkpoint::write(
        run,
        &CheckpointData {
            state: &CheckpointState { step: 2, ..state },
            config: &cfg,
            model: &tensors,
            ema: &tensors,
            optimizer: &[],
        },
        3,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("was not written"), "{e}");
    assert_eq!(
        checkpoint::latest(run).unwrap(),
        Some(ck),
        "latest unchanged"
    );
}
