//! The inference convolution (`cbs_kernels::conv2d_infer`, the FID Inception's) against candle's `conv2d` (plus
//! `pad_with_zeros` for asymmetric padding, `broadcast_add` and `relu`), for every kernel, stride
//! and padding the FID Inception uses, on odd sizes and several batch sizes.

use candle_core::{DType, Device, Tensor};
use cbs_kernels::ops::conv_infer;
use cbs_kernels::{ConvInfer, Kernels};

fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    relu: bool,
    stride: usize,
    pad: (usize, usize),
    k: Kernels,
) -> candle_core::Result<Tensor> {
    let c = ConvInfer { stride, pad, relu };
    match k {
        Kernels::Fused => cbs_kernels::conv2d_infer(x, w, b, c, k),
        Kernels::Composed => conv_infer::composed(x, w, b, c),
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32) / ((1u64 << 23) as f32) - 1.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
}

/// Max |a − b| relative to the largest |b| (the output scale).
fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// (kernel, stride, padding).
type ConvCase = ((usize, usize), usize, (usize, usize));

/// Every (kernel, stride, padding) of the FID Inception's convolutions.
const INCEPTION_CONVS: &[ConvCase] = &[
    ((1, 1), 1, (0, 0)),
    ((3, 3), 1, (0, 0)),
    ((3, 3), 1, (1, 1)),
    ((3, 3), 2, (0, 0)),
    ((5, 5), 1, (2, 2)),
    ((1, 7), 1, (0, 3)),
    ((7, 1), 1, (3, 0)),
    ((1, 3), 1, (0, 1)),
    ((3, 1), 1, (1, 0)),
];

#[test]
fn conv_matches_candle_for_every_inception_shape() {
    let mut seed = 1;
    for &(kernel, stride, pad) in INCEPTION_CONVS {
        for &batch in &[1usize, 3] {
            for &(c_in, c_out, h, w) in &[(5, 7, 9, 11), (3, 16, 13, 8), (17, 33, 7, 7)] {
                seed += 1;
                let x = tensor(&[batch, c_in, h, w], seed);
                let wt = tensor(&[c_out, c_in, kernel.0, kernel.1], seed + 100);
                let bias = tensor(&[c_out], seed + 200);
                for (b, relu) in [(None, false), (Some(&bias), false), (Some(&bias), true)] {
                    let got = conv(&x, &wt, b, relu, stride, pad, Kernels::Fused).unwrap();
                    let want = conv(&x, &wt, b, relu, stride, pad, Kernels::Composed).unwrap();
                    let rel = max_rel_diff(&got, &want);
                    assert!(
                        rel <= 1e-4,
                        "kernel {kernel:?} stride {stride} pad {pad:?} batch {batch} \
                         {c_in}->{c_out} {h}x{w} bias {} relu {relu}: max rel diff {rel:e}",
                        b.is_some()
                    );
                }
            }
        }
    }
}

#[test]
fn conv_matches_candle_on_inception_sized_maps() {
    // Sizes where the kernel splits the output into several row bands and (batch 1 on 8×8)
    // falls back to gemm's own threads; a strided (non-contiguous) input is accepted too.
    for &(batch, c_in, c_out, hw, kernel, stride, pad) in &[
        (1, 3, 32, 299, (3, 3), 2, (0, 0)),
        (2, 32, 64, 147, (3, 3), 1, (1, 1)),
        (1, 288, 64, 35, (1, 1), 1, (0, 0)),
        (3, 128, 96, 17, (1, 7), 1, (0, 3)),
        (1, 384, 48, 8, (3, 1), 1, (1, 0)),
        (1, 96, 40, 35, (3, 3), 2, (0, 0)),
    ] {
        let x = tensor(&[batch, c_in, hw, hw], (c_in * hw) as u64);
        let wt = tensor(&[c_out, c_in, kernel.0, kernel.1], c_out as u64);
        let bias = tensor(&[c_out], 5);
        let got = conv(&x, &wt, Some(&bias), true, stride, pad, Kernels::Fused).unwrap();
        let want = conv(&x, &wt, Some(&bias), true, stride, pad, Kernels::Composed).unwrap();
        let rel = max_rel_diff(&got, &want);
        assert!(
            rel <= 1e-4,
            "{batch}x{c_in}x{hw}x{hw} -> {c_out}, kernel {kernel:?} stride {stride} pad {pad:?}: \
             max rel diff {rel:e}"
        );
    }
    let x = tensor(&[2, 9, 6, 5], 77).transpose(2, 3).unwrap();
    let wt = tensor(&[4, 9, 3, 3], 78);
    let got = conv(&x, &wt, None, false, 1, (1, 1), Kernels::Fused).unwrap();
    let want = conv(&x, &wt, None, false, 1, (1, 1), Kernels::Composed).unwrap();
    assert!(max_rel_diff(&got, &want) <= 1e-4);
}

#[test]
fn conv_rejects_mismatched_shapes_and_handles_other_dtypes() {
    let x = tensor(&[1, 4, 5, 5], 1);
    let wt = tensor(&[2, 3, 3, 3], 2);
    assert!(conv(&x, &wt, None, false, 1, (0, 0), Kernels::Fused).is_err());
    let wt = tensor(&[2, 4, 7, 7], 2);
    assert!(conv(&x, &wt, None, false, 1, (0, 0), Kernels::Fused).is_err());
    let wt = tensor(&[2, 4, 3, 3], 2);
    assert!(conv(
        &x,
        &wt,
        Some(&tensor(&[3], 3)),
        false,
        1,
        (0, 0),
        Kernels::Fused
    )
    .is_err());
    // f64 goes through candle's path and agrees with the f32 kernel.
    let bias = tensor(&[2], 3);
    let f32_out = conv(&x, &wt, Some(&bias), true, 1, (1, 0), Kernels::Fused).unwrap();
    let f64_out = conv(
        &x.to_dtype(DType::F64).unwrap(),
        &wt.to_dtype(DType::F64).unwrap(),
        Some(&bias.to_dtype(DType::F64).unwrap()),
        true,
        1,
        (1, 0),
        Kernels::Fused,
    )
    .unwrap();
    assert_eq!(f64_out.dtype(), DType::F64);
    assert!(max_rel_diff(&f32_out, &f64_out.to_dtype(DType::F32).unwrap()) <= 1e-5);
}
