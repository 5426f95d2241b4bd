//! A full disk while a checkpoint is written, simulated through the writer seam
//! ([`write_through`]): no test fills a real disk.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::*;

fn config() -> TrainConfig {
    let text = "[model]\npreset = \"mlp-64\"\n[data]\nsource = \"gmm\"\ngmm = \"g.json\"\n";
    TrainConfig::from_toml(text, Path::new("c.toml")).unwrap()
}

fn state(step: u64) -> CheckpointState {
    CheckpointState {
        format_version: FORMAT_VERSION,
        step,
        rng: RngState {
            algorithm: "chacha8".into(),
            seed: 0,
            next_stream: step,
        },
        optimizer_step: step,
        last_loss: 0.5,
        architecture: cbs_models::ModelSpec::new("mlp-64")
            .resolve(&[2], 0)
            .unwrap(),
    }
}

fn tensors() -> Vec<(String, Tensor)> {
    vec![
        (
            "a".into(),
            Tensor::ones((64, 16), DType::F32, &Device::Cpu).unwrap(),
        ),
        (
            "b".into(),
            Tensor::ones(16, DType::F32, &Device::Cpu).unwrap(),
        ),
    ]
}

/// Writes the checkpoint of `step` through `write_file`; returns the result and the bytes the
/// checkpoint needs, computed here independently of the writer.
fn write_step(run: &Path, step: u64, write_file: WriteFile) -> (Result<PathBuf>, u64) {
    let (st, cfg, t) = (state(step), config(), tensors());
    let data = CheckpointData {
        state: &st,
        config: &cfg,
        model: &t,
        ema: &t,
        optimizer: &t,
    };
    let needed = 3 * (64 * 16 + 16) * 4
        + serde_json::to_string_pretty(&st).unwrap().len() as u64
        + cfg.to_toml().len() as u64;
    (write_through(run, &data, 3, write_file), needed)
}

/// ENOSPC as candle reports it from inside the safetensors writer: an `io::Error` under the
/// backtrace wrapper that hides its cause from `source()`.
fn enospc_from_candle(path: &Path) -> atomic::AtomicError {
    let io = std::io::Error::from_raw_os_error(ENOSPC);
    atomic::AtomicError {
        path: path.to_path_buf(),
        action: "writing",
        source: Box::new(candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Io(io)),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        }),
    }
}

#[test]
fn a_full_disk_says_what_the_checkpoint_needs_and_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let (first, _) = write_step(run, 1, &write_file_to_disk);
    let first = first.unwrap();
    // The disk fills up half-way through the optimizer state of step 2.
    let fail_on_optimizer = |path: &Path, content: FileContent| {
        if path.file_name().unwrap() == OPTIMIZER_FILE {
            std::fs::write(atomic::temp_path(path), b"partial").unwrap();
            return Err(enospc_from_candle(path));
        }
        write_file_to_disk(path, content)
    };
    let (result, needed) = write_step(run, 2, &fail_on_optimizer);
    let e = result.unwrap_err();
    assert!(
        matches!(&e, RunError::DiskFull { needed: n, previous: Some(p), .. }
            if *n == needed && *p == first),
        "{e:?}"
    );
    let text = e.to_string();
    for part in [
        "step-00000002: no space left on the device",
        &format!("({needed} bytes)"),
        " are free on that file system",
        &format!("previous checkpoint {} is intact", first.display()),
        "--resume",
    ] {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }
    assert_eq!(latest(run).unwrap(), Some(first), "latest unchanged");
    let root = checkpoints_dir(run);
    assert!(
        !root.join("step-00000002.tmp").exists(),
        "partial files removed"
    );
    assert!(!root.join("step-00000002").exists());
}

/// The real writer meets a real ENOSPC: the temporary file of `state.json` is a link to
/// `/dev/full`, where every write fails with "No space left on device".
#[cfg(target_os = "linux")]
#[test]
fn a_real_enospc_from_the_disk_writer_is_recognised() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let into_dev_full = |path: &Path, content: FileContent| {
        if path.file_name().unwrap() == STATE_FILE {
            std::os::unix::fs::symlink("/dev/full", atomic::temp_path(path)).unwrap();
        }
        write_file_to_disk(path, content)
    };
    let (result, needed) = write_step(run, 7, &into_dev_full);
    let e = result.unwrap_err();
    assert!(
        matches!(&e, RunError::DiskFull { needed: n, previous: None, free: Some(_), .. }
            if *n == needed),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("No earlier checkpoint exists"),
        "{e}"
    );
    assert_eq!(latest(run).unwrap(), None);
    assert!(!checkpoints_dir(run).join("step-00000007.tmp").exists());
}

#[test]
fn other_write_errors_are_not_called_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let denied = |path: &Path, _: FileContent| -> atomic::Result<()> {
        Err(atomic::AtomicError {
            path: path.to_path_buf(),
            action: "creating",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        })
    };
    let (result, _) = write_step(run, 3, &denied);
    let e = result.unwrap_err();
    assert!(matches!(e, RunError::Write(_)), "{e:?}");
    assert!(!checkpoints_dir(run).join("step-00000003.tmp").exists());
}

#[test]
fn disk_full_message_without_a_previous_checkpoint_or_free_space() {
    let text = disk_full_message(
        Path::new("r/checkpoints/step-00000001"),
        3 << 20,
        None,
        None,
    );
    assert!(
        text.contains("needs 3.0 MiB (3145728 bytes) and the free space is unknown"),
        "{text}"
    );
    assert!(text.contains("run the same command again"), "{text}");
    assert!(!text.contains("--resume"), "nothing to resume: {text}");
    let text = disk_full_message(
        Path::new("r/checkpoints/step-00000002"),
        2048,
        Some(1000),
        Some(Path::new("r/checkpoints/step-00000001")),
    );
    assert!(text.contains("1000 bytes are free"), "{text}");
    assert!(
        text.contains("Free at least 1.0 KiB (1048 bytes) more there"),
        "{text}"
    );
}
