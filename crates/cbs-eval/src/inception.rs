//! The FID variant of Inception-v3, built the way pytorch-fid builds it (`fid_inception_v3()`),
//! with torchvision's parameter names so that pytorch-fid's weights file
//! [`WEIGHTS_FILE`] (`pt_inception-2015-12-05-6726825d.pth`, TensorFlow's 2015-12-05 Inception
//! ported to PyTorch) loads without remapping.
//!
//! Architecture (inference only):
//! * every convolution is a `BasicConv2d`: conv without bias → BatchNorm (eps 1e-3, running
//!   statistics) → ReLU. The BatchNorm affine map is folded into the convolution weights and a
//!   per-channel bias when the model is built (`w·γ/√(σ²+ε)`, `β − μ·γ/√(σ²+ε)`). Conv + bias +
//!   ReLU run as one [`cbs_kernels::conv2d_infer`] (a CPU im2col/gemm kernel; candle's ops elsewhere),
//!   the 3×3 poolings through [`cbs_kernels::ops::pool`].
//! * stem `Conv2d_1a_3x3` (stride 2) → `Conv2d_2a_3x3` → `Conv2d_2b_3x3` (pad 1) → max-pool 3/2 →
//!   `Conv2d_3b_1x1` → `Conv2d_4a_3x3` → max-pool 3/2, then `Mixed_5b/5c/5d` (InceptionA),
//!   `Mixed_6a` (InceptionB), `Mixed_6b/6c/6d/6e` (InceptionC), `Mixed_7a` (InceptionD),
//!   `Mixed_7b/7c` (InceptionE), global average pool → pool3 (2048), `fc` (1008 classes).
//! * FID differences from torchvision's Inception (pytorch-fid's `FIDInceptionA/C/E_1/E_2`): the
//!   pool branch of the A, C and first E blocks average-pools 3×3 / stride 1 / pad 1 with
//!   `count_include_pad=False` (the average is over the in-image pixels only), and the pool branch
//!   of the last E block (`Mixed_7c`) max-pools 3×3 / stride 1 / pad 1; 1008 logits; no aux head.
//!
//! Outputs of [`InceptionV3::forward`] (input `[B, 3, 299, 299]` in [-1, 1], see
//! [`crate::preprocess::to_inception_input`]):
//! * `pool`: pool3 features `[B, 2048]` (the global average pool after `Mixed_7c`), used by FID,
//!   precision/recall and KID.
//! * `logits_unbiased`: `pool · fc.weightᵀ` `[B, 1008]`, the fc layer **without its bias**, as
//!   torch-fidelity's Inception Score uses ("logits_unbiased").
//! * `spatial`: the sFID features `[B, 2023]` of the ADM evaluator (guided-diffusion
//!   `evaluator.py`, tensor `mixed_6/conv:0`, first 7 channels). The TensorFlow graph names its
//!   Inception blocks `mixed, mixed_1, …, mixed_10` (= `Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, 7a,
//!   7b, 7c`), so `mixed_6` is `Mixed_6d` and `mixed_6/conv` its `branch1x1` output (conv + BN +
//!   ReLU, 192 × 17 × 17), whose channels are the first 192 of the `Mixed_6d` output. We take its
//!   first 7 channels and flatten them in TensorFlow's NHWC order (`[17, 17, 7]` → 2023), so the
//!   vectors match ADM's element for element (the Fréchet distance itself does not depend on the
//!   order, but ADM's reference `mu_s`/`sigma_s` statistics do).
//!
//! Weights load from pytorch-fid's `.pth` (the zip format of PyTorch ≥ 1.6 or the legacy
//! pre-1.6 format, both read by `cbs_torch`'s bounded reader; no pickle code is ever executed)
//! or from a `.safetensors` copy with the same key names.

use cbs_kernels::{ConvInfer, Kernels};
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::{EvalError, Result};

