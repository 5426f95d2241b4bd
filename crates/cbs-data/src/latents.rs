//! Precomputed VAE latents (SiT / DiT train on ImageNet-256 as SD-VAE latents 4×32×32).
//!
//! An `.npz` with `latents` (or `arr_0`) = float32 `[N, C, H, W]`, the raw (unscaled) encoder
//! outputs as the usual feature-extraction scripts and `cbs encode-latents` save them, plus
//! optional integer labels (`labels` or `arr_1`) and optional `latents_flip`, the latents of
//! the horizontally flipped images (same shape). Samples are multiplied by `scale` (SD-VAE:
//! 0.18215) when batched. A flipped sample is taken from `latents_flip` when the file has it
//! (as fast-DiT pre-extracts both flips); otherwise the latent's last axis is mirrored, an
//! approximation of encoding the flipped image.

use std::path::Path;

use crate::npz::{read_labels, NpyDtype, NpyHeader, NpzArchive, NpzStreamWriter};
use crate::{DataError, Dataset, MemoryLimit, NpyArray, Result};

/// The array names of a latents file.
pub const LATENTS_ARRAY: &str = "latents";
pub const LATENTS_FLIP_ARRAY: &str = "latents_flip";
pub const LABELS_ARRAY: &str = "labels";

/// The SD-VAE scaling factor SiT and DiT apply to latents.
pub const SD_VAE_SCALE: f64 = 0.18215;

#[derive(Clone, Debug)]
pub struct LatentDataset {
    /// `len · C · H · W` values, unscaled.
    pub values: Vec<f32>,
    /// The latents of the flipped images, when the file has them (same layout).
    pub flipped: Option<Vec<f32>>,
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
    let values = read_finite_f32(&mut npz, name, path)?;
    let flipped = if name == LATENTS_ARRAY && npz.has(LATENTS_FLIP_ARRAY) {
        let hf = npz.header(LATENTS_FLIP_ARRAY)?;
        if hf.shape != h.shape || hf.dtype.kind != 'f' || hf.dtype.size != 4 || hf.fortran_order {
            return Err(malformed(format!(
                "array {LATENTS_FLIP_ARRAY} is {} {:?}; expected float32 {:?} like {name}",
                hf.dtype.name(),
                hf.shape,
                h.shape
            )));
        }
        Some(read_finite_f32(&mut npz, LATENTS_FLIP_ARRAY, path)?)
    } else {
        None
    };
    Ok(LatentDataset {
        values,
        flipped,
        labels: labels.unwrap_or_else(|| vec![0; n]),
        shape: [c, hh, ww],
        num_classes,
        scale: scale as f32,
    })
}

/// A float32 array (either byte order, checked by the caller) whose every value is finite.
fn read_finite_f32(npz: &mut NpzArchive, name: &str, path: &Path) -> Result<Vec<f32>> {
    let raw = npz.read(name)?;
    let big = raw.header.dtype.big_endian;
    let values: Vec<f32> = raw
        .data
        .chunks_exact(4)
        .map(|b| {
            let b = [b[0], b[1], b[2], b[3]];
            if big {
                f32::from_be_bytes(b)
            } else {
                f32::from_le_bytes(b)
            }
        })
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!("array {name} holds a non-finite value at flat index {i}"),
        });
    }
    Ok(values)
}

/// Writes a latents file (module documentation) array by array, each from batches: the
/// latents `[n, C, H, W]`, then (optionally) the flipped images' latents, then the labels.
/// Holds one batch at a time, so a data set of any size is written in constant memory.
pub struct LatentWriter {
    out: NpzStreamWriter,
    shape: Vec<usize>,
}

impl LatentWriter {
    /// Writes into `path` in place (wrap in `cbs_core::atomic::write_with_path`).
    pub fn create(path: &Path, n: usize, sample_shape: [usize; 3]) -> Result<Self> {
        let [c, h, w] = sample_shape;
        Ok(Self {
            out: NpzStreamWriter::create(path)?,
            shape: vec![n, c, h, w],
        })
    }

    fn header(&self) -> NpyHeader {
        NpyHeader {
            dtype: NpyDtype::F32,
            shape: self.shape.clone(),
            fortran_order: false,
        }
    }

    /// Starts the latents (`flipped = false`) or the flipped images' latents.
    pub fn begin(&mut self, flipped: bool) -> Result<()> {
        let name = if flipped {
            LATENTS_FLIP_ARRAY
        } else {
            LATENTS_ARRAY
        };
        let header = self.header();
        self.out.begin(name, &header)
    }

    /// The next batch of the array begun, unscaled latents in `[B, C, H, W]` order.
    pub fn append(&mut self, values: &[f32]) -> Result<()> {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(DataError::Invalid {
                field: "latents",
                reason: format!("non-finite value at flat index {i} of the batch"),
            });
        }
        self.out.append_f32(values)
    }

    /// Writes the labels (int64) and completes the file.
    pub fn finish(mut self, labels: &[u32]) -> Result<()> {
        let n = self.shape[0];
        if labels.len() != n {
            return Err(DataError::Invalid {
                field: "labels",
                reason: format!("{} labels for {n} latents", labels.len()),
            });
        }
        let data = labels
            .iter()
            .flat_map(|&l| i64::from(l).to_le_bytes())
            .collect();
        let labels = NpyArray::new(NpyDtype::I64, vec![n], data)?;
        self.out.write_array(LABELS_ARRAY, &labels)?;
        self.out.finish()
    }
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
            let flip = flips.get(k).copied().unwrap_or(false);
            if let (true, Some(f)) = (flip, &self.flipped) {
                let src = &f[i * stride..(i + 1) * stride];
                out.extend(src.iter().map(|v| v * self.scale));
                labels.push(self.labels[i]);
                continue;
            }
            let src = &self.values[i * stride..(i + 1) * stride];
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
        let pick = |all: &[f32]| -> Vec<f32> {
            let mut v = Vec::with_capacity(keep * stride);
            for &i in &chosen {
                v.extend_from_slice(&all[i * stride..(i + 1) * stride]);
            }
            v
        };
        Ok(LatentDataset {
            values: pick(&self.values),
            flipped: self.flipped.as_deref().map(pick),
            labels: chosen.iter().map(|&i| self.labels[i]).collect(),
            ..self.clone_shape()
        })
    }

    fn clone_shape(&self) -> LatentDataset {
        LatentDataset {
            values: Vec::new(),
            flipped: None,
            labels: Vec::new(),
            shape: self.shape,
            num_classes: self.num_classes,
            scale: self.scale,
        }
    }
}
