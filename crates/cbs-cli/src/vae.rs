//! `cbs encode-latents`, `cbs decode`, and the VAE side of `cbs sample --vae` and `cbs
//! forward --vae`: parse → call `cbs_sample::vae` → report.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use cbs_models::vae::AutoencoderKl;
use cbs_models::Kernels;
use cbs_sample::images;
use cbs_sample::vae::{EncodeOptions, PosteriorDraw};
use clap::Args;

use crate::cli::DeviceArgs;
use crate::progress::bar;

/// `cbs encode-latents`: a data set → SD-VAE latents for the `latents` data source.
#[derive(Args, Debug)]
pub struct EncodeLatentsArgs {
    /// A diffusers AutoencoderKL directory (config.json and
    /// diffusion_pytorch_model.safetensors), e.g. a copy of stabilityai/sd-vae-ft-mse.
    #[arg(long, value_name = "DIR")]
    pub vae: PathBuf,
    /// The images: a TOML file with a [data] table (a whole run config works too), e.g.
    /// source = "image_folder", dir = "imagenet/train", image_size = 256.
    #[arg(long, value_name = "DATA.toml")]
    pub config: PathBuf,
    /// The latents file to write (.npz: `latents` float32 [N, 4, H/8, W/8] unscaled, `labels`
    /// int64, and `latents_flip` with --flip).
    #[arg(long, value_name = "FILE.npz")]
    pub out: PathBuf,
    /// Which latent of each image's posterior is stored: `mean` (default: deterministic, and
    /// a file reused every epoch gains nothing from one frozen random draw) or `sample`
    /// (mean + σ·ε, seeded; fast-DiT's choice).
    #[arg(long, value_enum, default_value_t = PosteriorDraw::Mean)]
    pub posterior: PosteriorDraw,
    /// Seed of the posterior draws (--posterior sample) and of a data_fraction subset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also encode every image mirrored (`latents_flip`): training with hflip then uses the
    /// true latent of the flipped image instead of mirroring the latent.
    #[arg(long)]
    pub flip: bool,
    /// Images per VAE call.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Replace an existing output file. (An interrupted run is resumed from the shards in
    /// OUT.parts/ by running the same command again.)
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `cbs decode`: a latents file → images.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// A diffusers AutoencoderKL directory.
    #[arg(long, value_name = "DIR")]
    pub vae: PathBuf,
    /// A latents file (`latents` float32 [N, C, h, w], unscaled): from `cbs encode-latents`,
    /// or the latents.npz that `cbs sample` writes for a latent model.
    #[arg(long, value_name = "FILE.npz")]
    pub latents: PathBuf,
    /// Output directory: grid.png, samples.npz (uint8 [N, H, W, 3]), labels.txt.
    #[arg(long)]
    pub out: PathBuf,
    /// Latents per VAE call.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[command(flatten)]
    pub images: crate::cli::ImageOutputArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Loads the VAE, naming the directory on failure.
pub fn load_vae(dir: &Path, dev: &Device) -> Result<AutoencoderKl> {
    AutoencoderKl::load(dir, dev, Kernels::Fused)
        .with_context(|| format!("loading the VAE from {}", dir.display()))
}

pub fn encode_latents(a: EncodeLatentsArgs) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!("{} exists; pass --force to replace it", a.out.display());
    }
    let dev = a.device.open()?;
    let data_cfg = cbs_run::DataConfig::from_file(&a.config)?;
    let data = cbs_train::load_data(&data_cfg, a.seed)?;
    let vae = load_vae(&a.vae, &dev)?;
    let n = data.len() * if a.flip { 2 } else { 1 };
    eprintln!(
        "encoding {} images {:?}{} with the VAE of {} (posterior {}) → {}",
        data.len(),
        data.sample_shape(),
        if a.flip {
            " and their mirror images"
        } else {
            ""
        },
        a.vae.display(),
        a.posterior.name(),
        a.out.display()
    );
    let pb = bar(n as u64, "images");
    let opts = EncodeOptions {
        batch: a.batch,
        draw: a.posterior,
        seed: a.seed,
        flips: a.flip,
    };
    // Shards of an interrupted run are reused only for the same encoding.
    let settings = format!(
        "vae {} config {} posterior {} seed {} flip {}\n",
        a.vae.display(),
        a.config.display(),
        a.posterior.name(),
        a.seed,
        a.flip
    );
    let parts = cbs_sample::vae::parts_dir(&a.out);
    if parts.is_dir() {
        eprintln!("resuming from the finished shards in {}", parts.display());
    }
    let result = cbs_sample::vae::encode_dataset(
        &vae,
        data.as_ref(),
        &a.out,
        &opts,
        &settings,
        &dev,
        &mut |done, _| pb.set_position(done as u64),
    );
    pb.finish_and_clear();
    let s = result?;
    let scale = vae.config().scaling_factor;
    eprintln!(
        "wrote {} latents {:?} to {}: mean {:.4}, std {:.4} (scaled by {scale}: std {:.4}; \
         train with source = \"latents\", path = \"{}\")",
        s.images,
        s.latent_shape,
        a.out.display(),
        s.mean,
        s.std,
        s.std * scale,
        a.out.display()
    );
    Ok(())
}

