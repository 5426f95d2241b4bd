//! Checkpoints: one directory per saved step, made complete before it becomes visible.
//!
//! ```text
//! RUN_DIR/checkpoints/step-00001000/
//!     model.safetensors      reference key names (loads into the PyTorch model as is)
//!     ema.safetensors        same keys, EMA weights
//!     optimizer.safetensors  exp_avg.<name>, exp_avg_sq.<name>
//!     state.json             step, generator state, optimizer step, last loss, architecture
//!     config.toml            the resolved configuration of the run
//! RUN_DIR/checkpoints/latest  name of the newest complete checkpoint
//! ```
//! A checkpoint is written as `step-N.tmp/` (every file crash-safe), committed as `step-N/`
//! ([`cbs_core::atomic::commit_dir`]), and only then is `latest` replaced
//! ([`cbs_core::atomic::write_text`]). A crash at any point leaves the previous checkpoint intact
//! and `latest` pointing at it. A write that fails removes its `step-N.tmp/`, and a full disk is
//! reported as [`RunError::DiskFull`]: how much the checkpoint needs, how much is free, whether
//! the previous checkpoint is intact, how to resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use cbs_core::atomic;
use cbs_models::spec::Architecture;
use cbs_models::weights::load_safetensors;
use cbs_models::{Model, Precision};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::{io_err, Result, RunError};

pub const FORMAT_VERSION: u32 = 1;

/// The files of one checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
pub const EMA_FILE: &str = "ema.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
/// In `RUN/checkpoints/`: the name of the newest complete checkpoint.
pub const LATEST_FILE: &str = "latest";

/// What a checkpoint records of the generators: the run seed and the next step's stream
/// (`cbs_core::rng::stream(seed, Purpose::TrainStep, step)`), so resuming needs no opaque
/// generator dump and cannot drift.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {
    pub algorithm: String,
    pub seed: u64,
    /// The next step's stream index.
    pub next_stream: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    pub format_version: u32,
    pub step: u64,
    pub rng: RngState,
    pub optimizer_step: u64,
    pub last_loss: f64,
    pub architecture: Architecture,
}

fn ckpt_err(path: &Path, message: impl Into<String>) -> RunError {
    RunError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The resolved configuration, in a run directory and in each of its checkpoints.
pub const CONFIG_FILE: &str = "config.toml";
/// The training log of a run directory (one JSON object per logged step).
pub const METRICS_FILE: &str = "metrics.jsonl";

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Whether `name` is a checkpoint directory's name (`step-` and at least 8 digits): what
/// `latest` may hold, so that it can never point outside `checkpoints/`.
fn is_step_name(name: &str) -> bool {
    name.strip_prefix("step-")
        .is_some_and(|d| d.len() >= 8 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Every value of every tensor is finite; otherwise an error naming the file and the tensor.
/// Checked before a checkpoint becomes visible: a run must never resume from, or sample,
/// weights or optimizer state that have diverged.
pub(crate) fn check_finite<'a>(
    file: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    consequence: &str,
) -> Result<()> {
    for (name, t) in tensors {
        let values = t
            .flatten_all()
            .and_then(|v| v.to_dtype(candle_core::DType::F64))
            .and_then(|v| v.to_vec1::<f64>())
            .map_err(|e| ckpt_err(file, format!("reading `{name}`: {e}")))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(ckpt_err(
                file,
                format!(
                    "`{name}` holds a non-finite value ({} at flat index {i}); {consequence}",
                    values[i]
                ),
            ));
        }
    }
    Ok(())
}

fn named(tensors: &[(String, Tensor)]) -> impl Iterator<Item = (&str, &Tensor)> {
    tensors.iter().map(|(k, t)| (k.as_str(), t))
}

const NOT_WRITTEN: &str = "the checkpoint was not written";

/// Removes half-written checkpoints (`step-N.tmp/`) a crash left behind: they would otherwise
/// take the space the next checkpoint needs.
fn remove_stale_tmp(root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(root).map_err(io_err(root))? {
        let path = entry.map_err(io_err(root))?.path();
        let stale = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".tmp") && is_step_name(n.trim_end_matches(".tmp")));
        if stale && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Everything one checkpoint holds, borrowed from the trainer.
pub struct CheckpointData<'a> {
    pub state: &'a CheckpointState,
    pub config: &'a TrainConfig,
    pub model: &'a [(String, Tensor)],
    pub ema: &'a [(String, Tensor)],
    pub optimizer: &'a [(String, Tensor)],
}

