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
fn cuda_kernels_are_those_of_the_row_wise_and_loss_ops() {
    let with: Vec<Op> = OPS.into_iter().filter(|op| op.has_cuda()).collect();
    assert_eq!(with.len(), 11);
    for op in [
        Op::Linear,
        Op::BiasAdd,
        Op::Attention,
        Op::BlockHalf,
        Op::Conv2d,
    ] {
        assert!(!op.has_cuda(), "{op:?}");
    }
}