/// File name of pytorch-fid's FID Inception weights.
pub const WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";
/// Where pytorch-fid downloads [`WEIGHTS_FILE`] from.
pub const WEIGHTS_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
/// Input side length.
pub const INPUT_SIZE: usize = 299;
/// Dimension of the pool3 features.
pub const POOL_DIM: usize = 2048;
/// Number of logits (`fc` rows).
pub const LOGITS_DIM: usize = 1008;
/// Channels of `Mixed_6d.branch1x1` kept for sFID.
pub const SPATIAL_CHANNELS: usize = 7;
/// Dimension of the sFID spatial features (7 channels × 17 × 17).
pub const SPATIAL_DIM: usize = SPATIAL_CHANNELS * 17 * 17;

const BN_EPS: f64 = 1e-3;

/// The convolutions and poolings take the CPU kernels wherever they apply (f32 on the CPU;
/// candle's ops elsewhere): an inference network has no training policy to follow, and the
/// two paths agree to float rounding (tests/eval/conv.rs, pool.rs).
const KERNELS: Kernels = Kernels::Fused;

/// `BasicConv2d` (conv without bias, BatchNorm, ReLU) with the BatchNorm folded in.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: (usize, usize),
}

impl ConvBn {
    fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Self> {
        let w = vb.get((c_out, c_in, kernel.0, kernel.1), "conv.weight")?;
        let bn = vb.pp("bn");
        let gamma = bn.get(c_out, "weight")?;
        let beta = bn.get(c_out, "bias")?;
        let mean = bn.get(c_out, "running_mean")?;
        let var = bn.get(c_out, "running_var")?;
        let scale = gamma.div(&(var + BN_EPS)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = beta.sub(&mean.mul(&scale)?)?;
        Ok(Self {
            weight,
            bias,
            stride,
            pad,
        })
    }

    fn square(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        Self::new(vb, c_in, c_out, (k, k), stride, (pad, pad))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = ConvInfer {
            stride: self.stride,
            pad: self.pad,
            relu: true,
        };
        Ok(cbs_kernels::conv2d_infer(
            x,
            &self.weight,
            Some(&self.bias),
            c,
            KERNELS,
        )?)
    }
}

/// 3×3 average pooling, stride 1, padding 1, with `count_include_pad=False`: each output is the
/// mean of the in-image pixels of its window (see [`cbs_kernels::ops::pool`]).
pub fn avg_pool_3x3_same_exclude_pad(x: &Tensor) -> Result<Tensor> {
    Ok(cbs_kernels::avg_pool_3x3_same_exclude_pad(x, KERNELS)?)
}

/// 3×3 max pooling, stride 1, padding 1 (PyTorch pads with −∞; see [`cbs_kernels::ops::pool`]).
pub fn max_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    Ok(cbs_kernels::max_pool_3x3(x, 1, 1, KERNELS)?)
}

fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    Ok(cbs_kernels::max_pool_3x3(x, 2, 0, KERNELS)?)
}

fn cat(xs: &[Tensor]) -> Result<Tensor> {
    Ok(Tensor::cat(xs, 1)?)
}

/// `FIDInceptionA` (`Mixed_5b/5c/5d`).
#[derive(Debug, Clone)]
struct InceptionA {
    branch1x1: ConvBn,
    branch5x5_1: ConvBn,
    branch5x5_2: ConvBn,
    branch3x3dbl_1: ConvBn,
    branch3x3dbl_2: ConvBn,
    branch3x3dbl_3: ConvBn,
    branch_pool: ConvBn,
}

