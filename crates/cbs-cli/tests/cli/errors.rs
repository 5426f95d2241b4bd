//! Error messages on bad inputs, with backtraces switched on in the environment: each names
//! the file, says each cause once, and carries no backtrace unless `-v` is given.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

use super::{stderr, trained_fake_run};

/// `cbs` with `RUST_BACKTRACE=1`, which makes candle capture a backtrace into its errors.
fn cbs_bt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cbs"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("run cbs")
}

/// A failure whose message names `file`, holds no backtrace and no repeated segment; returns
/// the message.
fn assert_clean_failure(o: &Output, file: &str, what: &str) -> String {
    let e = stderr(o);
    assert!(!o.status.success(), "{what}: should fail\n{e}");
    assert!(!e.contains("panicked"), "{what}: {e}");
    assert!(
        !e.contains("stack backtrace") && !e.contains("   0: ") && !e.contains(" at /"),
        "{what}: backtrace in the message:\n{e}"
    );
    let message = e
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("{what}: no `error: ` line in\n{e}"));
    // The rest of the message (a TOML error's caret lines) follows on further lines.
    let message = &e[e.find(message).unwrap()..];
    let segments: Vec<&str> = message.split(": ").collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(
            !segments[i + 1..].contains(s),
            "{what}: `{s}` repeated in: {message}"
        );
    }
    assert!(
        message.contains(file),
        "{what}: `{file}` not named: {message}"
    );
    message.to_string()
}

/// Replaces `file` by its first `keep` bytes.
fn truncate(file: &Path, keep: usize) {
    let bytes = std::fs::read(file).unwrap();
    std::fs::write(file, &bytes[..keep.min(bytes.len())]).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn broken_inputs_give_one_clean_message_each() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (cfg, run) = trained_fake_run(root, &[]);
    let ckpt = run.join("checkpoints/step-00000004");
    let out = root.join("out");
    let out = out.to_str().unwrap();
    let sample = |checkpoint: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--num",
            "2",
            "--steps",
            "2",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        cbs_bt(&args)
    };

    // Missing data: the configured directory is named.
    let no_data = root.join("no-data.toml");
    std::fs::write(
        &no_data,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("fashion", "nowhere"),
    )
    .unwrap();
    let o = cbs_bt(&[
        "train-aux",
        "--config",
        no_data.to_str().unwrap(),
        "--out",
        out,
    ]);
    assert_clean_failure(&o, "nowhere", "missing data");

    // A config field of the wrong type.
    let bad_field = root.join("bad-field.toml");
    std::fs::write(
        &bad_field,
        "[model]\npreset = \"sit-nano-4\"\n[train]\nbatch_size = \"four\"\n",
    )
    .unwrap();
    let o = cbs_bt(&[
        "train-aux",
        "--config",
        bad_field.to_str().unwrap(),
        "--out",
        out,
    ]);
    let m = assert_clean_failure(&o, "bad-field.toml", "bad config field");
    assert!(m.contains("batch_size"), "{m}");

    // A checkpoint whose EMA weights were cut short.
    let cut = root.join("cut");
    copy_dir(&ckpt, &cut);
    truncate(&cut.join("ema.safetensors"), 100);
    let o = sample(&cut, &[]);
    assert_clean_failure(&o, "ema.safetensors", "truncated safetensors");

    // The same, met by --resume.
    let cut_run = root.join("cut-run");
    copy_dir(&run, &cut_run);
    truncate(
        &cut_run.join("checkpoints/step-00000004/model.safetensors"),
        64,
    );
    let o = cbs_bt(&[
        "train-aux",
        "--out",
        cut_run.to_str().unwrap(),
        "--resume",
        "--steps",
        "6",
    ]);
    assert_clean_failure(&o, "model.safetensors", "truncated safetensors on resume");

    // A checkpoint whose weights have other shapes than its architecture.
    let wrong = root.join("wrong-shape");
    copy_dir(&ckpt, &wrong);
    let ema = wrong.join("ema.safetensors");
    let mut tensors = candle_core::safetensors::load(&ema, &Device::Cpu).unwrap();
    let name = tensors.keys().min().unwrap().clone();
    let t = tensors[&name].clone();
    tensors.insert(
        name.clone(),
        Tensor::zeros(t.elem_count() + 1, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &ema).unwrap();
    let o = sample(&wrong, &[]);
    let m = assert_clean_failure(&o, "ema.safetensors", "wrong shape");
    assert!(m.contains(&name), "{m}");

    // --noise files that are not what they should be.
    let garbage = root.join("garbage.npy");
    std::fs::write(&garbage, b"\x93NUMPY\x01\x00garbage").unwrap();
    let o = sample(&run, &["--noise", garbage.to_str().unwrap()]);
    assert_clean_failure(&o, "garbage.npy", "garbage --noise");
    let wrong_noise = root.join("wrong-noise.npy");
    Tensor::zeros((3, 1, 32, 32), DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(&wrong_noise)
        .unwrap();
    let o = sample(&run, &["--noise", wrong_noise.to_str().unwrap()]);
    assert_clean_failure(&o, "wrong-noise.npy", "wrong --noise shape");

    // Weights that are not a PyTorch file: the reader's error used to follow its own text a
    // second time.
    let images = root.join("images");
    let o = cbs_bt(&[
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--num",
        "2",
        "--steps",
        "2",
        "--out",
        images.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pth = root.join("legacy.pth");
    std::fs::write(&pth, b"\x80\x02garbage").unwrap();
    let images = images.to_str().unwrap();
    let o = cbs_bt(&[
        "eval-fid",
        images,
        images,
        "--inception",
        pth.to_str().unwrap(),
    ]);
    let m = assert_clean_failure(&o, "legacy.pth", "bad Inception weights");
    assert_eq!(m.matches("legacy.pth").count(), 1, "{m}");

    // -v adds log lines and any backtrace the message left out, never a second copy of it.
    let o = sample(&cut, &["-v"]);
    let m = assert_clean_failure_verbose(&o);
    assert!(m.contains("ema.safetensors"), "{m}");
}

/// Under -v: the `error: ` line says each segment once (what follows it may be a backtrace).
fn assert_clean_failure_verbose(o: &Output) -> String {
    let e = stderr(o);
    assert!(!o.status.success(), "{e}");
    let message = e
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no `error: ` line in\n{e}"));
    let segments: Vec<&str> = message.split(": ").collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(
            !segments[i + 1..].contains(s),
            "`{s}` repeated in: {message}"
        );
    }
    message.to_string()
}
