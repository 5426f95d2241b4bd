//! Images ↔ SD-VAE latents: `cbs encode-latents` turns a data set into a latents file the
//! `latents` data source reads; `cbs sample --vae` and `cbs decode` turn latent samples back
//! into images.
//!
//! Latents files hold the VAE's unscaled latents (as SiT's and fast-DiT's extraction scripts
//! save them); the `scaling_factor` of the VAE's config (0.18215) is applied by the data
//! source and undone before decoding.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use cbs_core::rng::{self, Purpose};
use cbs_data::{Dataset, LatentWriter};
use cbs_models::vae::AutoencoderKl;
use rand_distr::{Distribution, StandardNormal};

use crate::{Result, SampleError};

/// Which latent of an image's posterior `N(mean, σ²)` is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum PosteriorDraw {
    /// The posterior mean: deterministic, and a precomputed file is reused every epoch, so
    /// one frozen draw would add noise without the fresh-draw-per-epoch augmentation of
    /// encoding on the fly (SiT's `train.py`).
    #[default]
    Mean,
    /// `mean + σ·ε` with seeded ε, one per image (fast-DiT's `extract_features.py`).
    Sample,
}

impl PosteriorDraw {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PosteriorDraw::Mean => "mean",
            PosteriorDraw::Sample => "sample",
        }
    }
}

/// How [`encode_dataset`] encodes.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// Images per VAE call.
    pub batch: usize,
    pub draw: PosteriorDraw,
    /// Seed of the posterior draws ([`PosteriorDraw::Sample`]).
    pub seed: u64,
    /// Also encode every image mirrored (`latents_flip`), as fast-DiT stores both flips.
    pub flips: bool,
}

/// What [`encode_dataset`] wrote.
#[derive(Clone, Debug)]
pub struct EncodeSummary {
    pub images: usize,
    /// `[C, H, W]` of one latent.
    pub latent_shape: [usize; 3],
    /// Mean and standard deviation of the stored (unscaled) latents of the unflipped images:
    /// the scaled standard deviation should be near 1 for the scaling factor to suit the data.
    pub mean: f64,
    pub std: f64,
}

fn invalid(option: &'static str, message: String) -> SampleError {
    SampleError::Invalid { option, message }
}

fn model_err(e: cbs_models::ModelError) -> SampleError {
    invalid("vae", e.to_string())
}

/// Images encoded per shard of a resumable [`encode_dataset`] (each shard is written
/// crash-safe as soon as it is complete).
pub const SHARD_IMAGES: usize = 1024;

/// The directory of finished shards next to the output: `OUT.parts/`.
pub fn parts_dir(out: &Path) -> std::path::PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".parts");
    out.with_file_name(name)
}

