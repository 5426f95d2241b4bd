//! The hand-written ops of `cbs`, below the models as candle keeps `candle-nn::ops` below
//! `candle-transformers`: each op one graph node (a candle `CustomOp`) with its CPU kernel and
//! hand-written backward in one file under [`ops`], its CUDA kernels (the `cuda` feature; f32 and
//! bf16, see [`Op::has_cuda`]) beside it.
//!
//! - element-wise and row-wise: GELU (tanh), SiLU, softmax, LayerNorm, the MSE loss;
//! - transformer blocks: LayerNorm + adaLN modulation, gated residual, linear layers and bias
//!   additions, multi-head attention, whole adaLN block halves (SiT), RMSNorm + modulation,
//!   qk-norm + 2-D RoPE and SwiGLU (JiT);
//! - convolutional: GroupNorm (+ SiLU), 2-D convolution (training, with backward; inference,
//!   with fused bias and ReLU), 3×3 pooling (Inception);
//! - in-place parameter passes: AdamW, EMA, squared gradient norm.
//!
//! Below them: one gemm wrapper ([`gemm`]), one threading model ([`par`], candle's own CPU
//! worker pool), one set of slice and dtype helpers. Which path a caller takes is a typed
//! [`Kernels`] policy chosen per run, passed explicitly: never an environment variable.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

#[cfg(feature = "cuda")]
mod cuda;
pub mod gemm;
pub mod ops;
pub mod par;
pub mod precision;
mod simd;
mod slices;

pub use gemm::product;
pub use ops::attention::attention;
pub use ops::block::{attention_half, mlp_half};
pub use ops::conv2d::conv2d;
pub use ops::conv_infer::{conv2d_infer, ConvInfer};
pub use ops::gated_residual::gated_residual;
pub use ops::gelu::gelu_tanh;
pub use ops::group_norm::group_norm;
pub use ops::layer_norm::layer_norm_no_affine;
pub use ops::linear::{bias_add, linear};
pub use ops::modulate::layer_norm_modulate;
pub use ops::mse::mse;
pub use ops::pool::{avg_pool_3x3_same_exclude_pad, max_pool_3x3};
pub use ops::qk_norm_rope::qk_norm_rope;
pub use ops::rms_norm::rms_norm_modulate;
pub use ops::silu::silu;
pub use ops::softmax::softmax_last;
pub use ops::swiglu::swiglu;
pub use precision::Precision;
pub use simd::exp_f32;

/// Which implementation of the ops a run uses. Recorded in the run's resolved config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Kernels {
    /// The hand-written kernels of this crate wherever they apply (CPU, f32/f64; CUDA, f32/bf16,
    /// for the ops with CUDA kernels), composed candle ops elsewhere.
    #[default]
    Fused,
    /// Composed candle ops everywhere: the reference the fused kernels are tested against,
    /// and the baseline of side-by-side timings.
    Composed,
}

impl Kernels {
    /// Whether an op with CPU kernels only over `xs` takes them: the policy allows it and
    /// [`applies`]. The same as [`Kernels::fuses_op`] for an [`Op`] without CUDA kernels.
    pub fn fuses(self, xs: &[&Tensor]) -> bool {
        self == Kernels::Fused && applies(xs)
    }

    /// Whether `op` over `xs` takes its hand-written kernel: the policy allows it and
    /// [`applies_op`] (the CPU kernels, or the op's CUDA kernels when it has them).
    pub fn fuses_op(self, op: Op, xs: &[&Tensor]) -> bool {
        self == Kernels::Fused && applies_op(op, xs)
    }

    /// Whether [`attention`] over `qkv` (`[B, N, 3C]`, `heads` heads) takes the hand-written
    /// kernels: [`Kernels::fuses_op`] for [`Op::Attention`] and, on CUDA, a shape the kernels
    /// take ([`ops::attention::cuda_supports`]: head width at most 128). On the CPU the same as
    /// [`Kernels::fuses`]. Otherwise the caller runs its composed attention.
    pub fn fuses_attention(self, qkv: &Tensor, heads: usize) -> bool {
        self.fuses_op(Op::Attention, &[qkv])
            && (qkv.device().is_cpu() || ops::attention::cuda_supports(qkv.dims(), heads).is_ok())
    }

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Fused => "fused",
            Kernels::Composed => "composed",
        }
    }
}

/// Whether the CPU kernels handle these tensors: all on the CPU, f32 or f64 (one dtype for
/// all), none empty (zero-length chunks cannot be split; the composed ops handle them).
pub fn applies(xs: &[&Tensor]) -> bool {
    let Some(first) = xs.first() else {
        return false;
    };
    let dtype = first.dtype();
    matches!(dtype, DType::F32 | DType::F64)
        && xs
            .iter()
            .all(|x| x.device().is_cpu() && x.dtype() == dtype && x.elem_count() > 0)
}

/// The ops of this crate, for the per-op dispatch ([`Kernels::fuses_op`]): all have CPU kernels
/// (f32/f64); [`Op::has_cuda`] says which also have CUDA kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    GeluTanh,
    Silu,
    SoftmaxLast,
    LayerNorm,
    LayerNormModulate,
    GatedResidual,
    RmsNormModulate,
    QkNormRope,
    SwiGlu,
    GroupNorm,
    Mse,
    Linear,
    BiasAdd,
    Attention,
    /// [`attention_half`] and [`mlp_half`].
    BlockHalf,
    Conv2d,
    ConvInfer,
    Pool,
}

impl Op {
    /// Whether the op has CUDA kernels (forward and backward, f32 and bf16) in builds with the
    /// `cuda` feature. The others take the composed ops on CUDA.
    pub const fn has_cuda(self) -> bool {
        match self {
            Op::GeluTanh
            | Op::Silu
            | Op::SoftmaxLast
            | Op::LayerNorm
            | Op::LayerNormModulate
            | Op::GatedResidual
            | Op::RmsNormModulate
            | Op::QkNormRope
            | Op::SwiGlu
            | Op::GroupNorm
            | Op::Mse
            | Op::Attention => true,
            Op::Linear | Op::BiasAdd | Op::BlockHalf | Op::Conv2d | Op::ConvInfer | Op::Pool => {
                false
            }
        }
    }
}

/// Whether `op`'s kernels handle these tensors: the CPU ones ([`applies`]), or, in builds with
/// the `cuda` feature and for an op that [`Op::has_cuda`], the CUDA ones: all on one CUDA
/// device, f32 or bf16 (one dtype for all), none empty.
pub fn applies_op(op: Op, xs: &[&Tensor]) -> bool {
    applies(xs) || (op.has_cuda() && applies_cuda(xs))
}

#[cfg(feature = "cuda")]
fn applies_cuda(xs: &[&Tensor]) -> bool {
    let Some(first) = xs.first() else {
        return false;
    };
    let (dtype, device) = (first.dtype(), first.device());
    matches!(dtype, DType::F32 | DType::BF16)
        && device.is_cuda()
        && xs
            .iter()
            .all(|x| x.device().same_device(device) && x.dtype() == dtype && x.elem_count() > 0)
}

#[cfg(not(feature = "cuda"))]
fn applies_cuda(_: &[&Tensor]) -> bool {
    false
}
