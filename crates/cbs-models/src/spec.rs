//! What a config names (a preset plus geometry) and the network built from it.

use candle_core::{DType, Device, Result as CResult, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use cbs_flow::VelocityField;
use serde::{Deserialize, Serialize};

use crate::mlp::{MlpConfig, MlpNet};
use crate::sit::{init, Sit, SitConfig};
use crate::{ModelError, Result};

/// The `[model]` table of a config: a named preset and the overrides the data set implies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// e.g. `sit-tiny-4`, `sit-b-2`, `sit-xl-2` (`cbs inspect --list` prints them all).
    pub preset: String,
    /// Image side in pixels (latent side for latent models). Default: the data set's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Default: the data set's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_channels: Option<usize>,
    /// Default: the data set's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Default true (as published SiT checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn_sigma: Option<bool>,
    /// Probability of training on the null label (classifier-free guidance). Default 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_dropout_prob: Option<f64>,
}

/// A fully resolved architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "backbone")]
pub enum Architecture {
    Sit(SitConfig),
    Mlp(MlpConfig),
}

impl ModelSpec {
    pub fn new(preset: &str) -> Self {
        Self {
            preset: preset.to_string(),
            image_size: None,
            in_channels: None,
            num_classes: None,
            learn_sigma: None,
            class_dropout_prob: None,
        }
    }

    /// Resolve against the data: `sample_shape` is `[C, H, W]` for images, `[D]` for points;
    /// fields the spec leaves unset come from the data.
    pub fn resolve(&self, sample_shape: &[usize], num_classes: usize) -> Result<Architecture> {
        let mismatch = |what: &str| {
            Err(ModelError::Invalid(format!(
                "preset `{}` is {what}, but the data samples have shape {sample_shape:?}",
                self.preset
            )))
        };
        if let Some(mut cfg) = MlpConfig::preset(&self.preset) {
            let &[dim] = sample_shape else {
                return mismatch("an MLP for points [D]");
            };
            cfg.dim = dim;
            cfg.validate()?;
            return Ok(Architecture::Mlp(cfg));
        }
        let mut cfg = SitConfig::preset(&self.preset).map_err(|_| ModelError::UnknownPreset {
            name: self.preset.clone(),
            known: all_preset_names().join(", "),
        })?;
        let &[c, h, w] = sample_shape else {
            return mismatch("a SiT for images [C, H, W]");
        };
        if h != w {
            return mismatch("a SiT for square images");
        }
        cfg.input_size = self.image_size.unwrap_or(h);
        cfg.in_channels = self.in_channels.unwrap_or(c);
        // SiT always embeds a label; unlabelled data use one class (plus the null row).
        cfg.num_classes = self.num_classes.unwrap_or(num_classes.max(1));
        cfg.learn_sigma = self.learn_sigma.unwrap_or(true);
        cfg.class_dropout_prob = self.class_dropout_prob.unwrap_or(0.1);
        cfg.validate()?;
        Ok(Architecture::Sit(cfg))
    }
}

/// Every preset name of every backbone.
pub fn all_preset_names() -> Vec<String> {
    let mut v = SitConfig::preset_names();
    v.extend(MlpConfig::preset_names());
    v
}

impl Architecture {
    /// Shape of one sample: `[C, H, W]` or `[D]`.
    pub fn sample_shape(&self) -> Vec<usize> {
        match self {
            Architecture::Sit(c) => vec![c.in_channels, c.input_size, c.input_size],
            Architecture::Mlp(c) => vec![c.dim],
        }
    }
    /// 0 for unconditional models.
    pub fn num_classes(&self) -> usize {
        match self {
            Architecture::Sit(c) => c.num_classes,
            Architecture::Mlp(_) => 0,
        }
    }
    /// Label of the null (unconditional) class, when the model has one.
    pub fn null_class(&self) -> Option<u32> {
        match self {
            Architecture::Sit(c) => (c.class_dropout_prob > 0.0).then_some(c.num_classes as u32),
            Architecture::Mlp(_) => None,
        }
    }
    pub fn class_dropout_prob(&self) -> f64 {
        match self {
            Architecture::Sit(c) => c.class_dropout_prob,
            Architecture::Mlp(_) => 0.0,
        }
    }
}

/// A built network of any backbone.
pub enum Model {
    Sit(Sit),
    Mlp(MlpNet),
}

impl Model {
    pub fn new(arch: &Architecture, vb: VarBuilder) -> CResult<Self> {
        Ok(match arch {
            Architecture::Sit(cfg) => Model::Sit(Sit::new(cfg, vb)?),
            Architecture::Mlp(cfg) => Model::Mlp(MlpNet::new(cfg, vb)?),
        })
    }

    /// `x`: `[B, C, H, W]` (or `[B, D]`), `t`: `[B]`, `y`: `[B]` u32 labels → velocity.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> CResult<Tensor> {
        match self {
            Model::Sit(m) => m.forward(x, t, y),
            Model::Mlp(m) => m.forward(x, t),
        }
    }

    /// Fixed buffers that belong in the reference `state_dict` (saved, never trained).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        match self {
            Model::Sit(m) => vec![("pos_embed".to_string(), m.pos_embed().clone())],
            Model::Mlp(_) => vec![],
        }
    }

    fn null(&self) -> Option<u32> {
        match self {
            Model::Sit(m) => {
                let c = m.config();
                (c.class_dropout_prob > 0.0).then_some(c.num_classes as u32)
            }
            Model::Mlp(_) => None,
        }
    }
}

impl VelocityField for Model {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> CResult<Tensor> {
        let y = match y {
            Some(y) => y.clone(),
            // No labels: the unconditional field (null class), or class 0 without one.
            None => Tensor::full(self.null().unwrap_or(0), x.dim(0)?, x.device())?,
        };
        self.forward(x, t, &y)
    }
    fn null_class(&self) -> Option<u32> {
        self.null()
    }
}

/// A trainable network: its variables and the model that reads them.
pub struct Trainable {
    pub arch: Architecture,
    pub varmap: VarMap,
    pub model: Model,
}

impl Trainable {
    /// Fresh weights with the reference initialisation, drawn from `seed`.
    pub fn new(arch: &Architecture, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, device);
        let model = Model::new(arch, vb)?;
        let t = Self {
            arch: arch.clone(),
            varmap,
            model,
        };
        match arch {
            Architecture::Sit(_) => init::init_sit(&t.named_vars(), seed)?,
            Architecture::Mlp(_) => init::init_xavier(&t.named_vars(), seed)?,
        }
        Ok(t)
    }

    /// Trainable variables sorted by name (a stable order for optimizers and checkpoints).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every tensor of the reference `state_dict`: the variables and the fixed buffers.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        v.extend(self.model.buffers());
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
