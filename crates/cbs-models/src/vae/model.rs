//! Encoder, decoder and the whole `AutoencoderKL`, and loading a diffusers directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::config::VaeConfig;
use super::layers::{Conv, DownBlock, GroupNorm, MidBlock, Padding, UpBlock};
use crate::nn::Kernels;
use crate::shapes::ShapeRecorder;
use crate::{weights, ModelError, Result};

/// diffusers's `Encoder`: `conv_in`, the down blocks, the middle block, GroupNorm + SiLU and
/// `conv_out` to `2·latent_channels` (mean and log-variance).
pub struct Encoder {
    conv_in: Conv,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
}

impl Encoder {
    pub fn new(cfg: &VaeConfig, k: Kernels, vb: VarBuilder) -> candle_core::Result<Self> {
        let ch = &cfg.block_out_channels;
        let (g, levels) = (cfg.norm_num_groups, ch.len());
        let same = Padding::Same;
        let conv_in = Conv::new(cfg.in_channels, ch[0], 3, 1, same, k, vb.pp("conv_in"))?;
        let down_blocks = (0..levels)
            .map(|i| {
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                let vb = vb.pp(format!("down_blocks.{i}"));
                let last = i + 1 == levels;
                DownBlock::new(c_in, ch[i], cfg.layers_per_block, !last, g, k, vb)
            })
            .collect::<candle_core::Result<_>>()?;
        let top = ch[levels - 1];
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(top, g, k, vb.pp("mid_block"))?,
            conv_norm_out: GroupNorm::new(top, g, k, vb.pp("conv_norm_out"))?,
            conv_out: Conv::new(
                top,
                2 * cfg.latent_channels,
                3,
                1,
                same,
                k,
                vb.pp("conv_out"),
            )?,
        })
    }
}

impl Module for Encoder {
    /// `[B, C_img, H, W]` → `[B, 2·C_lat, H/f, W/f]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            h = b.forward(&h)?;
        }
        let h = self.mid_block.forward(&h)?;
        self.conv_out
            .forward(&self.conv_norm_out.forward_act(&h, true)?)
    }
}

/// diffusers's `Decoder`: `conv_in`, the middle block, the up blocks (channels in reverse,
/// one resnet more per level than the encoder), GroupNorm + SiLU and `conv_out`.
pub struct Decoder {
    conv_in: Conv,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
}

