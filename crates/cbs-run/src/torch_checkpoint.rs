//! Checkpoints of the reference PyTorch code, loaded for inference without PyTorch and without
//! executing their pickles (`cbs_torch`).
//!
//! A `.pt`/`.pth` file carries weights but no architecture, so the caller names the preset (and
//! the geometry, where it differs from the preset's published one). Which entry of the file
//! holds the weights depends on the code that saved it:
//!
//! | saved by | entries | [`WeightsKind::Ema`] | [`WeightsKind::Model`] |
//! | --- | --- | --- | --- |
//! | SiT / DiT `train.py` | `model`, `ema`, `opt`, `args` | `ema` | `model` |
//! | SiT / DiT released weights | a bare state_dict | the file | the file |
//! | JiT `misc.save_model` | `model`, `model_ema1`, `model_ema2`, … (keys `net.…`) | `model_ema1` | `model` |
//! | torchcfm examples | `net_model`, `ema_model`, `optim`, `step` | `ema_model` | `net_model` |
//!
//! The entry used is reported back ([`TorchLoaded::entry`]) so the CLI can print it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use cbs_models::{Architecture, Kernels, Model, ModelSpec, Precision};

use crate::checkpoint::{check_finite, CheckpointState, LoadedModel, WeightsKind};
use crate::TrainConfig;
use crate::{Result, RunError};

/// Entries holding EMA weights, in order of preference (JiT's `model_ema1` has the slower
/// decay, 0.9999, the one its paper evaluates).
const EMA_ENTRIES: [&str; 4] = ["ema", "model_ema1", "ema_model", "model_ema"];
const MODEL_ENTRIES: [&str; 2] = ["model", "net_model"];

/// A network loaded from a PyTorch file.
pub struct TorchLoaded {
    pub model: Model,
    /// `ema`, `model_ema1`, … or `state_dict` for a bare state_dict.
    pub entry: String,
    pub path: PathBuf,
}

fn err(path: &Path, message: impl Into<String>) -> RunError {
    RunError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Whether `path` is a PyTorch file (a zip archive or a legacy pickle stream), by its first
/// bytes; run and checkpoint directories, and safetensors files, are not.
pub fn is_torch_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
        && (head == *b"PK\x03\x04" || head[0] == 0x80)
}

/// Picks the entry of `groups` that holds the `which` weights; `None` for a bare state_dict.
fn choose_entry(path: &Path, groups: &[String], which: WeightsKind) -> Result<Option<String>> {
    let known: Vec<&str> = EMA_ENTRIES.iter().chain(&MODEL_ENTRIES).copied().collect();
    if !groups.iter().any(|g| known.contains(&g.as_str())) {
        return Ok(None);
    }
    let wanted: &[&str] = match which {
        WeightsKind::Ema => &EMA_ENTRIES,
        WeightsKind::Model => &MODEL_ENTRIES,
    };
    match wanted.iter().find(|w| groups.iter().any(|g| g == *w)) {
        Some(w) => Ok(Some(w.to_string())),
        None => Err(err(
            path,
            format!(
                "no {which:?} weights: the file holds the entries {groups:?} (looked for \
                 {wanted:?}); try --weights {}",
                match which {
                    WeightsKind::Ema => "model",
                    WeightsKind::Model => "ema",
                }
            ),
        )),
    }
}

/// Reads the weights of `which` from a PyTorch file for `arch`: names and shapes checked
/// against the network (buffers included), values checked finite, floats as f32. The second
/// value names the entry used.
pub fn torch_weights(
    path: &Path,
    arch: &Architecture,
    which: WeightsKind,
) -> Result<(HashMap<String, Tensor>, String)> {
    weights_of(&open(path)?, path, arch, which)
}

fn open(path: &Path) -> Result<cbs_torch::TorchFile> {
    cbs_torch::TorchFile::open(path).map_err(|e| RunError::Torch(Box::new(e)))
}

/// [`torch_weights`] from the opened `file` (read from `path`).
fn weights_of(
    file: &cbs_torch::TorchFile,
    path: &Path,
    arch: &Architecture,
    which: WeightsKind,
) -> Result<(HashMap<String, Tensor>, String)> {
    let entry = choose_entry(path, &file.groups(), which)?;
    let (tensors, skipped) = file
        .load_all(entry.as_deref())
        .map_err(|e| RunError::Torch(Box::new(e)))?;
    if let Some(name) = skipped.first() {
        return Err(err(
            path,
            format!("tensor `{name}` has an element type candle cannot hold"),
        ));
    }
    // Weights saved in half precision load as f32 masters, as training keeps them.
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| {
            let t = if t.dtype().is_float() {
                t.to_dtype(DType::F32)?
            } else {
                t
            };
            Ok((k, t))
        })
        .collect::<candle_core::Result<_>>()?;
    let tensors = checked(path, tensors, arch)?;
    Ok((tensors, entry.unwrap_or_else(|| "state_dict".to_string())))
}

