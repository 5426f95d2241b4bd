use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// Hyperparameters of one SiT network. Field names follow the reference constructor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitConfig {
    pub input_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// Probability of replacing a label by the null class in training; > 0 adds the null row.
    pub class_dropout_prob: f64,
    pub num_classes: usize,
    /// Output twice the channels (published checkpoints); only the first half is the velocity.
    pub learn_sigma: bool,
    /// The op implementations the built network runs on (a run option, not part of the
    /// architecture: never serialised; [`crate::Model::new`] sets it).
    #[serde(skip)]
    pub kernels: crate::Kernels,
}

/// `(name, depth, hidden, heads)` of the published sizes plus small CPU sizes.
const SIZES: &[(&str, usize, usize, usize)] = &[
    ("s", 12, 384, 6),
    ("b", 12, 768, 12),
    ("l", 24, 1024, 16),
    ("xl", 28, 1152, 16),
    // CPU sizes: `tiny` trains Fashion-MNIST to recognisable samples in minutes on 2 cores;
    // `nano` keeps unit tests fast.
    ("tiny", 6, 192, 3),
    ("mini", 4, 128, 4),
    ("nano", 2, 64, 2),
];
const PATCHES: &[usize] = &[2, 4, 8];

impl SitConfig {
    fn sized(size: &str, patch: usize) -> Self {
        let &(_, depth, hidden_size, num_heads) = SIZES
            .iter()
            .find(|s| s.0 == size)
            .expect("preset size listed in SIZES");
        Self {
            kernels: crate::Kernels::Fused,
            input_size: 32,
            patch_size: patch,
            in_channels: 4,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            class_dropout_prob: 0.1,
            num_classes: 1000,
            learn_sigma: true,
        }
    }
    pub fn s_2() -> Self {
        Self::sized("s", 2)
    }
    pub fn b_2() -> Self {
        Self::sized("b", 2)
    }
    pub fn l_2() -> Self {
        Self::sized("l", 2)
    }
    pub fn xl_2() -> Self {
        Self::sized("xl", 2)
    }
    pub fn tiny_4() -> Self {
        Self::sized("tiny", 4)
    }
    pub fn nano_4() -> Self {
        Self::sized("nano", 4)
    }

    /// All preset names, e.g. `sit-xl-2`.
    pub fn preset_names() -> Vec<String> {
        SIZES
            .iter()
            .flat_map(|(s, ..)| PATCHES.iter().map(move |p| format!("sit-{s}-{p}")))
            .collect()
    }

    /// A preset by name (`sit-{s,b,l,xl,tiny,nano}-{2,4,8}`), with the ImageNet-latent defaults
    /// (32×32×4, 1000 classes) that callers override for their data.
    pub fn preset(name: &str) -> Result<Self> {
        let unknown = || ModelError::UnknownPreset {
            name: name.to_string(),
            known: Self::preset_names().join(", "),
        };
        let rest = name.strip_prefix("sit-").ok_or_else(unknown)?;
        let (size, patch) = rest.rsplit_once('-').ok_or_else(unknown)?;
        let patch: usize = patch.parse().map_err(|_| unknown())?;
        if !PATCHES.contains(&patch) || !SIZES.iter().any(|s| s.0 == size) {
            return Err(unknown());
        }
        Ok(Self::sized(size, patch))
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }
    pub fn grid_size(&self) -> usize {
        self.input_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// The null-class row exists only when labels are dropped in training (as in the reference).
    pub fn label_rows(&self) -> usize {
        self.num_classes + usize::from(self.class_dropout_prob > 0.0)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.patch_size == 0 || !self.input_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "input_size {} is not a multiple of patch_size {}",
                self.input_size, self.patch_size
            ));
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if !self.hidden_size.is_multiple_of(4) {
            return bad(format!(
                "hidden_size {} must be a multiple of 4 (2-D sin-cos positions)",
                self.hidden_size
            ));
        }
        if self.in_channels == 0 || self.depth == 0 || self.num_classes == 0 {
            return bad("in_channels, depth and num_classes must be positive".into());
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
