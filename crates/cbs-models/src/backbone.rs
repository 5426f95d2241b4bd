//! The backbone registry: every backbone's config implements [`Backbone`], and the registry
//! lists each backbone once with its presets. Generic code (resolving a `[model]` table, the
//! geometry of a checkpoint, the training target) asks the trait instead of matching on
//! preset-name prefixes.

use candle_core::{Result as CResult, Tensor};

use crate::jit::{self, JitConfig};
use crate::mlp::MlpConfig;
use crate::sit::SitConfig;
use crate::spec::{Architecture, ModelSpec};
use crate::unet::UnetConfig;
use crate::{Kernels, ModelError, Result};

/// What generic code needs of a backbone's configuration.
pub trait Backbone {
    /// Fit a preset to the data: fields `spec` leaves unset come from the data's sample shape
    /// (`[C, H, W]` or `[D]`) and class count. Validates the result.
    fn fit(&mut self, spec: &ModelSpec, sample_shape: &[usize], num_classes: usize) -> Result<()>;
    /// Shape of one sample: `[C, H, W]` or `[D]`.
    fn sample_shape(&self) -> Vec<usize>;
    /// 0 for unconditional models.
    fn num_classes(&self) -> usize;
    /// Label of the null (unconditional) class, when the model has one.
    fn null_class(&self) -> Option<u32>;
    fn class_dropout_prob(&self) -> f64;
    /// The op implementations the built network runs on (not serialised).
    fn set_kernels(&mut self, kernels: Kernels);
    /// The regression target of training for `x_t` on the path from `x0` (noise) to `x1`
    /// (data) at times `t` (`[B]`): the velocity `x1 − x0` unless the backbone says otherwise.
    fn training_target(
        &self,
        x0: &Tensor,
        x1: &Tensor,
        _xt: &Tensor,
        _t: &Tensor,
    ) -> CResult<Tensor> {
        x1 - x0
    }
    /// `(mean, std)` of the logit-normal time distribution the backbone's reference trains
    /// with, when the config does not choose one (`None`: uniform).
    fn default_time_sampling(&self) -> Option<(f64, f64)> {
        None
    }
    /// Floating-point operations of the matrix products of one sample's forward pass (2 per
    /// multiply-add: every linear layer and the two attention products), the count MFU
    /// figures use (a training step is 3× it); `None` where not counted.
    fn forward_flops(&self) -> Option<f64> {
        None
    }
}

/// Matrix-product FLOPs of a transformer trunk: `depth` adaLN blocks over `tokens(i)` tokens
/// of width `c` (attention qkv + scores + values + proj, an MLP of `mlp_in·c` multiply-adds
/// per token), plus the per-sample adaLN projection `c → 6c` of each block.
fn trunk_flops(depth: usize, c: f64, mlp_macs: f64, tokens: impl Fn(usize) -> f64) -> f64 {
    (0..depth)
        .map(|i| {
            let n = tokens(i);
            2.0 * (6.0 * c * c + n * (4.0 * c * c + mlp_macs) + 2.0 * n * n * c)
        })
        .sum()
}

/// The timestep MLP (256 frequencies → c → c) and the final layer (adaLN `c → 2c`, `c →
/// out` per token) shared by SiT and JiT.
fn head_flops(c: f64, n: f64, out: f64) -> f64 {
    2.0 * (256.0 * c + c * c + 2.0 * c * c + n * c * out)
}

/// One registered backbone: its preset names and the resolved configuration of a preset.
struct Entry {
    names: fn() -> Vec<String>,
    preset: fn(&str) -> Option<Architecture>,
}

const REGISTRY: &[Entry] = &[
    Entry {
        names: SitConfig::preset_names,
        preset: |n| SitConfig::preset(n).ok().map(Architecture::Sit),
    },
    Entry {
        names: JitConfig::preset_names,
        preset: |n| JitConfig::preset(n).ok().map(Architecture::Jit),
    },
    Entry {
        names: UnetConfig::preset_names,
        preset: |n| UnetConfig::preset(n).ok().map(Architecture::Unet),
    },
    Entry {
        names: MlpConfig::preset_names,
        preset: |n| MlpConfig::preset(n).map(Architecture::Mlp),
    },
];

/// The published configuration of a preset, whichever backbone has it.
pub fn find_preset(name: &str) -> Option<Architecture> {
    REGISTRY.iter().find_map(|e| (e.preset)(name))
}

/// Every preset name of every backbone.
pub fn all_preset_names() -> Vec<String> {
    REGISTRY.iter().flat_map(|e| (e.names)()).collect()
}

/// `[C, H, W]` of square images, or an error naming the preset and what it expects.
fn square_image(spec: &ModelSpec, shape: &[usize], what: &str) -> Result<(usize, usize)> {
    match *shape {
        [c, h, w] if h == w => Ok((c, h)),
        _ => Err(ModelError::Invalid(format!(
            "preset `{}` is {what} for square images [C, H, W], but the data samples have \
             shape {shape:?}",
            spec.preset
        ))),
    }
}