/// Decodes unscaled latents to images with a progress bar.
pub fn decode_with_bar(vae: &AutoencoderKl, z: &Tensor, batch: usize) -> Result<Tensor> {
    let pb = bar(z.dim(0)? as u64, "decoded");
    let result =
        cbs_sample::vae::decode(vae, z, batch, &mut |done, _| pb.set_position(done as u64));
    pb.finish_and_clear();
    Ok(result?)
}

pub fn decode(a: DecodeArgs) -> Result<()> {
    let dev = a.device.open()?;
    let vae = load_vae(&a.vae, &dev)?;
    let (z, labels) = cbs_sample::vae::read_latents(&a.latents, &dev)?;
    let x = decode_with_bar(&vae, &z, a.batch)?;
    images::write_outputs(&a.out, &x, labels.as_deref(), &a.images.options())?;
    eprintln!(
        "decoded {} latents {:?} to {}",
        z.dim(0)?,
        &z.dims()[1..],
        a.out.display()
    );
    Ok(())
}

/// `cbs forward --vae`: `x` (images) → `mean`, `logvar`; `z` (unscaled latents) → `decoded`.
pub fn forward(dir: &Path, inputs: &Path, out: &Path, dev: &Device) -> Result<()> {
    let vae = load_vae(dir, dev)?;
    let tensors = candle_core::safetensors::load(inputs, &Device::Cpu).with_context(|| {
        format!(
            "{}: expected a safetensors file with x (images) and/or z (latents)",
            inputs.display()
        )
    })?;
    let get = |name: &str| -> Result<Option<Tensor>> {
        tensors
            .get(name)
            .map(|t| Ok(t.to_dtype(DType::F32)?.to_device(dev)?))
            .transpose()
    };
    let mut outputs = vec![];
    if let Some(x) = get("x")? {
        let post = vae.encode(&x)?;
        outputs.push(("mean".to_string(), post.mean.to_device(&Device::Cpu)?));
        outputs.push(("logvar".to_string(), post.logvar.to_device(&Device::Cpu)?));
    }
    if let Some(z) = get("z")? {
        outputs.push((
            "decoded".to_string(),
            vae.decode(&z)?.to_device(&Device::Cpu)?,
        ));
    }
    if outputs.is_empty() {
        bail!(
            "{}: no tensor `x` ([B, 3, H, W] images) or `z` ([B, 4, h, w] latents)",
            inputs.display()
        );
    }
    cbs_models::weights::save_safetensors(out, &outputs)?;
    let names: Vec<String> = outputs
        .iter()
        .map(|(n, t)| format!("{n} {:?}", t.dims()))
        .collect();
    eprintln!("wrote {} ({})", out.display(), names.join(", "));
    Ok(())
}
