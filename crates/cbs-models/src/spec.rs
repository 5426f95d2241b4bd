//! What a config names (a preset plus geometry) and the network built from it.

use candle_core::{DType, Device, Result as CResult, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use cbs_flow::VelocityField;
use serde::{Deserialize, Serialize};

use crate::backbone::{find_preset, Backbone};
use crate::jit::{self, Jit, JitConfig};
use crate::mlp::{MlpConfig, MlpNet};
use crate::sit::{init, Sit, SitConfig};
use crate::unet::{Unet, UnetConfig};
use crate::{Kernels, ModelError, Result};

/// Largest image side a model may be built for (pixels or latent cells).
pub const MAX_IMAGE_SIZE: usize = 4096;
/// Largest channel count (or point dimension).
pub const MAX_CHANNELS: usize = 4096;
/// Largest number of classes (ImageNet-21k has 21,841).
pub const MAX_CLASSES: usize = 1 << 20;

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
    Jit(JitConfig),
    Unet(UnetConfig),
    Mlp(MlpConfig),
}

impl Architecture {
    /// The same architecture built on the `kernels` policy (which is not serialised).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.backbone_mut().set_kernels(kernels);
        self
    }

    /// The backbone's configuration behind the registry's trait.
    pub fn backbone(&self) -> &dyn Backbone {
        match self {
            Architecture::Sit(c) => c,
            Architecture::Jit(c) => c,
            Architecture::Unet(c) => c,
            Architecture::Mlp(c) => c,
        }
    }

    fn backbone_mut(&mut self) -> &mut dyn Backbone {
        match self {
            Architecture::Sit(c) => c,
            Architecture::Jit(c) => c,
            Architecture::Unet(c) => c,
            Architecture::Mlp(c) => c,
        }
    }
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
        let mut arch = find_preset(&self.preset).ok_or_else(|| self.unknown())?;
        arch.backbone_mut().fit(self, sample_shape, num_classes)?;
        let too_big = |what: &str, value: usize, max: usize| {
            ModelError::Invalid(format!(
                "{what} {value} is larger than {max} (the most this build accepts; a value this \
                 large is almost certainly a typo, and its tables would not fit in memory)"
            ))
        };
        let shape = arch.sample_shape();
        if let [c, h, w] = shape[..] {
            if h.max(w) > MAX_IMAGE_SIZE {
                return Err(too_big("model.image_size", h.max(w), MAX_IMAGE_SIZE));
            }
            if c > MAX_CHANNELS {
                return Err(too_big("model.in_channels", c, MAX_CHANNELS));
            }
        } else if let Some(&d) = shape.iter().max() {
            if d > MAX_CHANNELS {
                return Err(too_big("the data dimension", d, MAX_CHANNELS));
            }
        }
        if arch.num_classes() > MAX_CLASSES {
            return Err(too_big(
                "model.num_classes",
                arch.num_classes(),
                MAX_CLASSES,
            ));
        }
        Ok(arch)
    }
}

impl ModelSpec {
    /// The sample shape and class count a preset is published with (SiT: ImageNet-256
    /// latents 4×32×32; JiT: its pixel size; MLP: 2-D points), used by `cbs inspect` when
    /// no geometry is given.
    pub fn default_geometry(&self) -> Result<(Vec<usize>, usize)> {
        let arch = find_preset(&self.preset).ok_or_else(|| self.unknown())?;
        Ok((arch.sample_shape(), arch.num_classes()))
    }

    fn unknown(&self) -> ModelError {
        ModelError::UnknownPreset {
            name: self.preset.clone(),
            known: crate::backbone::all_preset_names().join(", "),
        }
    }
}

impl Architecture {
    /// Shape of one sample: `[C, H, W]` or `[D]`.
    pub fn sample_shape(&self) -> Vec<usize> {
        self.backbone().sample_shape()
    }
    /// 0 for unconditional models.
    pub fn num_classes(&self) -> usize {
        self.backbone().num_classes()
    }
    /// Label of the null (unconditional) class, when the model has one.
    pub fn null_class(&self) -> Option<u32> {
        self.backbone().null_class()
    }
    pub fn class_dropout_prob(&self) -> f64 {
        self.backbone().class_dropout_prob()
    }

