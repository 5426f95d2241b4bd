//! A small convolutional classifier whose penultimate layer is an offline feature space for
//! FID-style metrics (`cbs train-classifier`, `cbs eval-fid --features classifier:RUN`).
//!
//! Numbers computed in this space are a quality signal for data sets without published
//! Inception statistics; they are **not** comparable with Inception FID.
//!
//! Layout: `convs.{i}` are 3×3 convolutions (the first at stride 1, the others at stride 2),
//! each followed by ReLU; a global average pool; `fc` (→ `feature_dim`, ReLU: the features);
//! `head` (→ classes).

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::unet::conv::Conv3x3;
use crate::{ModelError, Result as MResult};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    pub in_channels: usize,
    pub image_size: usize,
    pub num_classes: usize,
    /// Output channels of each 3×3 convolution; every one after the first halves the side.
    pub widths: Vec<usize>,
    /// Width of the penultimate layer, i.e. the dimension of the features.
    pub feature_dim: usize,
    /// The op implementations the built network runs on (a run option, not part of the
    /// architecture: never serialised; [`crate::Model::new`] sets it).
    #[serde(skip)]
    pub kernels: crate::Kernels,
}

impl ClassifierConfig {
    /// The default for 28–32 px data: 32→64→128→128 channels, 128-d features (≈0.27M
    /// parameters; about one minute per epoch of Fashion-MNIST on two CPU cores).
    pub fn small(in_channels: usize, image_size: usize, num_classes: usize) -> Self {
        Self {
            kernels: crate::Kernels::Fused,
            in_channels,
            image_size,
            num_classes,
            widths: vec![32, 64, 128, 128],
            feature_dim: 128,
        }
    }

    pub fn validate(&self) -> MResult<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.in_channels == 0 || self.image_size == 0 {
            return bad(format!(
                "classifier input must be non-empty, got {} channels of {}×{0}",
                self.in_channels, self.image_size
            ));
        }
        if self.num_classes < 2 {
            return bad(format!(
                "a classifier needs at least 2 classes, the data have {}",
                self.num_classes
            ));
        }
        if self.widths.is_empty() || self.widths.contains(&0) || self.feature_dim == 0 {
            return bad(format!(
                "classifier widths {:?} and feature_dim {} must be non-empty and positive",
                self.widths, self.feature_dim
            ));
        }
        Ok(())
    }
}

/// Features and class logits of a batch.
pub struct ClassifierOutput {
    /// `[B, feature_dim]`, the penultimate layer (after ReLU).
    pub features: Tensor,
    /// `[B, num_classes]`.
    pub logits: Tensor,
}

pub struct Classifier {
    convs: Vec<Conv3x3>,
    fc: Linear,
    head: Linear,
    cfg: ClassifierConfig,
}

impl Classifier {
    pub fn new(cfg: &ClassifierConfig, vb: VarBuilder) -> Result<Self> {
        let mut convs = Vec::with_capacity(cfg.widths.len());
        let mut c_in = cfg.in_channels;
        for (i, &w) in cfg.widths.iter().enumerate() {
            // 3×3, padding 1: the UNet's layer (same keys and values as `candle_nn::conv2d`;
            // on the CPU the fused convolution: a training step here 280 → 65 ms).
            let stride = if i == 0 { 1 } else { 2 };
            convs.push(Conv3x3::new(
                c_in,
                w,
                stride,
                cfg.kernels,
                vb.pp("convs").pp(i),
            )?);
            c_in = w;
        }
        Ok(Self {
            convs,
            fc: linear(c_in, cfg.feature_dim, vb.pp("fc"))?,
            head: linear(cfg.feature_dim, cfg.num_classes, vb.pp("head"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.cfg
    }

    /// `x`: `[B, C, H, W]` in [-1, 1] (the training data's scale).
    pub fn forward(&self, x: &Tensor) -> Result<ClassifierOutput> {
        let mut h = x.clone();
        for conv in &self.convs {
            h = conv.forward(&h)?.relu()?; // [B, w_i, H_i, W_i]
        }
        let pooled = h.mean((2, 3))?; // [B, w_last]
        let features = self.fc.forward(&pooled)?.relu()?; // [B, feature_dim]
        let logits = self.head.forward(&features)?; // [B, num_classes]
        Ok(ClassifierOutput { features, logits })
    }
}
