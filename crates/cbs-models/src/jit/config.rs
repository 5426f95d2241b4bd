use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// Hyperparameters of one JiT network. Field names follow the reference constructor
/// (`JiT(input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio,
/// num_classes, bottleneck_dim, in_context_len, in_context_start)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitConfig {
    /// Image side in pixels.
    pub input_size: usize,
    pub patch_size: usize,
    /// Image channels; the network predicts an image with the same channels.
    pub in_channels: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// MLP width `int(hidden·mlp_ratio)` before the SwiGLU `2/3` factor.
    pub mlp_ratio: f64,
    /// Width of the bottleneck patch embedding (`Conv(C → bottleneck, k = s = p)` then 1×1).
    pub bottleneck_dim: usize,
    /// Number of in-context class tokens (0 disables them).
    pub in_context_len: usize,
    /// Index of the block before which the in-context tokens are prepended.
    pub in_context_start: usize,
    pub num_classes: usize,
    /// Probability of replacing a label by the null class in training (the reference's
    /// `label_drop_prob`). The null row `num_classes` exists whatever this value is.
    pub class_dropout_prob: f64,
    /// The op implementations the built network runs on (a run option, not part of the
    /// architecture: never serialised; [`crate::Model::new`] sets it).
    #[serde(skip)]
    pub kernels: crate::Kernels,
}

/// `(size, depth, hidden, heads, bottleneck_dim, in_context_len, in_context_start)`.
type Size = (&'static str, usize, usize, usize, usize, usize, usize);

/// The published sizes (reference `JiT_{B,L,H}_*`) plus small CPU sizes.
const SIZES: &[Size] = &[
    ("b", 12, 768, 12, 128, 32, 4),
    ("l", 24, 1024, 16, 128, 32, 8),
    ("h", 32, 1280, 16, 256, 32, 10),
    // CPU sizes: `mini` for 32×32 Fashion-MNIST (8×8 = 64 patch tokens, 8 class tokens);
    // `nano` keeps unit tests fast.
    ("mini", 4, 128, 4, 64, 8, 1),
    ("nano", 2, 64, 2, 16, 4, 1),
];

/// `(preset, size, patch, input_size, in_channels, num_classes)`.
const PRESETS: &[(&str, &str, usize, usize, usize, usize)] = &[
    ("jit-b-16", "b", 16, 256, 3, 1000),
    ("jit-b-32", "b", 32, 256, 3, 1000),
    ("jit-l-16", "l", 16, 256, 3, 1000),
    ("jit-l-32", "l", 32, 256, 3, 1000),
    ("jit-h-16", "h", 16, 256, 3, 1000),
    ("jit-h-32", "h", 32, 256, 3, 1000),
    ("jit-b-4", "b", 4, 64, 3, 1000),
    ("jit-mini-4", "mini", 4, 32, 1, 10),
    ("jit-nano-4", "nano", 4, 16, 1, 10),
];

impl JitConfig {
    fn from_preset(preset: &str) -> Option<Self> {
        let &(_, size, patch, input, channels, classes) = PRESETS.iter().find(|p| p.0 == preset)?;
        let &(_, depth, hidden_size, num_heads, bottleneck_dim, icl, ics) =
            SIZES.iter().find(|s| s.0 == size)?;
        Some(Self {
            kernels: crate::Kernels::Fused,
            input_size: input,
            patch_size: patch,
            in_channels: channels,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            bottleneck_dim,
            in_context_len: icl,
            in_context_start: ics,
            num_classes: classes,
            class_dropout_prob: 0.1,
        })
    }
    fn named(preset: &str) -> Self {
        Self::from_preset(preset).expect("preset listed in PRESETS")
    }

    /// JiT-B/16 at 256 px, 3 channels, 1000 classes (reference `JiT_B_16`).
    pub fn b_16() -> Self {
        Self::named("jit-b-16")
    }
    pub fn b_32() -> Self {
        Self::named("jit-b-32")
    }
    pub fn l_16() -> Self {
        Self::named("jit-l-16")
    }
    pub fn l_32() -> Self {
        Self::named("jit-l-32")
    }
    pub fn h_16() -> Self {
        Self::named("jit-h-16")
    }
    pub fn h_32() -> Self {
        Self::named("jit-h-32")
    }
    /// JiT-B with patch 4 at 64 px (not a published preset).
    pub fn b_4() -> Self {
        Self::named("jit-b-4")
    }
    /// 4 blocks × 128 wide, 4 heads, patch 4, 8 class tokens from block 1 (32×32×1, 10 classes).
    pub fn mini_4() -> Self {
        Self::named("jit-mini-4")
    }
    /// 2 blocks × 64 wide, 2 heads, patch 4 (16×16×1, 10 classes): for tests.
    pub fn nano_4() -> Self {
        Self::named("jit-nano-4")
    }

    /// All preset names, e.g. `jit-b-16`.
    pub fn preset_names() -> Vec<String> {
        PRESETS.iter().map(|p| p.0.to_string()).collect()
    }

    /// A preset by name with its default geometry, which callers override for their data
    /// (set `input_size`, `in_channels`, `num_classes`, then call [`JitConfig::validate`]).
    pub fn preset(name: &str) -> Result<Self> {
        Self::from_preset(name).ok_or_else(|| ModelError::UnknownPreset {
            name: name.to_string(),
            known: Self::preset_names().join(", "),
        })
    }

    /// The predicted image has the input's channels.
    pub fn out_channels(&self) -> usize {
        self.in_channels
    }
    pub fn grid_size(&self) -> usize {
        self.input_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// SwiGLU hidden width: `int(int(hidden·mlp_ratio)·2/3)` (2048 for hidden 768).
    pub fn mlp_hidden(&self) -> usize {
        let h = (self.hidden_size as f64 * self.mlp_ratio) as usize;
        ((h * 2) as f64 / 3.0) as usize
    }
    /// The label table always has the null row (`num_classes + 1` rows), as the reference.
    pub fn label_rows(&self) -> usize {
        self.num_classes + 1
    }
    /// The label of the null (unconditional) class.
    pub fn null_class(&self) -> u32 {
        self.num_classes as u32
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.patch_size == 0 || !self.input_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "input_size {} is not a multiple of patch_size {}",
                self.input_size, self.patch_size
            ));
        }
        if self.input_size == 0 {
            return bad("input_size must be positive".into());
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if !self.head_dim().is_multiple_of(4) {
            return bad(format!(
                "head dim {} must be a multiple of 4 (2-D RoPE rotates pairs on two axes)",
                self.head_dim()
            ));
        }
        if self.in_channels == 0
            || self.depth == 0
            || self.num_classes == 0
            || self.bottleneck_dim == 0
        {
            return bad(
                "in_channels, depth, num_classes and bottleneck_dim must be positive".into(),
            );
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_hidden() > 0) {
            return bad(format!("mlp_ratio {} gives no MLP width", self.mlp_ratio));
        }
        if self.in_context_len > 0 && self.in_context_start >= self.depth {
            return bad(format!(
                "in_context_start {} must be below depth {} (the class tokens would never be \
                 prepended, yet stripped)",
                self.in_context_start, self.depth
            ));
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