    /// The regression target of training (see [`Backbone::training_target`]).
    pub fn training_target(
        &self,
        x0: &Tensor,
        x1: &Tensor,
        xt: &Tensor,
        t: &Tensor,
    ) -> CResult<Tensor> {
        self.backbone().training_target(x0, x1, xt, t)
    }

    /// How training draws times when the config does not say (see
    /// [`Backbone::default_time_sampling`]).
    pub fn default_time_sampling(&self) -> Option<(f64, f64)> {
        self.backbone().default_time_sampling()
    }
}

/// A built network of any backbone, computing in the dtype of the weights it was built from.
/// Inputs and outputs keep the caller's dtype: [`Model::forward`] casts the noisy sample in
/// and the velocity out, and times stay in the caller's dtype until the timestep embedders
/// have formed their frequency features, so a bf16 network serves an f32 sampler or loss.
pub struct Model {
    net: Net,
    dtype: DType,
}

enum Net {
    Sit(Sit),
    Jit(Jit),
    Unet(Unet),
    Mlp(MlpNet),
}

impl Model {
    pub fn new(arch: &Architecture, kernels: Kernels, vb: VarBuilder) -> CResult<Self> {
        let arch = arch.clone().with_kernels(kernels);
        let dtype = vb.dtype();
        let net = match &arch {
            Architecture::Sit(cfg) => Net::Sit(Sit::new(cfg, vb)?),
            Architecture::Jit(cfg) => Net::Jit(Jit::new(cfg, vb)?),
            Architecture::Unet(cfg) => Net::Unet(Unet::new(cfg, vb)?),
            Architecture::Mlp(cfg) => Net::Mlp(MlpNet::new(cfg, vb)?),
        };
        Ok(Self { net, dtype })
    }

    /// The dtype the network computes in (its weights' and activations').
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `x`: `[B, C, H, W]` (or `[B, D]`), `t`: `[B]`, `y`: `[B]` u32 labels → velocity
    /// (JiT's clean-image prediction converted with [`jit::x_to_velocity`]), in `x`'s dtype.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> CResult<Tensor> {
        self.forward_impl(x, t, y, None)
    }

    /// The network's own output: SiT's whole final layer (the velocity and, with
    /// `learn_sigma`, the variance channels, as DiT's `forward` returns them; SiT's `forward`
    /// drops them), JiT's clean-image prediction, the UNet's and MLP's velocity; in `x`'s
    /// dtype.
    pub fn forward_raw(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> CResult<Tensor> {
        let xc = x.to_dtype(self.dtype)?;
        let out = match &self.net {
            Net::Sit(m) => m.forward_raw(&xc, t, y)?,
            Net::Jit(m) => m.forward(&xc, t, y)?,
            Net::Unet(m) => m.forward(&xc, t, m.labels(y))?,
            Net::Mlp(m) => m.forward(&xc, t)?,
        };
        out.to_dtype(x.dtype())
    }

    /// As [`Model::forward`], in training mode: dropout (where the backbone has it) draws its
    /// masks from `dropout_seed`, so a step is reproducible.
    pub fn forward_train(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: &Tensor,
        dropout_seed: u64,
    ) -> CResult<Tensor> {
        self.forward_impl(x, t, y, Some(dropout_seed))
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: &Tensor,
        dropout_seed: Option<u64>,
    ) -> CResult<Tensor> {
        let xc = x.to_dtype(self.dtype)?;
        let out = match &self.net {
            Net::Sit(m) => m.forward(&xc, t, y)?,
            // The conversion to a velocity divides by 1 − t: done in the caller's dtype.
            Net::Jit(m) => {
                let x_hat = m.forward(&xc, t, y)?.to_dtype(x.dtype())?;
                return jit::x_to_velocity(&x_hat, x, t, jit::JIT_T_CLAMP);
            }
            Net::Unet(m) => match dropout_seed {
                Some(seed) => m.forward_train(&xc, t, m.labels(y), seed)?,
                None => m.forward(&xc, t, m.labels(y))?,
            },
            Net::Mlp(m) => m.forward(&xc, t)?,
        };
        out.to_dtype(x.dtype())
    }

    /// The transformer backbones as a chain of stages, for activation checkpointing (a block's
    /// activations recomputed in the backward pass): `None` for the UNet and the MLP.
    /// `stem(x, t, y)` → `(h0, ctx)`; `stage(i, h, ctx)` for `i < stages`; `head(h, ctx, x, t)`
    /// gives what [`Model::forward_train`] gives.
    pub fn staged(&self) -> Option<Staged<'_>> {
        match &self.net {
            Net::Sit(_) | Net::Jit(_) => Some(Staged { model: self }),
            Net::Unet(_) | Net::Mlp(_) => None,
        }
    }

    /// Fixed buffers that belong in the reference `state_dict` (saved, never trained).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        match &self.net {
            Net::Sit(m) => vec![("pos_embed".to_string(), m.pos_embed().clone())],
            Net::Jit(m) => m.buffers(),
            Net::Unet(_) => vec![],
            Net::Mlp(_) => vec![],
        }
    }

    fn null(&self) -> Option<u32> {
        match &self.net {
            Net::Sit(m) => m.config().null_class(),
            Net::Jit(m) => Backbone::null_class(m.config()),
            Net::Unet(m) => m.config().null_class(),
            Net::Mlp(_) => None,
        }
    }
}

