//! 3×3 pooling for the FID Inception network (NCHW): max pooling with stride 1 or 2 and padding
//! 0 or 1 (the padding never wins a max, as PyTorch's −∞ padding), and pytorch-fid's 3×3 /
//! stride 1 / padding 1 average pooling with `count_include_pad=False` (each output is the mean of
//! the in-image pixels of its window).
//!
//! f32 tensors on the CPU take a separable kernel here under [`Kernels::Fused`] (per plane:
//! reduce the window's rows, then its columns; the planes are spread over the worker threads of
//! [`crate::par`]); the composed policy, other devices and dtypes take
//! candle's `max_pool2d` / `avg_pool2d` with explicit padding, as before. The max is exact either
//! way; the average differs from a row-major window sum by float rounding only.

use candle_core::{bail, CpuStorage, DType, Device, Result, Storage, Tensor};

use crate::{par, Kernels};

/// Output planes per task (small maps are cheap per plane).
const PLANES_PER_TASK: usize = 16;

#[derive(Debug, Clone, Copy)]
enum Op {
    Max,
    /// Mean over the in-image part of the window.
    AvgExcludePad,
}

/// 3×3 max pooling with `stride` and symmetric zero-free `pad` (0 or 1; PyTorch pads with −∞).
pub fn max_pool_3x3(x: &Tensor, stride: usize, pad: usize, kernels: Kernels) -> Result<Tensor> {
    if pad > 1 || stride == 0 {
        bail!("max_pool_3x3: unsupported stride {stride} / padding {pad}");
    }
    match cpu_f32(x, kernels) {
        true => pool_cpu(x, stride, pad, Op::Max),
        // Padding by replicating the border is equivalent to −∞ padding for a 3×3 window with
        // pad 1: a replicated value is already inside every window that sees the pad.
        false if pad == 1 => x
            .pad_with_same(2, 1, 1)?
            .pad_with_same(3, 1, 1)?
            .max_pool2d_with_stride(3, stride),
        false => x.max_pool2d_with_stride(3, stride),
    }
}

/// 3×3 average pooling, stride 1, padding 1, `count_include_pad=False`.
pub fn avg_pool_3x3_same_exclude_pad(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if cpu_f32(x, kernels) {
        return pool_cpu(x, 1, 1, Op::AvgExcludePad);
    }
    // candle's `avg_pool2d` has no padding: pad with zeros, average over the full 9 positions
    // and rescale by `9 / count` (exactly 1, 1.5 or 2.25 for maps of side ≥ 2).
    let (_, _, h, w) = x.dims4()?;
    let mean9 = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride(3, 1)?;
    let mut factor = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            factor.push(9.0 / (window_count(i, h) * window_count(j, w)) as f32);
        }
    }
    let factor = Tensor::from_vec(factor, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    mean9.broadcast_mul(&factor)
}

/// Number of positions of a size-3, stride-1, pad-1 window centred on `i` that lie inside
/// `0..n`.
fn window_count(i: usize, n: usize) -> usize {
    let lo = i.saturating_sub(1);
    let hi = (i + 1).min(n - 1);
    hi - lo + 1
}

fn cpu_f32(x: &Tensor, kernels: Kernels) -> bool {
    kernels.fuses(&[x]) && x.dtype() == DType::F32
}

/// Window `[lo, hi)` of output index `o` along an axis of length `n`, clipped to the input.
fn window(o: usize, stride: usize, pad: usize, n: usize) -> (usize, usize) {
    let start = o * stride;
    (start.saturating_sub(pad), (start + 3 - pad).min(n))
}

fn pool_cpu(x: &Tensor, stride: usize, pad: usize, op: Op) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h + 2 * pad < 3 || w + 2 * pad < 3 {
        bail!("3×3 pooling (padding {pad}) of a {h}×{w} map");
    }
    let (oh, ow) = (
        (h + 2 * pad - 3) / stride + 1,
        (w + 2 * pad - 3) / stride + 1,
    );
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let input = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => &v[start..end],
        _ => bail!("3×3 pooling: expected a contiguous f32 CPU tensor"),
    };
    let mut out = vec![0f32; b * c * oh * ow];
    let cols: Vec<(usize, usize)> = (0..ow).map(|o| window(o, stride, pad, w)).collect();
    par::chunks_mut(&mut out, oh * ow * PLANES_PER_TASK, |i, out| {
        let planes = out.len() / (oh * ow);
        let input = &input[i * h * w * PLANES_PER_TASK..][..planes * h * w];
        let mut acc = vec![0f32; w];
        for (dst, src) in out.chunks_exact_mut(oh * ow).zip(input.chunks_exact(h * w)) {
            for (oy, dst) in dst.chunks_exact_mut(ow).enumerate() {
                let (y0, y1) = window(oy, stride, pad, h);
                acc.copy_from_slice(&src[y0 * w..(y0 + 1) * w]);
                for row in src[(y0 + 1) * w..y1 * w].chunks_exact(w) {
                    match op {
                        Op::Max => acc.iter_mut().zip(row).for_each(|(a, &v)| *a = a.max(v)),
                        Op::AvgExcludePad => acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v),
                    }
                }
                let rows = (y1 - y0) as f32;
                if stride == 1 && pad == 1 && w >= 2 {
                    // Edge columns see two pixels; the interior three shifted ones
                    // (vectorisable).
                    let (a, z) = ((acc[0], acc[1]), (acc[w - 2], acc[w - 1]));
                    let (d0, rest) = dst.split_first_mut().expect("w >= 2");
                    let (dz, mid) = rest.split_last_mut().expect("w >= 2");
                    let mid = mid.iter_mut().zip(acc.windows(3));
                    match op {
                        Op::Max => {
                            *d0 = a.0.max(a.1);
                            *dz = z.0.max(z.1);
                            mid.for_each(|(d, t)| *d = t[0].max(t[1]).max(t[2]));
                        }
                        Op::AvgExcludePad => {
                            let (edge, full) = (rows * 2.0, rows * 3.0);
                            *d0 = (a.0 + a.1) / edge;
                            *dz = (z.0 + z.1) / edge;
                            mid.for_each(|(d, t)| *d = (t[0] + t[1] + t[2]) / full);
                        }
                    }
                    continue;
                }
                for (d, &(x0, x1)) in dst.iter_mut().zip(&cols) {
                    let win = &acc[x0..x1];
                    *d = match op {
                        Op::Max => win.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
                        Op::AvgExcludePad => win.iter().sum::<f32>() / (rows * (x1 - x0) as f32),
                    };
                }
            }
        }
    });
    drop(storage);
    Tensor::from_vec(out, (b, c, oh, ow), &Device::Cpu)
}