/// Write a checkpoint atomically and prune old ones; returns its directory.
pub fn write(run_dir: &Path, data: &CheckpointData, keep: usize) -> Result<PathBuf> {
    write_through(run_dir, data, keep, &write_file_to_disk)
}

/// One file of a checkpoint, as handed to the function that writes it.
pub(crate) enum FileContent<'a> {
    Tensors(&'a [(String, Tensor)]),
    Text(&'a str),
}

/// Writes one file of a checkpoint, crash-safe. Every file of a checkpoint goes through one
/// such function, so that tests can make a write fail as a full disk does (ENOSPC) without
/// filling a disk.
pub(crate) type WriteFile<'a> = &'a dyn Fn(&Path, FileContent) -> atomic::Result<()>;

/// The real [`WriteFile`].
pub(crate) fn write_file_to_disk(path: &Path, content: FileContent) -> atomic::Result<()> {
    match content {
        // Not `cbs_models::weights::save_safetensors`, which turns the cause into text: the
        // typed cause (an `io::Error` inside candle's error) is what tells a full disk apart.
        FileContent::Tensors(tensors) => {
            let map: HashMap<&str, Tensor> = tensors
                .iter()
                .map(|(k, t)| (k.as_str(), t.clone()))
                .collect();
            atomic::write_with_path(path, |tmp| candle_core::safetensors::save(&map, tmp))
        }
        FileContent::Text(text) => atomic::write_text(path, text),
    }
}

/// Bytes a checkpoint's files take, headers aside: computed before writing, for the
/// disk-full message.
fn checkpoint_bytes(data: &CheckpointData, state: &str, config: &str) -> u64 {
    let tensors = data.model.iter().chain(data.ema).chain(data.optimizer);
    let tensor_bytes: u64 = tensors
        .map(|(_, t)| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();
    tensor_bytes + state.len() as u64 + config.len() as u64
}

/// [`write`], with every file written by `write_file`.
pub(crate) fn write_through(
    run_dir: &Path,
    data: &CheckpointData,
    keep: usize,
    write_file: WriteFile,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    cbs_core::atomic::create_dir_all(&root).map_err(io_err(&root))?;
    let name = step_name(data.state.step);
    let final_dir = root.join(&name);
    let tmp_dir = root.join(format!("{name}.tmp"));
    check_finite(&final_dir.join(MODEL_FILE), named(data.model), NOT_WRITTEN)?;
    check_finite(&final_dir.join(EMA_FILE), named(data.ema), NOT_WRITTEN)?;
    check_finite(
        &final_dir.join(OPTIMIZER_FILE),
        named(data.optimizer),
        NOT_WRITTEN,
    )?;
    let state = serde_json::to_string_pretty(data.state).expect("state serialises");
    let config = data.config.to_toml();
    let needed = checkpoint_bytes(data, &state, &config);
    remove_stale_tmp(&root)?;
    let files = [
        (MODEL_FILE, FileContent::Tensors(data.model)),
        (EMA_FILE, FileContent::Tensors(data.ema)),
        (OPTIMIZER_FILE, FileContent::Tensors(data.optimizer)),
        (STATE_FILE, FileContent::Text(&state)),
        (CONFIG_FILE, FileContent::Text(&config)),
    ];
    let committed = std::fs::create_dir_all(&tmp_dir)
        .map_err(io_err(&tmp_dir))
        .and_then(|()| {
            for (file, content) in files {
                write_file(&tmp_dir.join(file), content)?;
            }
            Ok(atomic::commit_dir(&tmp_dir, &final_dir)?)
        });
    if let Err(e) = committed {
        // A half-written directory would only hold space that the next attempt needs.
        let _ = std::fs::remove_dir_all(&tmp_dir);
        return Err(disk_full(e, run_dir, &final_dir, needed));
    }
    // Until this write succeeds, `latest` still names the previous checkpoint.
    if let Err(e) = atomic::write_text(&root.join(LATEST_FILE), &name) {
        // The new directory is complete but unnamed: it goes too, for the same reason (unless
        // it replaced the very checkpoint `latest` names, a rewrite of the same step).
        if latest(run_dir).ok().flatten().as_ref() != Some(&final_dir) {
            let _ = std::fs::remove_dir_all(&final_dir);
        }
        return Err(disk_full(e.into(), run_dir, &final_dir, needed));
    }
    prune(&root, keep)?;
    Ok(final_dir)
}

/// `e` as [`RunError::DiskFull`] when its cause is a full file system; otherwise `e`.
fn disk_full(e: RunError, run_dir: &Path, checkpoint: &Path, needed: u64) -> RunError {
    if !is_storage_full(&e) {
        return e;
    }
    RunError::DiskFull {
        checkpoint: checkpoint.to_path_buf(),
        needed,
        free: free_bytes(&checkpoints_dir(run_dir)),
        // `latest` is only replaced after a complete write, so what it names is intact.
        previous: latest(run_dir).ok().flatten(),
    }
}

/// Whether the cause of `e`, at any depth, is "no space left on device" (ENOSPC).
fn is_storage_full(e: &(dyn std::error::Error + 'static)) -> bool {
    // `raw_os_error` too: `ErrorKind::StorageFull` is how std names ENOSPC, but an error
    // rebuilt from the code alone is recognised either way.
    let full = |io: &std::io::Error| {
        io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(ENOSPC)
    };
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().is_some_and(full) {
            return true;
        }
        // candle's wrappers hold their cause in `inner` without reporting it as a source, and
        // its transparent `Io` reports the I/O error's source, not the error itself.
        next = match e.downcast_ref::<candle_core::Error>() {
            Some(candle_core::Error::Io(io)) => return full(io),
            Some(
                candle_core::Error::WithBacktrace { inner, .. }
                | candle_core::Error::WithPath { inner, .. }
                | candle_core::Error::Context { inner, .. },
            ) => Some(inner.as_ref()),
            _ => e.source(),
        };
    }
    false
}

/// ENOSPC: 28 on Linux and the BSDs, macOS included.
const ENOSPC: i32 = 28;

/// The text of [`RunError::DiskFull`].
pub(crate) fn disk_full_message(
    checkpoint: &Path,
    needed: u64,
    free: Option<u64>,
    previous: Option<&Path>,
) -> String {
    let free_text = match free {
        Some(f) => format!("{} are free", bytes(f)),
        None => "the free space is unknown".to_string(),
    };
    let mut text = format!(
        "checkpoint {}: no space left on the device: the checkpoint needs {} and {free_text} on \
         that file system (its half-written files were removed).",
        checkpoint.display(),
        bytes(needed),
    );
    let room = match free {
        Some(f) if f < needed => format!("at least {} more", bytes(needed - f)),
        _ => "space".to_string(),
    };
    match previous {
        Some(p) => text.push_str(&format!(
            " The previous checkpoint {} is intact and `latest` names it. Free {room} there \
             (step-N directories older than it may be deleted), then continue with the \
             same command and --resume.",
            p.display()
        )),
        None => text.push_str(&format!(
            " No earlier checkpoint exists. Free {room} there, then run the same command \
             again."
        )),
    }
    text
}

/// `n` bytes for people, with the exact count: "1.5 MiB (1572864 bytes)".
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = None;
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(u);
    }
    match unit {
        Some(u) => format!("{value:.1} {u} ({n} bytes)"),
        None => format!("{n} bytes"),
    }
}

