//! The numeric precision a run computes in, beside the [`crate::Kernels`] policy: which dtype
//! the network's products and attention run in, and whether f32 products may use TensorFloat-32.
//!
//! Mixed precision keeps everything that accumulates over steps in f32 — the master weights,
//! AdamW's moments, the EMA — and casts the weights to the compute dtype inside each forward
//! pass (the cast is a graph node, so gradients reach the f32 weights in f32). Norm statistics,
//! softmax and the loss reduce in f32; samplers integrate their state in f32.

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// How a run's network computes. Recorded in the run's resolved config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// f32 everywhere, exact f32 matrix products.
    #[default]
    F32,
    /// f32 storage; on CUDA, f32 matrix products use TensorFloat-32 tensor cores (10-bit
    /// mantissa inputs, f32 accumulation). The same as `f32` on the CPU.
    Tf32,
    /// bfloat16 products and attention, f32 weights, optimizer state, EMA, norm statistics
    /// and loss. The usual choice on Ampere and newer GPUs.
    Bf16,
    /// float16 compute, otherwise as `bf16`. For GPUs without bfloat16, and the CPU's stand-in
    /// for it (candle's CPU backend has no bf16 convolution). No loss scaling: gradients
    /// below f16's range (≈6e-8) vanish.
    F16,
}

impl Precision {
    /// The dtype the network's activations and (cast) weights have in the forward pass.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Tf32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// Whether f32 matrix products may round their inputs to TensorFloat-32 (CUDA only).
    pub fn reduced_f32_products(self) -> bool {
        self == Precision::Tf32
    }

    /// Sets candle's process-wide CUDA product mode for this precision (TF32 on or off). A
    /// no-op in builds without CUDA. Call once at the start of a stage, before any product.
    pub fn configure_products(self) {
        candle_core::cuda::set_gemm_reduced_precision_f32(self.reduced_f32_products());
    }

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
