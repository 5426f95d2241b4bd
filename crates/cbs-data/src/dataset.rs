//! In-memory image datasets and their conversion to model-ready floats.

use cbs_core::rng::{stream, Purpose};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// How 28x28 digits/garments become 32x32 (the SiT patch grid wants a
/// multiple of 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Two pixels of background (value 0, i.e. -1.0 after scaling) on every
    /// side. Padding rather than interpolation keeps the pixels untouched.
    #[default]
    Pad,
    /// Keep the native size.
    None,
}

impl Resize {
    /// Border added on each side, in pixels.
    pub fn border(self) -> usize {
        match self {
            Resize::Pad => 2,
            Resize::None => 0,
        }
    }
}

/// An in-memory uint8 image dataset, NCHW layout, with integer labels.
#[derive(Clone, Debug)]
pub struct ImageDataset {
    /// `len() * image_len()` bytes, image-major then channel, row, column.
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
}

impl ImageDataset {
    /// Number of images (one label per image).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image, `C * H * W`.
    // Saturating because the fields are public: a nonsense shape must produce
    // an error downstream, not an overflow panic here.
    pub fn image_len(&self) -> usize {
        self.channels
            .saturating_mul(self.height)
            .saturating_mul(self.width)
    }

    /// Keeps a seeded random subset of `round(fraction * len)` images (at
    /// least one), in their original relative order.
    ///
    /// `fraction == 1.0` returns everything unchanged, so configs that do not
    /// subsample do not depend on the RNG at all.
    pub fn subset(&self, fraction: f64, seed: u64) -> Result<ImageDataset> {
        let n = self.len();
        let Some(chosen) = subset_indices(n, fraction, seed)? else {
            return Ok(self.clone());
        };
        let keep = chosen.len();
        let stride = self.checked_image_len()?;

        let mut images = Vec::with_capacity(keep.saturating_mul(stride));
        let mut labels = Vec::with_capacity(keep);
        for &i in &chosen {
            images.extend_from_slice(self.image(i, stride)?);
            labels.push(self.labels[i]);
        }
        Ok(ImageDataset {
            images,
            labels,
            ..self.shape_only()
        })
    }

    /// Pixels of the given images scaled to `[-1, 1]` (`x / 127.5 - 1`), NCHW
    /// f32, image `i` mirrored left-right when `flips[i]`; plus their labels.
    pub fn batch(&self, indices: &[usize], flips: &[bool]) -> Result<(Vec<f32>, Vec<u32>)> {
        if flips.len() != indices.len() {
            return Err(DataError::Invalid {
                field: "flips",
                reason: format!(
                    "got {} flags for {} indices; need one per image",
                    flips.len(),
                    indices.len()
                ),
            });
        }
        let stride = self.checked_image_len()?;
        let width = self.width;
        let total = indices
            .len()
            .checked_mul(stride)
            .ok_or_else(|| DataError::Invalid {
                field: "indices",
                reason: format!("batch of {} images overflows usize", indices.len()),
            })?;

        let mut pixels = Vec::with_capacity(total);
        let mut labels = Vec::with_capacity(indices.len());
        for (&i, &flip) in indices.iter().zip(flips) {
            let image = self.image(i, stride)?;
            if flip && width > 0 {
                for row in image.chunks_exact(width) {
                    pixels.extend(row.iter().rev().map(|&p| scale(p)));
                }
            } else {
                pixels.extend(image.iter().map(|&p| scale(p)));
            }
            labels.push(self.labels[i]);
        }
        Ok((pixels, labels))
    }

    /// Returns a copy with `border` background pixels added on every side.
    pub(crate) fn padded(&self, border: usize) -> Result<ImageDataset> {
        if border == 0 {
            return Ok(self.clone());
        }
        let stride = self.checked_image_len()?;
        let grow = |v: usize, field| {
            border
                .checked_mul(2)
                .and_then(|b| v.checked_add(b))
                .ok_or_else(|| DataError::Invalid {
                    field,
                    reason: format!("{v} + 2 * {border} overflows usize"),
                })
        };
        let (h, w) = (grow(self.height, "height")?, grow(self.width, "width")?);
        let out_len = self
            .channels
            .checked_mul(h)
            .and_then(|x| x.checked_mul(w))
            .and_then(|x| x.checked_mul(self.len()))
            .ok_or_else(|| DataError::Invalid {
                field: "images",
                reason: "padded dataset size overflows usize".to_string(),
            })?;

        let mut images = vec![0u8; out_len];
        let out_stride = self.channels * h * w;
        for i in 0..self.len() {
            let src = self.image(i, stride)?;
            let dst = &mut images[i * out_stride..(i + 1) * out_stride];
            for c in 0..self.channels {
                for y in 0..self.height {
                    let s = (c * self.height + y) * self.width;
                    let d = (c * h + y + border) * w + border;
                    dst[d..d + self.width].copy_from_slice(&src[s..s + self.width]);
                }
            }
        }
        Ok(ImageDataset {
            images,
            labels: self.labels.clone(),
            height: h,
            width: w,
            ..self.shape_only()
        })
    }

    /// `C * H * W`, failing on overflow and on an `images` buffer that does
    /// not match `labels` (possible since the fields are public).
    fn checked_image_len(&self) -> Result<usize> {
        let stride = self
            .channels
            .checked_mul(self.height)
            .and_then(|x| x.checked_mul(self.width))
            .ok_or_else(|| DataError::Invalid {
                field: "images",
                reason: format!(
                    "shape {}x{}x{} overflows usize",
                    self.channels, self.height, self.width
                ),
            })?;
        if self.len().checked_mul(stride) != Some(self.images.len()) {
            return Err(DataError::Invalid {
                field: "images",
                reason: format!(
                    "{} bytes of pixels do not match {} labels of {stride} bytes each",
                    self.images.len(),
                    self.len()
                ),
            });
        }
        Ok(stride)
    }

    fn image(&self, i: usize, stride: usize) -> Result<&[u8]> {
        if i >= self.len() {
            return Err(DataError::Invalid {
                field: "indices",
                reason: format!("index {i} out of range for {} images", self.len()),
            });
        }
        // In range: checked_image_len verified len * stride == images.len().
        Ok(&self.images[i * stride..(i + 1) * stride])
    }

    fn shape_only(&self) -> ImageDataset {
        ImageDataset {
            images: Vec::new(),
            labels: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
        }
    }
}

/// The sorted indices that [`ImageDataset::subset`] keeps out of `n` items, or `None` when it
/// keeps everything (`fraction == 1.0` or `n == 0`). Shared by loaders that subsample before
/// decoding (image folders), so both routes select the same images.
pub(crate) fn subset_indices(n: usize, fraction: f64, seed: u64) -> Result<Option<Vec<usize>>> {
    if !(fraction.is_finite() && fraction > 0.0 && fraction <= 1.0) {
        return Err(DataError::Invalid {
            field: "data_fraction",
            reason: format!("must be in (0, 1], got {fraction}"),
        });
    }
    if fraction == 1.0 || n == 0 {
        return Ok(None);
    }
    // f64 -> usize saturates, and the result is clamped to [1, n] anyway.
    let keep = ((fraction * n as f64).round() as usize).clamp(1, n);
    let mut rng = stream(seed, Purpose::DataSubset, 0);
    let mut chosen = rand::seq::index::sample(&mut rng, n, keep).into_vec();
    chosen.sort_unstable();
    Ok(Some(chosen))
}

fn scale(p: u8) -> f32 {
    f32::from(p) / 127.5 - 1.0
}