/// Bytes an unprivileged process can still write on the file system holding `dir`, or `None`
/// where the platform cannot say.
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a NUL-terminated string and `st` is a buffer of the right type,
        // which statvfs fills completely when it returns 0.
        let st = unsafe {
            if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
                return None;
            }
            st.assume_init()
        };
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io_err(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for p in &steps[..excess] {
        std::fs::remove_dir_all(p).map_err(io_err(p))?;
    }
    Ok(())
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let pointer = checkpoints_dir(run_dir).join(LATEST_FILE);
    if !pointer.exists() {
        return Ok(None);
    }
    let mut name = String::new();
    // A checkpoint name is a few bytes: read no more than a page of whatever the file is.
    std::io::Read::read_to_string(
        &mut std::io::Read::take(
            std::fs::File::open(&pointer).map_err(io_err(&pointer))?,
            4096,
        ),
        &mut name,
    )
    .map_err(io_err(&pointer))?;
    if !is_step_name(name.trim()) {
        return Err(ckpt_err(
            &pointer,
            format!(
                "holds `{}`, which is not a checkpoint name (step-NNNNNNNN in this directory)",
                name.trim().chars().take(80).collect::<String>()
            ),
        ));
    }
    let dir = checkpoints_dir(run_dir).join(name.trim());
    if !dir.join(STATE_FILE).is_file() {
        return Err(ckpt_err(
            &pointer,
            format!(
                "points at `{}`, which is not a complete checkpoint",
                name.trim()
            ),
        ));
    }
    Ok(Some(dir))
}