/// Names and shapes against `arch`, values finite.
fn checked(
    path: &Path,
    tensors: HashMap<String, Tensor>,
    arch: &Architecture,
) -> Result<HashMap<String, Tensor>> {
    let tensors = cbs_models::weights::strip_wrapper_prefix(tensors);
    let expected = cbs_models::shapes::parameter_shapes(arch)?;
    cbs_models::weights::check_names_and_shapes(path, &tensors, &expected)?;
    let mut named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    named.sort_by_key(|(k, _)| *k);
    check_finite(path, named, "refusing to load it")?;
    Ok(tensors)
}

/// The weights of `which` for `arch` from a cbs run or checkpoint directory or a PyTorch
/// file (on the CPU, f32 floats), checked as [`torch_weights`] checks them, and a description
/// of where they came from (printed by the trainer).
pub fn load_weights(
    path: &Path,
    arch: &Architecture,
    which: WeightsKind,
) -> Result<(HashMap<String, Tensor>, String)> {
    if is_torch_file(path) {
        let (t, entry) = torch_weights(path, arch, which)?;
        return Ok((
            t,
            format!("{} (PyTorch file, entry `{entry}`)", path.display()),
        ));
    }
    let dir = crate::checkpoint::resolve(path)?;
    let file = dir.join(which.file_name());
    let tensors = cbs_models::weights::load_safetensors(&file, &Device::Cpu)?;
    let tensors = checked(&file, tensors, arch)?;
    Ok((tensors, file.display().to_string()))
}

/// A network of `arch` from the opened PyTorch `file` (read from `path`; see
/// [`torch_weights`]), computing in `precision`'s dtype.
fn load_torch(
    file: &cbs_torch::TorchFile,
    path: &Path,
    arch: &Architecture,
    which: WeightsKind,
    kernels: Kernels,
    precision: Precision,
    device: &Device,
) -> Result<TorchLoaded> {
    let (tensors, entry) = weights_of(file, path, arch, which)?;
    precision.configure_products();
    let vb = VarBuilder::from_tensors(tensors, precision.compute_dtype(), device);
    let model = Model::new(arch, kernels, vb)?;
    Ok(TorchLoaded {
        model,
        entry,
        path: path.to_path_buf(),
    })
}

/// torchcfm's class-conditional UNet has a label table of `num_classes` rows, without the
/// null-class row the `cbs` UNet presets add for guidance: such a file loads as a UNet
/// without a null class (classifier-free guidance is then refused, as for any model trained
/// without label dropout). Other architectures and tables are returned unchanged (the name
/// and shape check reports a real mismatch).
fn fit_label_table(
    file: &cbs_torch::TorchFile,
    path: &Path,
    which: WeightsKind,
    arch: Architecture,
) -> Result<Architecture> {
    let Architecture::Unet(mut cfg) = arch else {
        return Ok(arch);
    };
    if cfg.null_class().is_none() {
        return Ok(Architecture::Unet(cfg));
    }
    let entry = choose_entry(path, &file.groups(), which)?;
    let prefix = entry.map(|e| format!("{e}.")).unwrap_or_default();
    let rows = ["", "net.", "module."].iter().find_map(|wrapper| {
        file.get(&format!("{prefix}{wrapper}label_emb.weight"))
            .and_then(|t| t.shape().first().copied())
    });
    if rows == Some(cfg.num_classes) {
        cfg.class_dropout_prob = 0.0;
    }
    Ok(Architecture::Unet(cfg))
}

/// Loads `path` for inference, whatever it is: a run or checkpoint directory of `cbs`
/// ([`crate::checkpoint::load_for_inference`]), or a PyTorch file, which needs `spec` (the
/// preset, and the geometry where it differs from the preset's published one). The second
/// value names the PyTorch entry used (`None` for `cbs` checkpoints).
pub fn load_any(
    path: &Path,
    which: WeightsKind,
    spec: Option<&ModelSpec>,
    precision: Precision,
    device: &Device,
) -> Result<(LoadedModel, Option<String>)> {
    if !is_torch_file(path) {
        return Ok((
            crate::checkpoint::load_for_inference(path, which, precision, device)?,
            None,
        ));
    }
    let Some(spec) = spec else {
        return Err(err(
            path,
            "a PyTorch file holds no architecture: give --model PRESET (and --image-size, \
             --in-channels, --num-classes where they differ from the preset's published \
             geometry; `cbs inspect --list` lists the presets)",
        ));
    };
    let (shape, classes) = spec.default_geometry()?;
    // One parse of the file for both the label-table check and the weights.
    let file = open(path)?;
    let architecture = fit_label_table(&file, path, which, spec.resolve(&shape, classes)?)?;
    let config = TrainConfig {
        model: spec.clone(),
        data: Default::default(),
        train: Default::default(),
    };
    let loaded = load_torch(
        &file,
        path,
        &architecture,
        which,
        config.train.kernels,
        precision,
        device,
    )?;
    let state = CheckpointState {
        format_version: crate::checkpoint::FORMAT_VERSION,
        step: 0,
        rng: crate::RngState {
            algorithm: String::new(),
            seed: 0,
            next_stream: 0,
        },
        optimizer_step: 0,
        last_loss: f64::NAN,
        architecture: architecture.clone(),
    };
    Ok((
        LoadedModel {
            model: loaded.model,
            architecture,
            config,
            state,
            dir: loaded.path,
        },
        Some(loaded.entry),
    ))
}