impl Backbone for SitConfig {
    fn fit(&mut self, spec: &ModelSpec, shape: &[usize], num_classes: usize) -> Result<()> {
        let (c, h) = square_image(spec, shape, "a SiT")?;
        self.input_size = spec.image_size.unwrap_or(h);
        self.in_channels = spec.in_channels.unwrap_or(c);
        // SiT always embeds a label; unlabelled data use one class (plus the null row).
        self.num_classes = spec.num_classes.unwrap_or(num_classes.max(1));
        self.learn_sigma = spec.learn_sigma.unwrap_or(true);
        self.class_dropout_prob = spec.class_dropout_prob.unwrap_or(0.1);
        self.validate()
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.in_channels, self.input_size, self.input_size]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn null_class(&self) -> Option<u32> {
        (self.class_dropout_prob > 0.0).then_some(self.num_classes as u32)
    }
    fn class_dropout_prob(&self) -> f64 {
        self.class_dropout_prob
    }
    fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }
    fn forward_flops(&self) -> Option<f64> {
        let (c, n) = (self.hidden_size as f64, self.num_patches() as f64);
        let p2 = (self.patch_size * self.patch_size) as f64;
        let mlp = 2.0 * c * self.mlp_hidden() as f64;
        let embed = 2.0 * n * p2 * self.in_channels as f64 * c;
        let out = p2 * self.out_channels() as f64;
        Some(embed + trunk_flops(self.depth, c, mlp, |_| n) + head_flops(c, n, out))
    }
}

impl Backbone for JitConfig {
    fn fit(&mut self, spec: &ModelSpec, shape: &[usize], num_classes: usize) -> Result<()> {
        let (c, h) = square_image(spec, shape, "a JiT")?;
        if spec.learn_sigma == Some(true) {
            return Err(ModelError::Invalid(format!(
                "preset `{}`: JiT predicts the clean image and has no learn_sigma channels",
                spec.preset
            )));
        }
        self.input_size = spec.image_size.unwrap_or(h);
        self.in_channels = spec.in_channels.unwrap_or(c);
        self.num_classes = spec.num_classes.unwrap_or(num_classes.max(1));
        self.class_dropout_prob = spec.class_dropout_prob.unwrap_or(0.1);
        self.validate()
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.in_channels, self.input_size, self.input_size]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn null_class(&self) -> Option<u32> {
        (self.class_dropout_prob > 0.0).then_some(JitConfig::null_class(self))
    }
    fn class_dropout_prob(&self) -> f64 {
        self.class_dropout_prob
    }
    fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }
    /// The reference's `(x1 − x_t) / max(1 − t, 0.05)`, equal to `x1 − x0` except for
    /// t > 0.95.
    fn training_target(
        &self,
        _x0: &Tensor,
        x1: &Tensor,
        xt: &Tensor,
        t: &Tensor,
    ) -> CResult<Tensor> {
        jit::x_to_velocity(x1, xt, t, jit::JIT_T_CLAMP)
    }
    fn default_time_sampling(&self) -> Option<(f64, f64)> {
        Some((-0.8, 0.8))
    }
    fn forward_flops(&self) -> Option<f64> {
        let (c, n) = (self.hidden_size as f64, self.num_patches() as f64);
        let p2 = (self.patch_size * self.patch_size) as f64;
        let bn = self.bottleneck_dim as f64;
        // SwiGLU: c → 2m, then m → c.
        let mlp = 3.0 * c * self.mlp_hidden() as f64;
        let embed = 2.0 * n * (p2 * self.in_channels as f64 * bn + bn * c);
        let extra = self.in_context_len as f64;
        let start = self.in_context_start;
        let tokens = |i: usize| {
            if i >= start && extra > 0.0 {
                n + extra
            } else {
                n
            }
        };
        let out = p2 * self.out_channels() as f64;
        Some(embed + trunk_flops(self.depth, c, mlp, tokens) + head_flops(c, n, out))
    }
}

impl Backbone for UnetConfig {
    fn fit(&mut self, spec: &ModelSpec, shape: &[usize], num_classes: usize) -> Result<()> {
        let (c, h) = square_image(spec, shape, "a UNet")?;
        self.image_size = spec.image_size.unwrap_or(h);
        self.in_channels = spec.in_channels.unwrap_or(c);
        // `num_classes = 0` makes it unconditional (the reference CIFAR-10 model).
        self.num_classes = spec.num_classes.unwrap_or(num_classes);
        self.learn_sigma = spec.learn_sigma.unwrap_or(false);
        self.class_dropout_prob = if self.num_classes == 0 {
            0.0
        } else {
            spec.class_dropout_prob.unwrap_or(0.1)
        };
        self.validate()
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.in_channels, self.image_size, self.image_size]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn null_class(&self) -> Option<u32> {
        UnetConfig::null_class(self)
    }
    fn class_dropout_prob(&self) -> f64 {
        self.class_dropout_prob
    }
    fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }
}

impl Backbone for MlpConfig {
    fn fit(&mut self, spec: &ModelSpec, shape: &[usize], _num_classes: usize) -> Result<()> {
        let &[dim] = shape else {
            return Err(ModelError::Invalid(format!(
                "preset `{}` is an MLP for points [D], but the data samples have shape {shape:?}",
                spec.preset
            )));
        };
        self.dim = dim;
        self.validate()
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.dim]
    }
    fn num_classes(&self) -> usize {
        0
    }
    fn null_class(&self) -> Option<u32> {
        None
    }
    fn class_dropout_prob(&self) -> f64 {
        0.0
    }
    fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }
}