/// Accept either a checkpoint directory or a run directory (its latest checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        return Err(ckpt_err(path, "no such directory"));
    }
    latest(path)?.ok_or_else(|| {
        ckpt_err(
            path,
            "neither a checkpoint directory (with state.json) nor a run directory with \
             checkpoints/latest",
        )
    })
}

pub fn read_state(ckpt: &Path) -> Result<CheckpointState> {
    let p = ckpt.join(STATE_FILE);
    let text = cbs_core::read_text(&p)?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| ckpt_err(&p, e.to_string()))?;
    if state.format_version != FORMAT_VERSION {
        return Err(ckpt_err(
            &p,
            format!(
                "format version {} is not supported (this build reads {FORMAT_VERSION})",
                state.format_version
            ),
        ));
    }
    Ok(state)
}

pub fn read_config(ckpt: &Path) -> Result<TrainConfig> {
    TrainConfig::from_file(&ckpt.join(CONFIG_FILE))
}

/// Which weights of a checkpoint to use for inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum WeightsKind {
    /// The exponential moving average of the weights (what published results use).
    #[default]
    Ema,
    /// The raw optimised weights.
    Model,
}

impl WeightsKind {
    pub fn file_name(self) -> &'static str {
        match self {
            WeightsKind::Ema => EMA_FILE,
            WeightsKind::Model => MODEL_FILE,
        }
    }
}

/// A network loaded for inference, with what the checkpoint says about it.
pub struct LoadedModel {
    pub model: Model,
    pub architecture: Architecture,
    pub config: TrainConfig,
    pub state: CheckpointState,
    pub dir: PathBuf,
}

/// Load a checkpoint (or a run's latest) for inference, checking names and shapes first; the
/// network runs on the op implementations the run trained with (`train.kernels`), computing in
/// `precision` (the weights are cast once, here; inputs and outputs keep the caller's dtype).
pub fn load_for_inference(
    path: &Path,
    which: WeightsKind,
    precision: Precision,
    device: &Device,
) -> Result<LoadedModel> {
    let dir = resolve(path)?;
    let state = read_state(&dir)?;
    let config = read_config(&dir)?;
    let file = dir.join(which.file_name());
    let tensors = cbs_models::weights::strip_wrapper_prefix(load_safetensors(&file, device)?);
    let expected = cbs_models::shapes::parameter_shapes(&state.architecture)?;
    cbs_models::weights::check_names_and_shapes(&file, &tensors, &expected)?;
    // Diverged weights would make every sample NaN: refuse them, naming the tensor (the first
    // by name, so the message does not depend on hash order).
    let mut named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    named.sort_by_key(|(k, _)| *k);
    check_finite(&file, named, "refusing to load it")?;
    precision.configure_products();
    let vb = VarBuilder::from_tensors(tensors, precision.compute_dtype(), device);
    let model = Model::new(&state.architecture, config.train.kernels, vb)?;
    Ok(LoadedModel {
        model,
        architecture: state.architecture.clone(),
        config,
        state,
        dir,
    })
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
