//! `config.json` of a diffusers `AutoencoderKL` directory (`stabilityai/sd-vae-ft-mse`,
//! `-ema`, and smaller test models of the same family).
//!
//! Every field diffusers writes is named here; a field this implementation does not know is
//! an error (it may change the architecture), and so is a value of a known field that selects
//! a variant not implemented (another block type, activation, or no attention in the middle
//! block).

use std::path::Path;

use serde::Deserialize;

use crate::{ModelError, Result};

/// The scaling factor of the SD VAE's latents (`scaling_factor` in its config; SiT and DiT
/// multiply latents by it before training).
pub const SD_VAE_SCALING_FACTOR: f64 = 0.18215;

/// The `AutoencoderKL` hyper-parameters that shape the network, with diffusers's defaults.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(rename = "_diffusers_version", default)]
    pub diffusers_version: Option<String>,
    #[serde(rename = "_name_or_path", default)]
    pub name_or_path: Option<String>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// Channels of each resolution level, from the image side.
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default)]
    pub down_block_types: Option<Vec<String>>,
    #[serde(default)]
    pub up_block_types: Option<Vec<String>>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
    /// The training resolution (informational).
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub latents_mean: Option<serde_json::Value>,
    #[serde(default)]
    pub latents_std: Option<serde_json::Value>,
    /// Whether diffusers runs the VAE in f32 under half precision (this implementation
    /// always does).
    #[serde(default)]
    pub force_upcast: Option<bool>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn one() -> usize {
    1
}
fn thirty_two() -> usize {
    32
}
fn default_channels() -> Vec<usize> {
    vec![64]
}
fn silu() -> String {
    "silu".into()
}
fn scaling() -> f64 {
    SD_VAE_SCALING_FACTOR
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    /// The configuration of `stabilityai/sd-vae-ft-mse` (and `-ema`): 83.7 M parameters,
    /// images `3×H×W` ↔ latents `4×H/8×W/8`.
    pub fn sd() -> Self {
        Self {
            class_name: Some("AutoencoderKL".into()),
            diffusers_version: None,
            name_or_path: None,
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            down_block_types: None,
            up_block_types: None,
            layers_per_block: 2,
            norm_num_groups: 32,
            act_fn: silu(),
            sample_size: None,
            scaling_factor: SD_VAE_SCALING_FACTOR,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }

    /// Reads and validates `path` (a diffusers `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |reason: String| ModelError::Weights {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let cfg: VaeConfig = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not an AutoencoderKL config: {e}")))?;
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// Image pixels per latent pixel along each side (8 for the SD VAE).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Checks what the type cannot: supported variants and consistent sizes.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(ModelError::Invalid(m));
        if let Some(c) = &self.class_name {
            if c != "AutoencoderKL" {
                return invalid(format!(
                    "_class_name is `{c}`; only `AutoencoderKL` (the SD VAE) is supported"
                ));
            }
        }
        if self.act_fn != "silu" {
            return invalid(format!(
                "act_fn is `{}`; only `silu` is supported",
                self.act_fn
            ));
        }
        let levels = self.block_out_channels.len();
        if !(1..=8).contains(&levels) {
            return invalid(format!(
                "block_out_channels has {levels} entries; expected 1 to 8"
            ));
        }
        for (field, types, want) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if let Some(t) = types {
                if t.len() != levels {
                    return invalid(format!(
                        "{field} has {} entries but block_out_channels has {levels}",
                        t.len()
                    ));
                }
                if let Some(other) = t.iter().find(|s| *s != want) {
                    return invalid(format!(
                        "{field} contains `{other}`; only `{want}` is supported"
                    ));
                }
            }
        }
        let g = self.norm_num_groups;
        if g == 0 {
            return invalid("norm_num_groups is 0".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % g != 0)
        {
            return invalid(format!(
                "block_out_channels entry {c} is not a positive multiple of norm_num_groups {g}"
            ));
        }
        if self.layers_per_block == 0 || self.layers_per_block > 16 {
            return invalid(format!(
                "layers_per_block is {}; expected 1 to 16",
                self.layers_per_block
            ));
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if v == 0 || v > 64 {
                return invalid(format!("{field} is {v}; expected 1 to 64"));
            }
        }
        if !self.mid_block_add_attention {
            return invalid(
                "mid_block_add_attention = false is not supported (the SD VAE has attention)"
                    .into(),
            );
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return invalid(format!(
                "scaling_factor is {}; expected a positive number",
                self.scaling_factor
            ));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return invalid(
                "shift_factor is set: a shifted latent space (SD3/Flux VAEs) is not supported"
                    .into(),
            );
        }
        for (field, v) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if v.as_ref().is_some_and(|v| !v.is_null()) {
                return invalid(format!(
                    "{field} is set: per-channel latent statistics are not supported"
                ));
            }
        }
        Ok(())
    }
}
