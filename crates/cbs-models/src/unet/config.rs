use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// Hyperparameters of one UNet. Field names follow torchcfm's `UNetModelWrapper` /
/// guided-diffusion's `UNetModel` constructors, with three differences of representation:
/// `attention_resolutions` is a list of resolutions in pixels (the wrapper's `"16"` string),
/// `num_classes = 0` means unconditional (the reference's `None`), and `learn_sigma` decides
/// `out_channels` (as in the wrapper) so that overriding `in_channels` cannot leave it stale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    /// Image side in pixels (square images).
    pub image_size: usize,
    pub in_channels: usize,
    /// Base channel count (`num_channels` in the wrapper); the time embedding has 4× this.
    pub model_channels: usize,
    pub num_res_blocks: usize,
    /// Resolutions (pixels) at which attention blocks follow the res blocks; the reference
    /// converts each to a downsample rate `image_size / res`.
    pub attention_resolutions: Vec<usize>,
    /// Dropout in every res block (between the second SiLU and the last conv).
    pub dropout: f64,
    /// Channel multiplier per level (`model_channels · mult`).
    pub channel_mult: Vec<usize>,
    /// Heads per attention block, unless `num_head_channels` is set.
    pub num_heads: usize,
    /// Fixed channels per head (`heads = channels / num_head_channels`); the reference's -1 is
    /// `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_head_channels: Option<usize>,
    /// 0: unconditional (no `label_emb`). Otherwise `label_emb` is an embedding table of
    /// `num_classes` rows (the reference), plus one null-class row (label `num_classes`) for
    /// classifier-free guidance when `class_dropout_prob > 0` (our addition).
    pub num_classes: usize,
    /// Probability of replacing a label by the null class in training.
    pub class_dropout_prob: f64,
    /// Output twice the channels (`out_channels = 2·in_channels`); only the first half is the
    /// velocity.
    pub learn_sigma: bool,
    /// FiLM conditioning `norm(h)·(1 + scale) + shift` instead of `h + emb` (wrapper: false).
    pub use_scale_shift_norm: bool,
    /// Learned 3×3 convolutions for down/upsampling (the reference default). Only `true`.
    #[serde(default = "yes")]
    pub conv_resample: bool,
    /// Res blocks for down/upsampling. Not supported (only `false`, the wrapper default).
    #[serde(default)]
    pub resblock_updown: bool,
    /// Split qkv before heads. Not supported (only `false`, the wrapper default: legacy order).
    #[serde(default)]
    pub use_new_attention_order: bool,
    /// The op implementations the built network runs on (a run option, not part of the
    /// architecture: never serialised; [`crate::Model::new`] sets it).
    #[serde(skip)]
    pub kernels: crate::Kernels,
}

fn yes() -> bool {
    true
}

/// GroupNorm32: 32 groups everywhere.
pub const NORM_GROUPS: usize = 32;

const PRESETS: &[&str] = &["unet-cifar", "unet-mini"];

impl UnetConfig {
    /// torchcfm's CIFAR-10 model (`examples/images/cifar10/train_cifar10.py`): 128 channels,
    /// mult (1, 2, 2, 2), 2 res blocks, attention at 16 px with 64 channels per head, dropout
    /// 0.1. Unconditional, 35 746 307 parameters.
    pub fn cifar() -> Self {
        Self {
            kernels: crate::Kernels::Fused,
            image_size: 32,
            in_channels: 3,
            model_channels: 128,
            num_res_blocks: 2,
            attention_resolutions: vec![16],
            dropout: 0.1,
            channel_mult: vec![1, 2, 2, 2],
            num_heads: 4,
            num_head_channels: Some(64),
            num_classes: 0,
            class_dropout_prob: 0.1,
            learn_sigma: false,
            use_scale_shift_norm: false,
            conv_resample: true,
            resblock_updown: false,
            use_new_attention_order: false,
        }
    }

    /// A CPU-sized UNet for 32×32 (padded) Fashion-MNIST: 32 channels, mult (1, 2, 2), 1 res
    /// block, attention at 8 px (2 heads of 32 channels), no dropout. 1 112 801 parameters
    /// unconditional.
    pub fn mini() -> Self {
        Self {
            kernels: crate::Kernels::Fused,
            image_size: 32,
            in_channels: 1,
            model_channels: 32,
            num_res_blocks: 1,
            attention_resolutions: vec![8],
            dropout: 0.0,
            channel_mult: vec![1, 2, 2],
            num_heads: 2,
            num_head_channels: Some(32),
            num_classes: 0,
            class_dropout_prob: 0.1,
            learn_sigma: false,
            use_scale_shift_norm: false,
            conv_resample: true,
            resblock_updown: false,
            use_new_attention_order: false,
        }
    }