impl Decoder {
    pub fn new(cfg: &VaeConfig, k: Kernels, vb: VarBuilder) -> candle_core::Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let (g, levels) = (cfg.norm_num_groups, rev.len());
        let same = Padding::Same;
        let up_blocks = (0..levels)
            .map(|i| {
                let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                let vb = vb.pp(format!("up_blocks.{i}"));
                let last = i + 1 == levels;
                UpBlock::new(c_in, rev[i], cfg.layers_per_block + 1, !last, g, k, vb)
            })
            .collect::<candle_core::Result<_>>()?;
        let bottom = rev[levels - 1];
        Ok(Self {
            conv_in: Conv::new(cfg.latent_channels, rev[0], 3, 1, same, k, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(rev[0], g, k, vb.pp("mid_block"))?,
            up_blocks,
            conv_norm_out: GroupNorm::new(bottom, g, k, vb.pp("conv_norm_out"))?,
            conv_out: Conv::new(bottom, cfg.out_channels, 3, 1, same, k, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Decoder {
    /// `[B, C_lat, h, w]` → `[B, C_img, h·f, w·f]`.
    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for b in &self.up_blocks {
            h = b.forward(&h)?;
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward_act(&h, true)?)
    }
}

/// The posterior `N(mean, exp(logvar))` of one batch of images, both `[B, C_lat, h, w]`.
pub struct Posterior {
    pub mean: Tensor,
    /// Clamped to [−30, 20], as diffusers's `DiagonalGaussianDistribution`.
    pub logvar: Tensor,
}

impl Posterior {
    /// `mean + exp(logvar / 2) · eps` for standard-normal `eps` of the same shape.
    pub fn sample(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        &self.mean + (self.logvar.affine(0.5, 0.0)?.exp()? * eps)?
    }
}

/// diffusers's `AutoencoderKL` for inference: images in [−1, 1] ↔ unscaled latents (multiply
/// by [`VaeConfig::scaling_factor`] for the diffusion model, divide before decoding).
pub struct AutoencoderKl {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv>,
    post_quant_conv: Option<Conv>,
    cfg: VaeConfig,
}

/// The weight file of a diffusers model directory, safetensors first.
pub const WEIGHT_FILES: [&str; 2] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
];

impl AutoencoderKl {
    /// Builds the network from `vb` (names as diffusers's `state_dict`). Expects a validated
    /// config.
    pub fn new(cfg: &VaeConfig, k: Kernels, vb: VarBuilder) -> candle_core::Result<Self> {
        let z2 = 2 * cfg.latent_channels;
        let z = cfg.latent_channels;
        let same = Padding::Same;
        Ok(Self {
            encoder: Encoder::new(cfg, k, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, k, vb.pp("decoder"))?,
            quant_conv: cfg
                .use_quant_conv
                .then(|| Conv::new(z2, z2, 1, 1, same, k, vb.pp("quant_conv")))
                .transpose()?,
            post_quant_conv: cfg
                .use_post_quant_conv
                .then(|| Conv::new(z, z, 1, 1, same, k, vb.pp("post_quant_conv")))
                .transpose()?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Images `[B, C_img, H, W]` in [−1, 1] (H, W multiples of the downscale factor) → the
    /// posterior over unscaled latents.
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        self.check_input(x, self.cfg.in_channels, self.cfg.downscale(), "images")?;
        let h = self.encoder.forward(x)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&h)?,
            None => h,
        };
        let c = self.cfg.latent_channels;
        let mean = moments.narrow(1, 0, c)?; // [B, C_lat, h, w]
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?; // [B, C_lat, h, w]
        Ok(Posterior { mean, logvar })
    }

    /// Unscaled latents `[B, C_lat, h, w]` → images `[B, C_img, h·f, w·f]` (about [−1, 1]).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check_input(z, self.cfg.latent_channels, 1, "latents")?;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        Ok(self.decoder.forward(&z)?)
    }

    fn check_input(&self, x: &Tensor, channels: usize, multiple: usize, what: &str) -> Result<()> {
        let dims = x.dims();
        let ok = dims.len() == 4
            && dims[1] == channels
            && dims[0] > 0
            && dims[2] > 0
            && dims[3] > 0
            && dims[2].is_multiple_of(multiple)
            && dims[3].is_multiple_of(multiple);
        if ok {
            return Ok(());
        }
        Err(ModelError::Invalid(format!(
            "the VAE takes {what} [B, {channels}, H, W] with H and W positive multiples of \
             {multiple}; got {dims:?}"
        )))
    }

    /// `(name, dims)` of every weight the network reads, sorted by name.
    pub fn parameter_shapes(cfg: &VaeConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let rec = ShapeRecorder::new();
        AutoencoderKl::new(
            cfg,
            Kernels::Composed,
            rec.var_builder(DType::F32, &Device::Cpu),
        )?;
        let mut shapes = rec.shapes();
        shapes.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(shapes)
    }

    /// Loads a diffusers model directory: `config.json` and [`WEIGHT_FILES`] (the `vae/`
    /// subfolder of a whole pipeline directory also works). Weights are checked by name and
    /// shape against the config before use and held in f32. The attention key names of older
    /// files (`query`, `key`, `value`, `proj_attn`, as the published `sd-vae-ft-mse` has
    /// them) are read as today's (`to_q`, `to_k`, `to_v`, `to_out.0`).
    pub fn load(dir: &Path, device: &Device, k: Kernels) -> Result<Self> {
        let dir = model_dir(dir)?;
        let cfg = VaeConfig::from_file(&dir.join("config.json"))?;
        let (path, raw) = read_weights(&dir)?;
        let tensors = normalize_keys(raw);
        let expected = Self::parameter_shapes(&cfg)?;
        let tensors = squeeze_linear_convs(tensors, &expected);
        weights::check_names_and_shapes(&path, &tensors, &expected)?;
        let tensors = tensors
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.to_device(device)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Ok(Self::new(&cfg, k, vb)?)
    }
}

/// `dir` itself when it has a `config.json`, else its `vae/` subfolder.
fn model_dir(dir: &Path) -> Result<PathBuf> {
    let bad = |reason: String| ModelError::Weights {
        path: dir.display().to_string(),
        reason,
    };
    if !dir.is_dir() {
        return Err(bad(
            "not a directory (expected a diffusers AutoencoderKL directory with config.json and \
             diffusion_pytorch_model.safetensors)"
                .into(),
        ));
    }
    for d in [dir.to_path_buf(), dir.join("vae")] {
        if d.join("config.json").is_file() {
            return Ok(d);
        }
    }
    Err(bad(
        "no config.json here or in vae/ (expected a diffusers AutoencoderKL directory, e.g. \
         stabilityai/sd-vae-ft-mse)"
            .into(),
    ))
}

/// The tensors of the first weight file present, any float type.
fn read_weights(dir: &Path) -> Result<(PathBuf, HashMap<String, Tensor>)> {
    let [st, bin] = WEIGHT_FILES.map(|f| dir.join(f));
    if st.is_file() {
        return Ok((st.clone(), weights::load_safetensors(&st, &Device::Cpu)?));
    }
    if bin.is_file() {
        // A pickle: parsed by the safe reader, never executed.
        let bad = |e: cbs_torch::TorchError| ModelError::Weights {
            path: bin.display().to_string(),
            reason: e.to_string(),
        };
        let file = cbs_torch::TorchFile::open(&bin).map_err(bad)?;
        let (tensors, skipped) = file.load_all(None).map_err(bad)?;
        if let Some(name) = skipped.first() {
            return Err(ModelError::Weights {
                path: bin.display().to_string(),
                reason: format!("tensor `{name}` has an element type candle cannot hold"),
            });
        }
        return Ok((bin, tensors.into_iter().collect()));
    }
    Err(ModelError::Weights {
        path: dir.display().to_string(),
        reason: format!(
            "no weight file ({} or {})",
            WEIGHT_FILES[0], WEIGHT_FILES[1]
        ),
    })
}

/// Older diffusers files name the middle-block attention `query`/`key`/`value`/`proj_attn`.
fn normalize_keys(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    const OLD_NEW: [(&str, &str); 4] = [
        (".attentions.0.query.", ".attentions.0.to_q."),
        (".attentions.0.key.", ".attentions.0.to_k."),
        (".attentions.0.value.", ".attentions.0.to_v."),
        (".attentions.0.proj_attn.", ".attentions.0.to_out.0."),
    ];
    tensors
        .into_iter()
        .map(|(k, t)| {
            let k = OLD_NEW
                .iter()
                .find(|(old, _)| k.contains(old))
                .map_or(k.clone(), |(old, new)| k.replacen(old, new, 1));
            (k, t)
        })
        .collect()
}

/// Converted original-LDM files hold the attention projections as 1×1 convolutions
/// (`[C, C, 1, 1]`); the model reads them as linear maps (`[C, C]`).
fn squeeze_linear_convs(
    tensors: HashMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
) -> HashMap<String, Tensor> {
    let want: HashMap<&str, &[usize]> = expected
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    tensors
        .into_iter()
        .map(|(n, t)| {
            let t = match (want.get(n.as_str()), t.dims()) {
                (Some(&[o, i]), &[o2, i2, 1, 1]) if (*o, *i) == (o2, i2) => {
                    t.reshape((o2, i2)).unwrap_or(t) // [C, C, 1, 1] → [C, C]
                }
                _ => t,
            };
            (n, t)
        })
        .collect()
}
