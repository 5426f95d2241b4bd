//! The CPU pooling kernels (`cbs_kernels::ops::pool`) against candle's pooling ops (the path every other
//! device and dtype takes): f32 kernel vs the f64 candle path on the same values.

use candle_core::{DType, Device, Tensor};
use cbs_kernels::ops::pool;
use cbs_kernels::Kernels::Fused;

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32) / ((1u64 << 22) as f32) - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn pooling_kernels_match_candle_ops() {
    // Odd and even sides, the Inception map sizes (147 → 73, 71 → 35, 35 → 17, 17 → 8), more
    // planes than one rayon task holds.
    for &(b, c, h, w) in &[
        (1, 3, 3, 3),
        (2, 5, 7, 6),
        (1, 2, 147, 147),
        (3, 20, 17, 17),
        (2, 9, 35, 35),
        (1, 4, 71, 70),
        (1, 17, 8, 8),
        (1, 3, 2, 9),
    ] {
        let x = tensor(&[b, c, h, w], (h * 131 + w) as u64);
        let x64 = x.to_dtype(DType::F64).unwrap();
        for (stride, pad) in [(2, 0), (1, 1), (1, 0), (2, 1)] {
            if h + 2 * pad < 3 || w + 2 * pad < 3 {
                continue;
            }
            let got = pool::max_pool_3x3(&x, stride, pad, Fused).unwrap();
            let want = pool::max_pool_3x3(&x64, stride, pad, Fused).unwrap();
            assert_eq!(
                max_abs_diff(&got, &want),
                0.0,
                "max pool {b}x{c}x{h}x{w} stride {stride} pad {pad}"
            );
        }
        if h >= 2 && w >= 2 {
            let got = pool::avg_pool_3x3_same_exclude_pad(&x, Fused).unwrap();
            let want = pool::avg_pool_3x3_same_exclude_pad(&x64, Fused).unwrap();
            assert!(
                max_abs_diff(&got, &want) <= 1e-6,
                "avg pool {b}x{c}x{h}x{w}: {}",
                max_abs_diff(&got, &want)
            );
        }
    }
    assert!(pool::max_pool_3x3(&tensor(&[1, 1, 4, 4], 1), 1, 2, Fused).is_err());
}
