//! Weight files: safetensors with the reference key names, written atomically, loaded with
//! name-and-shape checks that report the first mismatch.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};

use crate::{ModelError, Result};

fn err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Write `tensors` to `path` crash-safe ([`cbs_core::atomic`]: a temporary file in the same
/// directory, fsync, rename, directory fsync).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    cbs_core::atomic::write_with_path(path, |tmp| candle_core::safetensors::save(&map, tmp))
        .map_err(|e| err(path, format!("{}: {}", e.action, e.source)))
}

/// Read every tensor of a safetensors file.
pub fn load_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(err(path, "file not found"));
    }
    candle_core::safetensors::load(path, device)
        .map_err(|e| err(path, format!("not a readable safetensors file: {e}")))
}

/// Check that `file` holds exactly the tensors `expected` names, with the same shapes.
/// The error names the first mismatch in sorted name order.
pub fn check_names_and_shapes(
    path: &Path,
    file: &HashMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
) -> Result<()> {
    let mut expected: Vec<&(String, Vec<usize>)> = expected.iter().collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, dims) in &expected {
        match file.get(name) {
            None => {
                return Err(err(
                    path,
                    format!("missing tensor `{name}` (shape {dims:?})"),
                ))
            }
            Some(t) if t.dims() != dims.as_slice() => {
                return Err(err(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?} in the file but the model expects {dims:?} \
                         (was it written for another preset?)",
                        t.dims()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let mut extra: Vec<&String> = file
        .keys()
        .filter(|k| !expected.iter().any(|(n, _)| n == *k))
        .collect();
    extra.sort();
    if let Some(first) = extra.first() {
        return Err(err(
            path,
            format!(
                "unexpected tensor `{first}` ({} tensors the model does not have; was it written \
                 for another preset?)",
                extra.len()
            ),
        ));
    }
    Ok(())
}

/// Training code that wraps the network saves every key with the wrapper's prefix: JiT's
/// `Denoiser.net` (`net.`), PyTorch's `DataParallel` / `DistributedDataParallel` (`module.`,
/// torchcfm's multi-GPU scripts) and `torch.compile` (`_orig_mod.`). Such files load as if the
/// prefixes were absent (nested ones too, e.g. `module.net.`).
pub fn strip_wrapper_prefix(mut file: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    const PREFIXES: [&str; 3] = ["net.", "module.", "_orig_mod."];
    while let Some(prefix) = PREFIXES
        .iter()
        .find(|p| !file.is_empty() && file.keys().all(|k| k.starts_with(*p)))
    {
        file = file
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect();
    }
    file
}

/// Load `path` into `vars` after checking names and shapes against `vars` and `buffers`.
/// Buffers are checked for presence and shape but keep their computed values.
pub fn load_into_vars(
    path: &Path,
    vars: &[(String, Var)],
    buffers: &[(String, Tensor)],
) -> Result<()> {
    let device = vars
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let file = strip_wrapper_prefix(load_safetensors(path, &device)?);
    let expected: Vec<(String, Vec<usize>)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .chain(buffers.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())))
        .collect();
    check_names_and_shapes(path, &file, &expected)?;
    for (name, var) in vars {
        let t = file[name].to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}
