//! The per-op dispatch: on the CPU every op fuses exactly where [`applies`] says (f32/f64, one
//! dtype, none empty), whatever its CUDA kernels.

use candle_core::{DType, Device, Tensor};
use cbs_kernels::{applies, applies_op, Kernels, Op};

const OPS: [Op; 18] = [
    Op::GeluTanh,
    Op::Silu,
    Op::SoftmaxLast,
    Op::LayerNorm,
    Op::LayerNormModulate,
    Op::GatedResidual,
    Op::RmsNormModulate,
    Op::QkNormRope,
    Op::SwiGlu,
    Op::GroupNorm,
    Op::Mse,
    Op::Linear,
    Op::BiasAdd,
    Op::Attention,
    Op::BlockHalf,
    Op::Conv2d,
    Op::ConvInfer,
    Op::Pool,
];

#[test]
fn cpu_dispatch_is_the_same_for_every_op() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let t = |dt: DType, n: usize| Tensor::zeros((2, n), dt, &dev);
    let (f32a, f32b) = (t(DType::F32, 3)?, t(DType::F32, 5)?);
    let (f64a, bf16a, f16a) = (t(DType::F64, 3)?, t(DType::BF16, 3)?, t(DType::F16, 3)?);
    let empty = t(DType::F32, 0)?;
    let cases: [(&[&Tensor], bool); 8] = [
        (&[&f32a], true),
        (&[&f32a, &f32b], true),
        (&[&f64a], true),
        (&[&bf16a], false),
        (&[&f16a], false),
        (&[&f32a, &f64a], false),
        (&[&f32a, &empty], false),
        (&[], false),
    ];
    for op in OPS {
        for (xs, expected) in cases {
            assert_eq!(applies(xs), expected);
            assert_eq!(applies_op(op, xs), expected, "{op:?}");
            assert_eq!(Kernels::Fused.fuses_op(op, xs), expected, "{op:?}");
            assert_eq!(Kernels::Fused.fuses(xs), expected);
            assert!(!Kernels::Composed.fuses_op(op, xs));
        }
    }
    Ok(())
}

#[test]
fn cuda_kernels_are_those_of_the_row_wise_loss_and_attention_ops() {
    let with: Vec<Op> = OPS.into_iter().filter(|op| op.has_cuda()).collect();
    assert_eq!(with.len(), 12);
    assert!(Op::Attention.has_cuda());
    for op in [Op::Linear, Op::BiasAdd, Op::BlockHalf, Op::Conv2d] {
        assert!(!op.has_cuda(), "{op:?}");
    }
}

/// On the CPU the attention dispatch is the plain one, whatever the head width; the CUDA
/// kernels' shape limits (head width ≤ 128) are what sends CUDA tensors to the composed path.
#[test]
fn attention_dispatch_and_cuda_shape_limits() -> candle_core::Result<()> {
    use cbs_kernels::ops::attention::{cuda_supports, CUDA_MAX_HEAD_DIM};
    let dev = Device::Cpu;
    for (c, heads) in [(64, 4), (3 * 160, 3), (256, 1)] {
        for dt in [DType::F32, DType::F64, DType::BF16] {
            let qkv = Tensor::zeros((2, 5, 3 * c), dt, &dev)?;
            for k in [Kernels::Fused, Kernels::Composed] {
                assert_eq!(k.fuses_attention(&qkv, heads), k.fuses(&[&qkv]));
            }
        }
    }
    for d in [1, 16, 32, 64, 72, 128] {
        assert_eq!(cuda_supports(&[2, 50, 3 * 4 * d], 4), Ok(()), "d = {d}");
    }
    let too_wide = cuda_supports(&[2, 50, 3 * 2 * 160], 2).unwrap_err();
    assert!(too_wide.contains("head width 160"), "{too_wide}");
    assert_eq!(CUDA_MAX_HEAD_DIM, 128);
    assert!(cuda_supports(&[2, 50, 3 * 129], 1).is_err());
    assert!(cuda_supports(&[2, 50, 100], 4).is_err()); // not 3 × 4 heads
    assert!(cuda_supports(&[2, 0, 192], 4).is_err()); // empty
    assert!(cuda_supports(&[2, 50, 192], 0).is_err());
    assert!(cuda_supports(&[50, 192], 4).is_err()); // not [B, N, 3C]
    assert!(cuda_supports(&[70000, 4, 192], 4).is_err()); // grid limit
    Ok(())
}
