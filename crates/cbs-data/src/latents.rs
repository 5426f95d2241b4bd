//! Precomputed VAE latents (SiT / DiT train on ImageNet-256 as SD-VAE latents 4×32×32).
//!
//! An `.npz` with `latents` (or `arr_0`) = float32 `[N, C, H, W]`, the raw encoder means as
//! the usual feature-extraction scripts save them, plus optional integer labels (`labels` or
//! `arr_1`). Samples are multiplied by `scale` (SD-VAE: 0.18215) when batched. Horizontal
//! flips mirror the latent's last axis (an approximation of encoding the flipped image; the
//! reference pipelines that pre-extract latents store both flips instead).

use std::path::Path;

use crate::npz::{read_labels, NpzArchive};
use crate::{DataError, Dataset, MemoryLimit, Result};

/// The SD-VAE scaling factor SiT and DiT apply to latents.
pub const SD_VAE_SCALE: f64 = 0.18215;

#[derive(Clone, Debug)]
pub struct LatentDataset {
    /// `len · C · H · W` values, unscaled.
    pub values: Vec<f32>,
    pub labels: Vec<u32>,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    pub num_classes: usize,
    pub scale: f32,
}

/// Reads latents from `path` (module documentation) under the machine's default
/// [`MemoryLimit`].
pub fn load_latents(path: &Path, num_classes: Option<usize>, scale: f64) -> Result<LatentDataset> {
    load_latents_limited(path, num_classes, scale, MemoryLimit::default())
}

/// [`load_latents`] under an explicit memory limit (on the raw array; the decoded f32 values
/// take as much again).
pub fn load_latents_limited(
    path: &Path,
    num_classes: Option<usize>,
    scale: f64,
    limit: MemoryLimit,
) -> Result<LatentDataset> {
    let malformed = |reason: String| DataError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    if !(scale.is_finite() && scale > 0.0) {
        return Err(DataError::Invalid {
            field: "latent_scale",
            reason: format!("must be a positive number, got {scale}"),
        });
    }
    let mut npz = NpzArchive::open_limited(path, limit)?;
    let Some(name) = ["latents", "arr_0"].into_iter().find(|n| npz.has(n)) else {
        return Err(malformed(format!(
            "no array `latents` or `arr_0` (expected float32 latents [N, C, H, W]); the archive \
             holds {:?}",
            npz.names()
        )));
    };
    let h = npz.header(name)?;
    let &[n, c, hh, ww] = h.shape.as_slice() else {
        return Err(malformed(format!(
            "array {name} has shape {:?}; expected float32 latents [N, C, H, W]",
            h.shape
        )));
    };
    if h.dtype.kind != 'f' || h.dtype.size != 4 {
        return Err(malformed(format!(
            "array {name} is {}; expected float32 latents [N, C, H, W] (convert with \
             latents.astype(np.float32))",
            h.dtype.name()
        )));
    }
    if h.fortran_order || n * c * hh * ww == 0 {
        return Err(malformed(format!(
            "array {name} {:?}: expected a non-empty C-ordered [N, C, H, W] array",
            h.shape
        )));
    }
    let label_name = ["labels", "arr_1"]
        .into_iter()
        .find(|l| npz.has(l) && *l != name);
    let labels = match label_name {
        Some(l) => Some(read_labels(&mut npz, l, n, num_classes)?),
        None => None,
    };
    let num_classes = match (num_classes, &labels) {
        (Some(k), _) => k,
        (None, Some(l)) => l.iter().max().map_or(1, |&m| m as usize + 1),
        (None, None) => 1,
    };
    let raw = npz.read(name)?;
    let values: Vec<f32> = raw
        .data
        .chunks_exact(4)
        .map(|b| {
            let b = [b[0], b[1], b[2], b[3]];
            if h.dtype.big_endian {
                f32::from_be_bytes(b)
            } else {
                f32::from_le_bytes(b)
            }
        })
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(malformed(format!(
            "array {name} holds a non-finite value at flat index {i}"
        )));
    }
    Ok(LatentDataset {
        values,
        labels: labels.unwrap_or_else(|| vec![0; n]),
        shape: [c, hh, ww],
        num_classes,
        scale: scale as f32,
    })
}

impl Dataset for LatentDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn sample_shape(&self) -> Vec<usize> {
        self.shape.to_vec()
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn batch(&self, indices: &[usize], flips: &[bool]) -> Result<(Vec<f32>, Vec<u32>)> {
        let [c, h, w] = self.shape;
        let stride = c * h * w;
        let n = self.labels.len();
        let mut out = Vec::with_capacity(indices.len() * stride);
        let mut labels = Vec::with_capacity(indices.len());
        for (k, &i) in indices.iter().enumerate() {
            if i >= n {
                return Err(DataError::Invalid {
                    field: "indices",
                    reason: format!("index {i} out of range for {n} latents"),
                });
            }
            let src = &self.values[i * stride..(i + 1) * stride];
            let flip = flips.get(k).copied().unwrap_or(false);
            for row in src.chunks_exact(w) {
                if flip {
                    out.extend(row.iter().rev().map(|v| v * self.scale));
                } else {
                    out.extend(row.iter().map(|v| v * self.scale));
                }
            }
            labels.push(self.labels[i]);
        }
        Ok((out, labels))
    }
}

impl LatentDataset {
    /// A seeded subset of `round(fraction · len)` latents, as [`crate::ImageDataset::subset`].
    pub fn subset(&self, fraction: f64, seed: u64) -> Result<LatentDataset> {
        if !(fraction.is_finite() && fraction > 0.0 && fraction <= 1.0) {
            return Err(DataError::Invalid {
                field: "data_fraction",
                reason: format!("must be in (0, 1], got {fraction}"),
            });
        }
        let n = self.labels.len();
        if fraction == 1.0 {
            return Ok(self.clone());
        }
        let keep = ((fraction * n as f64).round() as usize).clamp(1, n);
        let mut rng = cbs_core::rng::stream(seed, cbs_core::rng::Purpose::DataSubset, 0);
        let mut chosen = rand::seq::index::sample(&mut rng, n, keep).into_vec();
        chosen.sort_unstable();
        let stride: usize = self.shape.iter().product();
        let mut values = Vec::with_capacity(keep * stride);
        for &i in &chosen {
            values.extend_from_slice(&self.values[i * stride..(i + 1) * stride]);
        }
        Ok(LatentDataset {
            values,
            labels: chosen.iter().map(|&i| self.labels[i]).collect(),
            ..self.clone_shape()
        })
    }

    fn clone_shape(&self) -> LatentDataset {
        LatentDataset {
            values: Vec::new(),
            labels: Vec::new(),
            shape: self.shape,
            num_classes: self.num_classes,
            scale: self.scale,
        }
    }
}
