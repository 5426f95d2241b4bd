//! The ops: each one graph node (a candle `CustomOp`) with its CPU kernel and hand-written
//! backward in one file. With the `cuda` feature, an op's CUDA kernels sit in the same `impl`s
//! (`cuda_fwd`), their source beside the file (`<op>.cu`, f32 and bf16, f32 arithmetic), as
//! candle-nn keeps its ops; [`crate::Op`] says which ops have them.
//!
//! Each forward is one pass over contiguous memory; each backward is one more pass that
//! recomputes what it needs instead of keeping intermediates alive. Gradients of gradients are
//! not provided. The entry points here accept CPU f32/f64 tensors and, for the ops with CUDA
//! kernels, CUDA f32/bf16 ones ([`crate::applies_op`] says which); the composed (autograd)
//! versions that other devices and dtypes take live with their callers
//! (`cbs_models::nn::composed`), which choose between the two by [`crate::Kernels`].

pub(crate) use crate::gemm;
pub(crate) use crate::simd::*;
pub(crate) use crate::slices::*;

/// One fused operation: a forward `CustomOp1` whose backward is a `CustomOp2` over
/// (`saved`, upstream gradient), where `saved` is the forward's input (`"arg"`) or output
/// (`"res"`).
/// `$ffn(x, layout, p)` and `$bfn(saved, grad, layout, p)` are the kernels; `p` is the op's
/// scalar parameter (LayerNorm's epsilon; unused by the others). With `cuda: "<op>", $launch`
/// the op also runs on CUDA: `src/ops/<op>.cu`'s `<op>_fwd_<T>` / `<op>_bwd_<T>`, launched as
/// [`crate::cuda::Launch`]`::$launch`.
macro_rules! fused_op {
    ($fwd:ident, $bwd:ident, $name:literal, $ffn:ident, $bfn:ident, $saved:literal
     $(, cuda: $module:literal, $launch:ident)?) => {
        struct $fwd(f64);
        struct $bwd(f64);

        impl CustomOp1 for $fwd {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
                let out = with_slices1!($name, (s, l), |x| $ffn(x, l, self.0));
                Ok((out, l.shape().clone()))
            }
            $(
                #[cfg(feature = "cuda")]
                fn cuda_fwd(
                    &self,
                    s: &candle_core::CudaStorage,
                    l: &Layout,
                ) -> Result<(candle_core::CudaStorage, Shape)> {
                    let m = crate::cuda::ptx_module!($module);
                    let launch = crate::cuda::Launch::$launch;
                    crate::cuda::unary_fwd(&m, launch, $name, s, l, self.0)
                }
            )?
            fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
                let saved = if $saved == "res" { res } else { arg };
                Ok(Some(
                    saved.apply_op2_no_bwd(&grad.contiguous()?, &$bwd(self.0))?,
                ))
            }
        }

        impl CustomOp2 for $bwd {
            fn name(&self) -> &'static str {
                concat!($name, "-bwd")
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let name = self.name();
                if l1.shape() != l2.shape() {
                    candle_core::bail!(
                        "{name}: shape mismatch {:?} vs {:?}",
                        l1.shape(),
                        l2.shape()
                    );
                }
                let out = with_slices2!(name, (s1, l1), (s2, l2), |a, g| $bfn(a, g, l1, self.0));
                Ok((out, l1.shape().clone()))
            }
            $(
                #[cfg(feature = "cuda")]
                fn cuda_fwd(
                    &self,
                    s1: &candle_core::CudaStorage,
                    l1: &Layout,
                    s2: &candle_core::CudaStorage,
                    l2: &Layout,
                ) -> Result<(candle_core::CudaStorage, Shape)> {
                    let m = crate::cuda::ptx_module!($module);
                    let launch = crate::cuda::Launch::$launch;
                    crate::cuda::unary_bwd(&m, launch, self.name(), s1, l1, s2, l2, self.0)
                }
            )?
        }
    };
}

pub mod attention;
mod attention_cuda;
pub mod block;
pub mod conv2d;
pub mod conv_infer;
pub mod gated_residual;
pub mod gelu;
pub mod group_norm;
pub mod layer_norm;
pub mod linear;
pub mod modulate;
pub mod mse;
pub mod optim;
mod optim_cuda;
pub mod pool;
pub mod qk_norm_rope;
pub mod rms_norm;
pub mod silu;
pub mod softmax;
pub mod swiglu;