/// Encodes every image of `data` (in [−1, 1], `[C, H, W]` with H and W multiples of the
/// VAE's downscale factor) and writes the latents file `out` crash-safe. Work is done in
/// shards of [`SHARD_IMAGES`] images kept in [`parts_dir`] until the file is complete, so a
/// killed run continues where it stopped (with the same settings; `settings` is recorded
/// there and a different one is refused). `progress(done, total)` counts images encoded
/// (twice the data set with flips), resumed ones included.
pub fn encode_dataset(
    vae: &AutoencoderKl,
    data: &dyn Dataset,
    out: &Path,
    opts: &EncodeOptions,
    settings: &str,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EncodeSummary> {
    let cfg = vae.config();
    let shape = data.sample_shape();
    let f = cfg.downscale();
    let &[c, h, w] = shape.as_slice() else {
        return Err(invalid(
            "config",
            format!("the data set holds samples of shape {shape:?}, not images [C, H, W]"),
        ));
    };
    if c != cfg.in_channels || h % f != 0 || w % f != 0 {
        return Err(invalid(
            "config",
            format!(
                "the data set's images are {c}×{h}×{w}; the VAE takes {}-channel images with \
                 sides that are multiples of {f} (ImageNet-256 for the SD VAE: 3×256×256)",
                cfg.in_channels
            ),
        ));
    }
    if opts.batch == 0 {
        return Err(invalid("batch", "must be at least 1".into()));
    }
    let n = data.len();
    if n == 0 {
        return Err(invalid("config", "the data set is empty".into()));
    }
    let latent_shape = [cfg.latent_channels, h / f, w / f];
    let per = latent_shape.iter().product::<usize>();
    let passes: &[bool] = if opts.flips { &[false, true] } else { &[false] };
    let total = n * passes.len();

    let parts = parts_dir(out);
    let file_err = |p: &Path, e: &dyn std::fmt::Display| SampleError::File {
        path: p.to_path_buf(),
        message: e.to_string(),
    };
    cbs_core::atomic::create_dir_all(&parts).map_err(|e| file_err(&parts, &e))?;
    let settings_path = parts.join("settings.txt");
    match std::fs::read_to_string(&settings_path) {
        Ok(old) if old != settings => {
            return Err(file_err(
                &parts,
                &format!(
                    "holds shards of another encoding ({}); delete it to start over",
                    old.trim()
                ),
            ))
        }
        Ok(_) => {}
        Err(_) => cbs_core::atomic::write_text(&settings_path, settings)?,
    }
    let shard_path = |flip: bool, k: usize| parts.join(format!("{}-{k:06}.f32", u8::from(flip)));
    let labels_path = |k: usize| parts.join(format!("labels-{k:06}.u32"));
    let shards = n.div_ceil(SHARD_IMAGES);
    let mut done = 0;
    for &flip in passes {
        for k in 0..shards {
            let lo = k * SHARD_IMAGES;
            let hi = (lo + SHARD_IMAGES).min(n);
            let path = shard_path(flip, k);
            let want = (hi - lo) * per * 4;
            if std::fs::metadata(&path).is_ok_and(|m| m.len() as usize == want)
                && (flip || labels_path(k).exists())
            {
                done += hi - lo;
                progress(done, total);
                continue;
            }
            let mut values = Vec::with_capacity((hi - lo) * per);
            let mut labels = Vec::with_capacity(hi - lo);
            for start in (lo..hi).step_by(opts.batch) {
                let idx: Vec<usize> = (start..(start + opts.batch).min(hi)).collect();
                let (pixels, l) = data.batch(&idx, &vec![flip; idx.len()])?;
                labels.extend(l);
                let x = Tensor::from_vec(pixels, (idx.len(), c, h, w), device)?;
                let post = vae.encode(&x).map_err(model_err)?;
                let z = match opts.draw {
                    PosteriorDraw::Mean => post.mean,
                    PosteriorDraw::Sample => {
                        let eps = posterior_noise(opts.seed, &idx, flip, per, device)?
                            .reshape(post.mean.shape())?; // [B, C_lat, h, w]
                        post.sample(&eps)?
                    }
                };
                let v = z.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(invalid(
                        "vae",
                        format!(
                            "the VAE gave a non-finite latent for image {}",
                            start + i / per
                        ),
                    ));
                }
                values.extend(v);
                done += idx.len();
                progress(done, total);
            }
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            cbs_core::atomic::write_bytes(&path, &bytes)?;
            if !flip {
                let lb: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
                cbs_core::atomic::write_bytes(&labels_path(k), &lb)?;
            }
        }
    }

    // Every shard is on disk: assemble the file, one shard in memory at a time.
    let (mut sum, mut sum_sq, mut count) = (0f64, 0f64, 0usize);
    cbs_core::atomic::write_with_path(out, |tmp| -> Result<()> {
        let mut writer = LatentWriter::create(tmp, n, latent_shape)?;
        let mut labels = Vec::with_capacity(n);
        for &flip in passes {
            writer.begin(flip)?;
            for k in 0..shards {
                let path = shard_path(flip, k);
                let bytes = std::fs::read(&path).map_err(|e| file_err(&path, &e))?;
                let v: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if !flip {
                    for &x in &v {
                        sum += f64::from(x);
                        sum_sq += f64::from(x) * f64::from(x);
                    }
                    count += v.len();
                    let lp = labels_path(k);
                    let lb = std::fs::read(&lp).map_err(|e| file_err(&lp, &e))?;
                    labels.extend(
                        lb.chunks_exact(4)
                            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    );
                }
                writer.append(&v)?;
            }
        }
        writer.finish(&labels)?;
        Ok(())
    })?;
    std::fs::remove_dir_all(&parts).map_err(|e| file_err(&parts, &e))?;
    let mean = sum / count as f64;
    Ok(EncodeSummary {
        images: n,
        latent_shape,
        mean,
        std: (sum_sq / count as f64 - mean * mean).max(0.0).sqrt(),
    })
}

/// Standard-normal ε for the images `idx` (mirrored or not): one stream per image, so the
/// draws do not depend on the batch size.
fn posterior_noise(
    seed: u64,
    idx: &[usize],
    flip: bool,
    per: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut v = Vec::with_capacity(idx.len() * per);
    for &i in idx {
        let mut r = rng::stream(
            seed,
            Purpose::LatentPosterior,
            2 * i as u64 + u64::from(flip),
        );
        v.extend((0..per).map(|_| -> f32 { StandardNormal.sample(&mut r) }));
    }
    Ok(Tensor::from_vec(v, idx.len() * per, device)?)
}

/// Decodes unscaled latents `[N, C, h, w]` in batches of `batch` to images `[N, C_img, H, W]`
/// (on the latents' device); `progress(done, N)` counts images decoded.
pub fn decode(
    vae: &AutoencoderKl,
    z: &Tensor,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    if batch == 0 {
        return Err(invalid("batch", "must be at least 1".into()));
    }
    let n = z.dim(0)?;
    let mut parts = Vec::with_capacity(n.div_ceil(batch));
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        parts.push(vae.decode(&z.narrow(0, start, b)?).map_err(model_err)?);
        progress(start + b, n);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Writes unscaled latents `[N, C, H, W]` and their labels as a latents file (crash-safe).
pub fn write_latents(path: &Path, z: &Tensor, labels: Option<&[u32]>) -> Result<()> {
    let (n, c, h, w) = z.dims4()?;
    let v = z.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let zeros;
    let labels = match labels {
        Some(l) => l,
        None => {
            zeros = vec![0u32; n];
            &zeros
        }
    };
    cbs_core::atomic::write_with_path(path, |tmp| -> Result<()> {
        let mut writer = LatentWriter::create(tmp, n, [c, h, w])?;
        writer.begin(false)?;
        writer.append(&v)?;
        Ok(writer.finish(labels)?)
    })?;
    Ok(())
}

/// Reads a latents file: the unscaled latents `[N, C, H, W]` on `device` and, when the file
/// has labels, the labels.
pub fn read_latents(path: &Path, device: &Device) -> Result<(Tensor, Option<Vec<u32>>)> {
    let has_labels = cbs_data::NpzArchive::open(path)
        .map(|a| a.has(cbs_data::LABELS_ARRAY) || a.has("arr_1"))
        .map_err(|e| SampleError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let data = cbs_data::load_latents(path, None, 1.0).map_err(|e| SampleError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let [c, h, w] = data.shape;
    let n = data.labels.len();
    let z = Tensor::from_vec(data.values, (n, c, h, w), device)?;
    Ok((z, has_labels.then_some(data.labels)))
}
