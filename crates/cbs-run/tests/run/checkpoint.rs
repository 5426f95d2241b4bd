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