/// A transformer [`Model`] seen as stem → blocks → head (see [`Model::staged`]).
pub struct Staged<'a> {
    model: &'a Model,
}

impl Staged<'_> {
    pub fn stages(&self) -> usize {
        match &self.model.net {
            Net::Sit(m) => m.num_stages(),
            Net::Jit(m) => m.num_stages(),
            _ => 0,
        }
    }

    /// The embeddings: the token sequence and the conditioning tensors every block reads.
    pub fn stem(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> CResult<(Tensor, Vec<Tensor>)> {
        let xc = x.to_dtype(self.model.dtype)?;
        match &self.model.net {
            Net::Sit(m) => m.stem(&xc, t, y),
            Net::Jit(m) => m.stem(&xc, t, y),
            _ => candle_core::bail!("not a staged backbone"),
        }
    }

    pub fn stage(&self, i: usize, h: &Tensor, ctx: &[Tensor]) -> CResult<Tensor> {
        match &self.model.net {
            Net::Sit(m) => m.stage(i, h, ctx),
            Net::Jit(m) => m.stage(i, h, ctx),
            _ => candle_core::bail!("not a staged backbone"),
        }
    }

    /// The output of [`Model::forward_train`] from the last block's tokens (`x`, `t` as given
    /// to the stem).
    pub fn head(&self, h: &Tensor, ctx: &[Tensor], x: &Tensor, t: &Tensor) -> CResult<Tensor> {
        match &self.model.net {
            Net::Sit(m) => m.head(h, ctx)?.to_dtype(x.dtype()),
            Net::Jit(m) => {
                let x_hat = m.head(h, ctx)?.to_dtype(x.dtype())?;
                jit::x_to_velocity(&x_hat, x, t, jit::JIT_T_CLAMP)
            }
            _ => candle_core::bail!("not a staged backbone"),
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
    kernels: Kernels,
}

impl Trainable {
    /// Fresh weights with the reference initialisation, drawn from `seed`, built on the
    /// `kernels` policy.
    pub fn new(
        arch: &Architecture,
        kernels: Kernels,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, device);
        let model = Model::new(arch, kernels, vb)?;
        let t = Self {
            arch: arch.clone(),
            varmap,
            model,
            kernels,
        };
        match arch {
            Architecture::Sit(_) => init::init_sit(&t.named_vars(), seed)?,
            Architecture::Jit(_) => jit::init::init_jit(&t.named_vars(), seed)?,
            Architecture::Unet(_) => crate::unet::init::init_unet(&t.named_vars(), seed)?,
            Architecture::Mlp(_) => crate::common::init::init_xavier(&t.named_vars(), seed)?,
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

    /// The network reading the variables cast to `dtype` (mixed precision): each cast is a
    /// graph node, so the gradients of a loss on its output reach the variables in their own
    /// dtype. Built per step, like PyTorch's autocast casts weights per op; use
    /// [`Trainable::model`] when `dtype` is the variables' own.
    pub fn cast_model(&self, dtype: DType) -> CResult<Model> {
        let device = self.model_device()?;
        let tensors = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().to_dtype(dtype)?)))
            .collect::<CResult<std::collections::HashMap<_, _>>>()?;
        let vb = VarBuilder::from_tensors(tensors, dtype, &device);
        Model::new(&self.arch, self.kernels, vb)
    }

    fn model_device(&self) -> CResult<Device> {
        let data = self.varmap.data().lock().expect("varmap lock");
        Ok(data
            .values()
            .next()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu))
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