    pub fn preset_names() -> Vec<String> {
        PRESETS.iter().map(|s| s.to_string()).collect()
    }

    /// A preset by name. Callers override `image_size`, `in_channels` and `num_classes` for
    /// their data, then call [`UnetConfig::validate`].
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "unet-cifar" => Ok(Self::cifar()),
            "unet-mini" => Ok(Self::mini()),
            _ => Err(ModelError::UnknownPreset {
                name: name.to_string(),
                known: PRESETS.join(", "),
            }),
        }
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// Width of the time (and label) embedding: `4 · model_channels`.
    pub fn time_embed_dim(&self) -> usize {
        4 * self.model_channels
    }

    /// Channels of level `level`.
    pub fn level_channels(&self, level: usize) -> usize {
        self.model_channels * self.channel_mult[level]
    }

    /// Downsample rates (1, 2, 4, …) at which attention blocks are inserted (the wrapper's
    /// `image_size // res`).
    pub fn attention_ds(&self) -> Vec<usize> {
        self.attention_resolutions
            .iter()
            .map(|&r| self.image_size / r.max(1))
            .collect()
    }

    /// Heads of an attention block over `channels` channels.
    pub fn heads_for(&self, channels: usize) -> usize {
        match self.num_head_channels {
            Some(c) => channels / c.max(1),
            None => self.num_heads,
        }
    }

    /// Rows of `label_emb`: 0 when unconditional, `num_classes (+1 null row)` otherwise.
    pub fn label_rows(&self) -> usize {
        if self.num_classes == 0 {
            0
        } else {
            self.num_classes + usize::from(self.class_dropout_prob > 0.0)
        }
    }

    /// Label of the null (unconditional) class, when the model has one.
    pub fn null_class(&self) -> Option<u32> {
        (self.num_classes > 0 && self.class_dropout_prob > 0.0).then_some(self.num_classes as u32)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(format!("unet: {m}")));
        if !self.conv_resample {
            return bad("conv_resample = false is not supported (only learned 3×3 convs)".into());
        }
        if self.resblock_updown {
            return bad("resblock_updown = true is not supported".into());
        }
        if self.use_new_attention_order {
            return bad("use_new_attention_order = true is not supported (legacy order)".into());
        }
        if self.in_channels == 0 || self.model_channels == 0 || self.num_res_blocks == 0 {
            return bad("in_channels, model_channels and num_res_blocks must be positive".into());
        }
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return bad(format!(
                "channel_mult {:?} must be non-empty and positive",
                self.channel_mult
            ));
        }
        let levels = self.channel_mult.len();
        let max_ds = 1usize << (levels - 1);
        if self.image_size == 0 || !self.image_size.is_multiple_of(max_ds) {
            return bad(format!(
                "image_size {} must be a positive multiple of {max_ds} ({levels} levels)",
                self.image_size
            ));
        }
        for l in 0..levels {
            let c = self.level_channels(l);
            if !c.is_multiple_of(NORM_GROUPS) {
                return bad(format!(
                    "level {l} has {c} channels, not a multiple of the {NORM_GROUPS} GroupNorm groups"
                ));
            }
        }
        // Attention at the levels named by `attention_resolutions`, plus the middle block.
        let mut attn_channels = vec![self.level_channels(levels - 1)];
        for &r in &self.attention_resolutions {
            let ds = self.image_size / r.max(1);
            let level = (0..levels).find(|&l| 1 << l == ds);
            match level {
                Some(l) if r > 0 && self.image_size.is_multiple_of(r) => {
                    attn_channels.push(self.level_channels(l))
                }
                _ => {
                    return bad(format!(
                        "attention resolution {r} is not the resolution of a level of a {}-px \
                         UNet with {levels} levels",
                        self.image_size
                    ))
                }
            }
        }
        for c in attn_channels {
            match self.num_head_channels {
                Some(hc) if hc == 0 || !c.is_multiple_of(hc) => {
                    return bad(format!(
                        "attention over {c} channels is not divisible by num_head_channels {hc}"
                    ))
                }
                None if self.num_heads == 0 || !c.is_multiple_of(self.num_heads) => {
                    return bad(format!(
                        "attention over {c} channels is not divisible by num_heads {}",
                        self.num_heads
                    ))
                }
                _ => {}
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            return bad(format!(
                "class_dropout_prob {} must be in [0, 1)",
                self.class_dropout_prob
            ));
        }
        Ok(())
    }
}
