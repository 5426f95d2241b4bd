//! Feature extractors and batched extraction over an [`ImageSet`].
//!
//! The metrics are written against [`FeatureExtractor`]: the FID Inception-v3 implements it
//! (pool3 features, logits, spatial features), and so can any other network (e.g. a small
//! classifier trained on the data set, whose numbers are then not comparable to Inception
//! FID). [`PooledPixels`] is a deterministic, weight-free extractor for tests.

use candle_core::{DType, Device, Tensor};

use crate::inputs::ImageSet;
use crate::{EvalError, Result};

/// Features of a batch of images, float, each `[B, ·]`.
#[derive(Debug, Clone)]
pub struct Features {
    /// The global features that FID, precision/recall and KID use, `[B, D]` (Inception:
    /// pool3, D = 2048).
    pub pool: Tensor,
    /// Class logits for the Inception Score, `[B, K]` (Inception: the 1008 logits without the
    /// fc bias, pytorch-fid's `logits_unbiased`).
    pub logits: Option<Tensor>,
    /// Spatial features for sFID, `[B, S]` (rank > 2 is flattened). Inception (as the ADM
    /// evaluator): the first 7 channels of `mixed_6/conv` (Mixed_6d's 1×1 branch after
    /// BN + ReLU), 7 × 17 × 17 = 2023 values; the Fréchet distance does not depend on the
    /// order in which they are flattened.
    pub spatial: Option<Tensor>,
}

/// A network mapping images to [`Features`].
pub trait FeatureExtractor {
    /// `images`: float32 `[B, 3, H, W]` with values in [0, 1] (any H, W: resizing is the
    /// extractor's business), on the device the extractor was built for.
    fn extract(&self, images: &Tensor) -> Result<Features>;

    /// The feature space in words, for reports ("Inception-v3 pool3 (pytorch-fid)").
    fn name(&self) -> String {
        "custom features".to_string()
    }
}

/// Extracts features of all images, `batch` at a time on `device`; the results are
/// concatenated on the CPU as float32. `progress(done_batches, total_batches)` is called after
/// every batch.
pub fn extract_all(
    extractor: &dyn FeatureExtractor,
    images: &ImageSet,
    batch: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Features> {
    if batch == 0 {
        return Err(EvalError::Invalid("batch size must be at least 1".into()));
    }
    let n = images.len();
    let total = n.div_ceil(batch);
    let (mut pool, mut logits, mut spatial) = (Vec::new(), Vec::new(), Vec::new());
    for (i, start) in (0..n).step_by(batch).enumerate() {
        let len = batch.min(n - start);
        let x = images.batch(start, len, device)?;
        let f = extractor.extract(&x)?;
        pool.push(to_rows(&f.pool, len, "pool")?);
        collect_optional(&mut logits, f.logits.as_ref(), len, i, "logits")?;
        collect_optional(&mut spatial, f.spatial.as_ref(), len, i, "spatial")?;
        progress(i + 1, total);
    }
    let cat = |v: &[Tensor]| -> Result<Option<Tensor>> {
        if v.is_empty() {
            Ok(None)
        } else {
            Ok(Some(Tensor::cat(v, 0)?))
        }
    };
    Ok(Features {
        pool: cat(&pool)?.ok_or_else(|| EvalError::Invalid("no images".into()))?,
        logits: cat(&logits)?,
        spatial: cat(&spatial)?,
    })
}

fn collect_optional(
    acc: &mut Vec<Tensor>,
    t: Option<&Tensor>,
    len: usize,
    batch_index: usize,
    what: &str,
) -> Result<()> {
    match (t, acc.len() == batch_index) {
        (Some(t), true) => {
            acc.push(to_rows(t, len, what)?);
            Ok(())
        }
        (None, _) if acc.is_empty() => Ok(()),
        _ => Err(EvalError::Invalid(format!(
            "the feature extractor returned {what} for some batches only"
        ))),
    }
}

/// `[B, ...]` → float32 `[B, prod(...)]` on the CPU, checking B.
fn to_rows(t: &Tensor, len: usize, what: &str) -> Result<Tensor> {
    let dims = t.dims();
    if dims.len() < 2 || dims[0] != len {
        return Err(EvalError::Invalid(format!(
            "the feature extractor returned {what} of shape {dims:?} for a batch of {len}"
        )));
    }
    Ok(t.flatten_from(1)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?)
}

/// A deterministic extractor without weights, for tests: `pool` = channel means over a
/// `grid × grid` partition of the image (3·grid² values), `logits` = the first `classes` of
/// them × 10, `spatial` = channel means over a 2 × 2 partition (12 values).
#[derive(Debug, Clone, Copy)]
pub struct PooledPixels {
    pub grid: usize,
    pub classes: usize,
}

impl Default for PooledPixels {
    fn default() -> Self {
        Self {
            grid: 4,
            classes: 10,
        }
    }
}

fn cell_means(v: &[f32], b: usize, h: usize, w: usize, g: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * 3 * g * g);
    for img in 0..b {
        for c in 0..3 {
            let plane = &v[(img * 3 + c) * h * w..(img * 3 + c + 1) * h * w];
            for gy in 0..g {
                for gx in 0..g {
                    let (y0, y1) = (gy * h / g, ((gy + 1) * h / g).max(gy * h / g + 1));
                    let (x0, x1) = (gx * w / g, ((gx + 1) * w / g).max(gx * w / g + 1));
                    let (y1, x1) = (y1.min(h), x1.min(w));
                    let mut s = 0.0f64;
                    for y in y0..y1 {
                        for x in x0..x1 {
                            s += plane[y * w + x] as f64;
                        }
                    }
                    out.push((s / ((y1 - y0) * (x1 - x0)).max(1) as f64) as f32);
                }
            }
        }
    }
    out
}

impl FeatureExtractor for PooledPixels {
    fn extract(&self, images: &Tensor) -> Result<Features> {
        let (b, c, h, w) = images.dims4()?;
        if c != 3 {
            return Err(EvalError::Invalid(format!(
                "expected [B, 3, H, W] images, found {:?}",
                images.dims()
            )));
        }
        let dev = images.device();
        let v = images
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let g = self.grid.max(1);
        let pool = cell_means(&v, b, h, w, g);
        let d = 3 * g * g;
        let k = self.classes.clamp(1, d);
        let logits: Vec<f32> = (0..b)
            .flat_map(|i| pool[i * d..i * d + k].iter().map(|p| 10.0 * p))
            .collect();
        let spatial = cell_means(&v, b, h, w, 2);
        Ok(Features {
            pool: Tensor::from_vec(pool, (b, d), dev)?,
            logits: Some(Tensor::from_vec(logits, (b, k), dev)?),
            spatial: Some(Tensor::from_vec(spatial, (b, 12), dev)?),
        })
    }

    fn name(&self) -> String {
        format!(
            "pooled pixels ({0}×{0} cell means; a test extractor)",
            self.grid
        )
    }
}