impl InceptionA {
    fn new(vb: VarBuilder, c_in: usize, pool_features: usize) -> Result<Self> {
        Ok(Self {
            branch1x1: ConvBn::square(vb.pp("branch1x1"), c_in, 64, 1, 1, 0)?,
            branch5x5_1: ConvBn::square(vb.pp("branch5x5_1"), c_in, 48, 1, 1, 0)?,
            branch5x5_2: ConvBn::square(vb.pp("branch5x5_2"), 48, 64, 5, 1, 2)?,
            branch3x3dbl_1: ConvBn::square(vb.pp("branch3x3dbl_1"), c_in, 64, 1, 1, 0)?,
            branch3x3dbl_2: ConvBn::square(vb.pp("branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
            branch3x3dbl_3: ConvBn::square(vb.pp("branch3x3dbl_3"), 96, 96, 3, 1, 1)?,
            branch_pool: ConvBn::square(vb.pp("branch_pool"), c_in, pool_features, 1, 1, 0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?;
        let b5 = self.branch5x5_2.forward(&self.branch5x5_1.forward(x)?)?;
        let b3 = self.branch3x3dbl_1.forward(x)?;
        let b3 = self
            .branch3x3dbl_3
            .forward(&self.branch3x3dbl_2.forward(&b3)?)?;
        let bp = self
            .branch_pool
            .forward(&avg_pool_3x3_same_exclude_pad(x)?)?;
        cat(&[b1, b5, b3, bp])
    }
}

/// torchvision `InceptionB` (`Mixed_6a`).
#[derive(Debug, Clone)]
struct InceptionB {
    branch3x3: ConvBn,
    branch3x3dbl_1: ConvBn,
    branch3x3dbl_2: ConvBn,
    branch3x3dbl_3: ConvBn,
}

impl InceptionB {
    fn new(vb: VarBuilder, c_in: usize) -> Result<Self> {
        Ok(Self {
            branch3x3: ConvBn::square(vb.pp("branch3x3"), c_in, 384, 3, 2, 0)?,
            branch3x3dbl_1: ConvBn::square(vb.pp("branch3x3dbl_1"), c_in, 64, 1, 1, 0)?,
            branch3x3dbl_2: ConvBn::square(vb.pp("branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
            branch3x3dbl_3: ConvBn::square(vb.pp("branch3x3dbl_3"), 96, 96, 3, 2, 0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = self.branch3x3.forward(x)?;
        let bd = self.branch3x3dbl_1.forward(x)?;
        let bd = self
            .branch3x3dbl_3
            .forward(&self.branch3x3dbl_2.forward(&bd)?)?;
        let bp = max_pool_3x3_s2(x)?;
        cat(&[b3, bd, bp])
    }
}

/// `FIDInceptionC` (`Mixed_6b/6c/6d/6e`).
#[derive(Debug, Clone)]
struct InceptionC {
    branch1x1: ConvBn,
    branch7x7: [ConvBn; 3],
    branch7x7dbl: [ConvBn; 5],
    branch_pool: ConvBn,
}

impl InceptionC {
    fn new(vb: VarBuilder, c_in: usize, c7: usize) -> Result<Self> {
        let row =
            |name: &str, ci: usize, co: usize| ConvBn::new(vb.pp(name), ci, co, (1, 7), 1, (0, 3));
        let col =
            |name: &str, ci: usize, co: usize| ConvBn::new(vb.pp(name), ci, co, (7, 1), 1, (3, 0));
        Ok(Self {
            branch1x1: ConvBn::square(vb.pp("branch1x1"), c_in, 192, 1, 1, 0)?,
            branch7x7: [
                ConvBn::square(vb.pp("branch7x7_1"), c_in, c7, 1, 1, 0)?,
                row("branch7x7_2", c7, c7)?,
                col("branch7x7_3", c7, 192)?,
            ],
            branch7x7dbl: [
                ConvBn::square(vb.pp("branch7x7dbl_1"), c_in, c7, 1, 1, 0)?,
                col("branch7x7dbl_2", c7, c7)?,
                row("branch7x7dbl_3", c7, c7)?,
                col("branch7x7dbl_4", c7, c7)?,
                row("branch7x7dbl_5", c7, 192)?,
            ],
            branch_pool: ConvBn::square(vb.pp("branch_pool"), c_in, 192, 1, 1, 0)?,
        })
    }

    /// Returns the block output and its `branch1x1` part (the first 192 channels).
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let b1 = self.branch1x1.forward(x)?;
        let mut b7 = x.clone();
        for conv in &self.branch7x7 {
            b7 = conv.forward(&b7)?;
        }
        let mut bd = x.clone();
        for conv in &self.branch7x7dbl {
            bd = conv.forward(&bd)?;
        }
        let bp = self
            .branch_pool
            .forward(&avg_pool_3x3_same_exclude_pad(x)?)?;
        Ok((cat(&[b1.clone(), b7, bd, bp])?, b1))
    }
}

/// torchvision `InceptionD` (`Mixed_7a`).
#[derive(Debug, Clone)]
struct InceptionD {
    branch3x3_1: ConvBn,
    branch3x3_2: ConvBn,
    branch7x7x3: [ConvBn; 4],
}

impl InceptionD {
    fn new(vb: VarBuilder, c_in: usize) -> Result<Self> {
        Ok(Self {
            branch3x3_1: ConvBn::square(vb.pp("branch3x3_1"), c_in, 192, 1, 1, 0)?,
            branch3x3_2: ConvBn::square(vb.pp("branch3x3_2"), 192, 320, 3, 2, 0)?,
            branch7x7x3: [
                ConvBn::square(vb.pp("branch7x7x3_1"), c_in, 192, 1, 1, 0)?,
                ConvBn::new(vb.pp("branch7x7x3_2"), 192, 192, (1, 7), 1, (0, 3))?,
                ConvBn::new(vb.pp("branch7x7x3_3"), 192, 192, (7, 1), 1, (3, 0))?,
                ConvBn::square(vb.pp("branch7x7x3_4"), 192, 192, 3, 2, 0)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = self.branch3x3_2.forward(&self.branch3x3_1.forward(x)?)?;
        let mut b7 = x.clone();
        for conv in &self.branch7x7x3 {
            b7 = conv.forward(&b7)?;
        }
        let bp = max_pool_3x3_s2(x)?;
        cat(&[b3, b7, bp])
    }
}

/// Pooling of the pool branch of an E block.
#[derive(Debug, Clone, Copy)]
enum EPool {
    /// `FIDInceptionE_1` (`Mixed_7b`): average, `count_include_pad=False`.
    AvgExcludePad,
    /// `FIDInceptionE_2` (`Mixed_7c`): max.
    Max,
}

/// `FIDInceptionE_1` / `FIDInceptionE_2` (`Mixed_7b/7c`).
#[derive(Debug, Clone)]
struct InceptionE {
    branch1x1: ConvBn,
    branch3x3_1: ConvBn,
    branch3x3_2a: ConvBn,
    branch3x3_2b: ConvBn,
    branch3x3dbl_1: ConvBn,
    branch3x3dbl_2: ConvBn,
    branch3x3dbl_3a: ConvBn,
    branch3x3dbl_3b: ConvBn,
    branch_pool: ConvBn,
    pool: EPool,
}

impl InceptionE {
    fn new(vb: VarBuilder, c_in: usize, pool: EPool) -> Result<Self> {
        let row = |name: &str| ConvBn::new(vb.pp(name), 384, 384, (1, 3), 1, (0, 1));
        let col = |name: &str| ConvBn::new(vb.pp(name), 384, 384, (3, 1), 1, (1, 0));
        Ok(Self {
            branch1x1: ConvBn::square(vb.pp("branch1x1"), c_in, 320, 1, 1, 0)?,
            branch3x3_1: ConvBn::square(vb.pp("branch3x3_1"), c_in, 384, 1, 1, 0)?,
            branch3x3_2a: row("branch3x3_2a")?,
            branch3x3_2b: col("branch3x3_2b")?,
            branch3x3dbl_1: ConvBn::square(vb.pp("branch3x3dbl_1"), c_in, 448, 1, 1, 0)?,
            branch3x3dbl_2: ConvBn::square(vb.pp("branch3x3dbl_2"), 448, 384, 3, 1, 1)?,
            branch3x3dbl_3a: row("branch3x3dbl_3a")?,
            branch3x3dbl_3b: col("branch3x3dbl_3b")?,
            branch_pool: ConvBn::square(vb.pp("branch_pool"), c_in, 192, 1, 1, 0)?,
            pool,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?;
        let b3 = self.branch3x3_1.forward(x)?;
        let b3a = self.branch3x3_2a.forward(&b3)?;
        let b3b = self.branch3x3_2b.forward(&b3)?;
        let bd = self
            .branch3x3dbl_2
            .forward(&self.branch3x3dbl_1.forward(x)?)?;
        let bda = self.branch3x3dbl_3a.forward(&bd)?;
        let bdb = self.branch3x3dbl_3b.forward(&bd)?;
        let pooled = match self.pool {
            EPool::AvgExcludePad => avg_pool_3x3_same_exclude_pad(x)?,
            EPool::Max => max_pool_3x3_same(x)?,
        };
        let bp = self.branch_pool.forward(&pooled)?;
        cat(&[b1, b3a, b3b, bda, bdb, bp])
    }
}

/// pytorch-fid's FID Inception-v3 (inference only, f32).
#[derive(Debug, Clone)]
pub struct InceptionV3 {
    conv2d_1a_3x3: ConvBn,
    conv2d_2a_3x3: ConvBn,
    conv2d_2b_3x3: ConvBn,
    conv2d_3b_1x1: ConvBn,
    conv2d_4a_3x3: ConvBn,
    mixed_5b: InceptionA,
    mixed_5c: InceptionA,
    mixed_5d: InceptionA,
    mixed_6a: InceptionB,
    mixed_6b: InceptionC,
    mixed_6c: InceptionC,
    mixed_6d: InceptionC,
    mixed_6e: InceptionC,
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
    /// `fc.weight` transposed: `[2048, 1008]`.
    fc_weight_t: Tensor,
}

impl InceptionV3 {
    /// Loads the weights from `path`: pytorch-fid's [`WEIGHTS_FILE`] (zip or legacy `.pth`) or a
    /// `.safetensors` file with the same (torchvision) key names. Errors name the path and, for a
    /// missing tensor, the tensor.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = read_weights(path)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::from_varbuilder(vb).map_err(|e| EvalError::File {
            path: path.display().to_string(),
            message: format!(
                "not a complete FID Inception state_dict ({e}); expected pytorch-fid's \
                 {WEIGHTS_FILE} or a safetensors copy of it"
            ),
        })
    }

    /// Builds the network from a `VarBuilder` holding the torchvision-named tensors
    /// (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, …, `fc.weight`).
    /// `fc.bias` is not read (the logits are unbiased); `num_batches_tracked` is not read.
    pub fn from_varbuilder(vb: VarBuilder) -> Result<Self> {
        let sq = |name: &str, ci, co, k, s, p| ConvBn::square(vb.pp(name), ci, co, k, s, p);
        let fc_weight = vb.get((LOGITS_DIM, POOL_DIM), "fc.weight")?;
        Ok(Self {
            conv2d_1a_3x3: sq("Conv2d_1a_3x3", 3, 32, 3, 2, 0)?,
            conv2d_2a_3x3: sq("Conv2d_2a_3x3", 32, 32, 3, 1, 0)?,
            conv2d_2b_3x3: sq("Conv2d_2b_3x3", 32, 64, 3, 1, 1)?,
            conv2d_3b_1x1: sq("Conv2d_3b_1x1", 64, 80, 1, 1, 0)?,
            conv2d_4a_3x3: sq("Conv2d_4a_3x3", 80, 192, 3, 1, 0)?,
            mixed_5b: InceptionA::new(vb.pp("Mixed_5b"), 192, 32)?,
            mixed_5c: InceptionA::new(vb.pp("Mixed_5c"), 256, 64)?,
            mixed_5d: InceptionA::new(vb.pp("Mixed_5d"), 288, 64)?,
            mixed_6a: InceptionB::new(vb.pp("Mixed_6a"), 288)?,
            mixed_6b: InceptionC::new(vb.pp("Mixed_6b"), 768, 128)?,
            mixed_6c: InceptionC::new(vb.pp("Mixed_6c"), 768, 160)?,
            mixed_6d: InceptionC::new(vb.pp("Mixed_6d"), 768, 160)?,
            mixed_6e: InceptionC::new(vb.pp("Mixed_6e"), 768, 192)?,
            mixed_7a: InceptionD::new(vb.pp("Mixed_7a"), 768)?,
            mixed_7b: InceptionE::new(vb.pp("Mixed_7b"), 1280, EPool::AvgExcludePad)?,
            mixed_7c: InceptionE::new(vb.pp("Mixed_7c"), 2048, EPool::Max)?,
            fc_weight_t: fc_weight.t()?.contiguous()?,
        })
    }

    /// One forward pass on `[B, 3, 299, 299]` input in [-1, 1] (already resized and scaled, see
    /// [`crate::preprocess::to_inception_input`]). Returns `(pool, logits_unbiased, spatial)`:
    /// pool3 features `[B, 2048]`, `pool · fc.weightᵀ` `[B, 1008]` (no fc bias) and the ADM sFID
    /// features `[B, 2023]` (first 7 channels of `Mixed_6d.branch1x1`, flattened in NHWC order).
    pub fn forward(&self, x_nchw_299_in_minus1_1: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let x = x_nchw_299_in_minus1_1;
        match x.dims() {
            [_, 3, INPUT_SIZE, INPUT_SIZE] => {}
            d => {
                return Err(EvalError::Invalid(format!(
                    "Inception input must be [B, 3, 299, 299] in [-1, 1], got shape {d:?}"
                )))
            }
        }
        let b = x.dim(0)?;
        let x = x.to_dtype(DType::F32)?;
        let x = self.conv2d_1a_3x3.forward(&x)?;
        let x = self.conv2d_2a_3x3.forward(&x)?;
        let x = self.conv2d_2b_3x3.forward(&x)?;
        let x = max_pool_3x3_s2(&x)?;
        let x = self.conv2d_3b_1x1.forward(&x)?;
        let x = self.conv2d_4a_3x3.forward(&x)?;
        let x = max_pool_3x3_s2(&x)?;
        let x = self.mixed_5b.forward(&x)?;
        let x = self.mixed_5c.forward(&x)?;
        let x = self.mixed_5d.forward(&x)?;
        let x = self.mixed_6a.forward(&x)?;
        let (x, _) = self.mixed_6b.forward(&x)?;
        let (x, _) = self.mixed_6c.forward(&x)?;
        let (x, branch1x1_6d) = self.mixed_6d.forward(&x)?;
        let spatial = branch1x1_6d
            .narrow(1, 0, SPATIAL_CHANNELS)?
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((b, SPATIAL_DIM))?;
        let (x, _) = self.mixed_6e.forward(&x)?;
        let x = self.mixed_7a.forward(&x)?;
        let x = self.mixed_7b.forward(&x)?;
        let x = self.mixed_7c.forward(&x)?;
        let pool = x.mean((2, 3))?;
        let logits = pool.matmul(&self.fc_weight_t)?;
        Ok((pool, logits, spatial))
    }

    /// Preprocesses images in [0, 1] (`[B, 3, H, W]`, any size; see
    /// [`crate::preprocess::to_inception_input`]) and runs [`Self::forward`].
    pub fn forward_images01(&self, images01: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.forward(&crate::preprocess::to_inception_input(images01)?)
    }
}

impl crate::features::FeatureExtractor for InceptionV3 {
    /// `images`: `[B, 3, H, W]` in [0, 1], any size: pytorch-fid's resize to 299 and `2x − 1`
    /// are applied here. Returns pool3, the unbiased logits and the ADM sFID features.
    fn extract(&self, images: &Tensor) -> Result<crate::features::Features> {
        let (pool, logits, spatial) = self.forward_images01(images)?;
        Ok(crate::features::Features {
            pool,
            logits: Some(logits),
            spatial: Some(spatial),
        })
    }

    fn name(&self) -> String {
        "Inception-v3 pool3 (pytorch-fid FID Inception)".to_string()
    }
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> EvalError {
    EvalError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads every tensor of a weights file (zip `.pth`, legacy `.pth` or `.safetensors`, told apart
/// by their first bytes) onto the CPU. `.pth` files go through `cbs_torch`'s bounded reader,
/// which never executes the pickle.
pub fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let hint = format!(
        "expected the FID Inception weights ({WEIGHTS_FILE}, from {WEIGHTS_URL}) or a \
         .safetensors copy of them"
    );
    if !path.is_file() {
        return Err(file_error(path, format!("weights file not found; {hint}")));
    }
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| file_error(path, format!("cannot read: {e}; {hint}")))?;
    let tensors: HashMap<String, Tensor> = if head[..n] == *b"PK\x03\x04" || head[0] == 0x80 {
        // The message of a cbs_torch error already names the file.
        let torch_err = |source| EvalError::Weights {
            source,
            hint: hint.clone(),
        };
        let file = cbs_torch::TorchFile::open(path).map_err(torch_err)?;
        file.load_all(None)
            .map_err(torch_err)?
            .0
            .into_iter()
            .collect()
    } else {
        let bytes = std::fs::read(path)
            .map_err(|e| file_error(path, format!("cannot read: {e}; {hint}")))?;
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            file_error(
                path,
                format!("neither a .pth nor a .safetensors file ({e}); {hint}"),
            )
        })?
    };
    if tensors.is_empty() {
        return Err(file_error(
            path,
            format!("no tensors at the top level (a nested checkpoint? a flat state_dict is needed); {hint}"),
        ));
    }
    Ok(tensors)
}

/// Names and shapes of the tensors [`InceptionV3::from_varbuilder`] reads, in build order (the
/// torchvision state_dict without `fc.bias` and the BatchNorm `num_batches_tracked` counters).
pub fn parameter_shapes() -> Result<Vec<(String, Vec<usize>)>> {
    let rec = cbs_models::shapes::ShapeRecorder::new();
    InceptionV3::from_varbuilder(rec.var_builder(DType::F32, &Device::Cpu))?;
    Ok(rec.shapes())
}

/// SplitMix64, for reproducible test weights without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A complete, deterministic random FID-Inception state_dict (for tests and parity checks; not a
/// trained network): every key of pytorch-fid's model, `fc.bias` and the i64
/// `bn.num_batches_tracked` counters included. Conv weights are He-normal, BatchNorm statistics
/// and affine parameters mildly random, so activations stay of order one through the network.
pub fn random_weights(seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = SplitMix64(seed ^ 0x5eed_1ce9_0000_0000);
    let mut shapes = parameter_shapes()?;
    shapes.push(("fc.bias".to_string(), vec![LOGITS_DIM]));
    let mut out = HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("conv.weight") {
            let fan_in: usize = shape[1..].iter().product();
            let std = (2.0 / fan_in as f64).sqrt();
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        } else if name.ends_with("bn.weight") {
            (0..n).map(|_| (0.8 + 0.4 * rng.uniform()) as f32).collect()
        } else if name.ends_with("bn.running_var") {
            (0..n).map(|_| (0.6 + 0.8 * rng.uniform()) as f32).collect()
        } else if name.ends_with("bn.bias") || name.ends_with("bn.running_mean") {
            (0..n).map(|_| (0.1 * rng.normal()) as f32).collect()
        } else if name == "fc.weight" {
            let std = 1.0 / (POOL_DIM as f64).sqrt();
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        } else {
            (0..n).map(|_| (0.01 * rng.normal()) as f32).collect()
        };
        if let Some(prefix) = name.strip_suffix("bn.weight") {
            let counter = Tensor::new(0i64, &Device::Cpu)?;
            out.insert(format!("{prefix}bn.num_batches_tracked"), counter);
        }
        out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Ok(out)
}
