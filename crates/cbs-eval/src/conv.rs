//! Inference convolution for the FID Inception network: `relu?(conv2d(x, w) + bias)` on NCHW f32
//! tensors, with a CPU kernel that avoids the overheads of candle's generic CPU `conv2d`.
//!
//! candle 0.11's CPU `conv2d` converts the input to NHWC, builds im2col tiles of 512 output pixels
//! with a bounds check per element, runs one small matmul per tile inside nested rayon loops and
//! scatters the result back to NCHW; the bias add and the ReLU are two more passes (each a
//! barrier-pool dispatch). Here, per image and per band of output rows:
//!
//! * 1×1 / stride 1 / no padding: no im2col at all; the weight `[c_out, c_in]` multiplies the
//!   input band `[c_in, rows·W]` read in place (row stride `H·W`).
//! * any other kernel, stride or (symmetric or asymmetric) padding: the im2col band
//!   `[c_in·kh·kw, rows·out_w]` is built from contiguous row segments (for stride 1 every segment
//!   is one `copy_from_slice` of an input row, with the padding columns zeroed around it; no
//!   per-element bounds checks), sized to stay in the L2 cache, then one matmul
//!   `[c_out, K] × [K, rows·out_w]` written straight into the NCHW output (row stride `out_h·out_w`).
//! * the folded-BatchNorm bias and the ReLU are one pass over the band just computed (still in
//!   cache).
//!
//! The matmuls call the `gemm` crate (the one candle's CPU matmul uses) directly on slices.
//! Parallelism is one level only: the (image, row band) work units are spread over rayon's
//! threads, each running a single-threaded gemm, so no thread pool waits on another. When there
//! are too few units to keep every thread busy (batch 1 at 8×8, say), images are processed one at
//! a time and gemm's own rayon parallelism is used instead.
//!
//! Non-CPU devices and dtypes other than f32 take candle's `conv2d` (+ `pad_with_zeros` for
//! asymmetric padding), `broadcast_add` and `relu` ([`conv2d_candle`]); so does everything when
//! the environment sets `CBS_FAST_CONV=0` (with [`crate::pool`] back on candle's poolings too),
//! for side-by-side timings (docs/benchmarks.md).

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};
use rayon::prelude::*;

use crate::{EvalError, Result};

/// Target size of one im2col band, in f32 elements (1 MiB, half a typical L2 cache).
const COL_BAND_ELEMS: usize = 256 * 1024;
/// Smallest band (output pixels) worth a gemm call of its own when splitting for parallelism.
const MIN_BAND_PIXELS: usize = 64;

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad_h: usize,
    pad_w: usize,
    out_h: usize,
    out_w: usize,
}

impl Geom {
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad_h == 0 && self.pad_w == 0
    }

    /// Valid output columns `[lo, hi)` for kernel column `kj`: those whose input column
    /// `ox·stride + kj − pad_w` lies in `0..w`.
    fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.pad_w.saturating_sub(kj).div_ceil(s);
        // ox·s + kj − pad_w ≤ w − 1  ⇔  ox ≤ (w − 1 + pad_w − kj) / s
        let hi = if self.w + self.pad_w > kj {
            ((self.w - 1 + self.pad_w - kj) / s + 1).min(self.out_w)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// `relu?(conv2d(x, weight) + bias)` for NCHW `x` `[B, c_in, H, W]`, `weight`
/// `[c_out, c_in, kh, kw]`, optional `bias` `[c_out]`, one stride for both axes and padding
/// `(pad_h, pad_w)` (zeros, same on both sides of an axis). No dilation, no groups.
///
/// f32 tensors on the CPU take the kernel of this module; everything else [`conv2d_candle`].
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    stride: usize,
    pad: (usize, usize),
) -> Result<Tensor> {
    let g = geometry(x, weight, bias, stride, pad)?;
    let cpu_f32 = fast_kernels_enabled()
        && matches!(x.device(), Device::Cpu)
        && matches!(weight.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.is_none_or(|b| matches!(b.device(), Device::Cpu) && b.dtype() == DType::F32);
    if !cpu_f32 {
        return conv2d_candle(x, weight, bias, relu, stride, pad);
    }
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.map(Tensor::contiguous).transpose()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = weight.storage_and_layout();
    let bias_guard = bias.as_ref().map(Tensor::storage_and_layout);
    let xv = cpu_f32_slice(&xs, xl)?;
    let wv = cpu_f32_slice(&ws, wl)?;
    let bv = match &bias_guard {
        Some((s, l)) => Some(cpu_f32_slice(s, l)?),
        None => None,
    };
    let out = conv2d_cpu_f32(&g, xv, wv, bv, relu);
    Ok(Tensor::from_vec(
        out,
        (g.batch, g.c_out, g.out_h, g.out_w),
        &Device::Cpu,
    )?)
}

/// The same computation with candle's own ops (`conv2d`, `pad_with_zeros` for asymmetric padding,
/// `broadcast_add`, `relu`): the path for CUDA and non-f32 tensors, and the reference in tests.
pub fn conv2d_candle(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    stride: usize,
    pad: (usize, usize),
) -> Result<Tensor> {
    let y = if pad.0 == pad.1 {
        x.conv2d(weight, pad.0, stride, 1, 1)?
    } else {
        x.pad_with_zeros(2, pad.0, pad.0)?
            .pad_with_zeros(3, pad.1, pad.1)?
            .conv2d(weight, 0, stride, 1, 1)?
    };
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
        None => y,
    };
    Ok(if relu { y.relu()? } else { y })
}

/// `false` when the environment sets `CBS_FAST_CONV=0`: the Inception convolutions and poolings
/// then take candle's ops, as before these kernels existed (for side-by-side timings).
pub fn fast_kernels_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CBS_FAST_CONV").map_or(true, |v| v != "0"))
}

fn geometry(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: (usize, usize),
) -> Result<Geom> {
    let (batch, c_in, h, w) = x.dims4()?;
    let (c_out, wc_in, kh, kw) = weight.dims4()?;
    let bad = |what: String| Err(EvalError::Invalid(format!("conv2d: {what}")));
    if wc_in != c_in {
        return bad(format!(
            "input has {c_in} channels, weight {:?} expects {wc_in}",
            weight.dims()
        ));
    }
    if let Some(b) = bias {
        if b.dims() != [c_out] {
            return bad(format!("bias shape {:?}, expected [{c_out}]", b.dims()));
        }
    }
    if stride == 0 || kh == 0 || kw == 0 || h + 2 * pad.0 < kh || w + 2 * pad.1 < kw {
        return bad(format!(
            "kernel {kh}×{kw} (stride {stride}, padding {pad:?}) does not fit a {h}×{w} input"
        ));
    }
    Ok(Geom {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        stride,
        pad_h: pad.0,
        pad_w: pad.1,
        out_h: (h + 2 * pad.0 - kh) / stride + 1,
        out_w: (w + 2 * pad.1 - kw) / stride + 1,
    })
}

fn cpu_f32_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Ok(&v[start..end]),
        _ => Err(EvalError::Invalid(
            "conv2d: expected a contiguous f32 CPU tensor".to_string(),
        )),
    }
}

/// Raw pointer to the output buffer, shared by work units that write disjoint parts of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every work unit writes a disjoint set of elements (its own image and output rows),
// and the buffer outlives the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    /// Per-thread im2col buffer, reused across calls (no page faults on every convolution).
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Output rows per band: the im2col band stays within [`COL_BAND_ELEMS`], and there are enough
/// units for every thread (at least two per thread while bands stay ≥ [`MIN_BAND_PIXELS`]).
fn band_rows(g: &Geom, threads: usize) -> usize {
    let by_cache = (COL_BAND_ELEMS / (g.k() * g.out_w).max(1)).clamp(1, g.out_h);
    let mut rows = by_cache;
    let min_rows = MIN_BAND_PIXELS.div_ceil(g.out_w).clamp(1, g.out_h);
    let target_units = 2 * threads;
    while g.batch * g.out_h.div_ceil(rows) < target_units && rows > min_rows {
        rows = (rows / 2).max(min_rows);
    }
    rows
}

fn conv2d_cpu_f32(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let len = g.batch * g.c_out * g.out_h * g.out_w;
    // Not zeroed: gemm (with `read_dst = false`) writes every element before anything reads it.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let threads = rayon::current_num_threads().max(1);
    let rows = band_rows(g, threads);
    let bands = g.out_h.div_ceil(rows);
    let units = g.batch * bands;
    let ptr = OutPtr(out.as_mut_ptr());
    if threads == 1 || units >= threads {
        (0..units).into_par_iter().with_max_len(1).for_each(|u| {
            let (b, band) = (u / bands, u % bands);
            let oy0 = band * rows;
            let oy1 = (oy0 + rows).min(g.out_h);
            // SAFETY: unit (b, band) writes only image b, output rows oy0..oy1.
            unsafe {
                conv_band(
                    g,
                    x,
                    w,
                    bias,
                    relu,
                    ptr,
                    b,
                    oy0,
                    oy1,
                    gemm::Parallelism::None,
                )
            };
        });
    } else {
        // Too few units to occupy every thread: whole images, one at a time, gemm-parallel.
        for b in 0..g.batch {
            // SAFETY: a single unit writes image b; nothing else runs concurrently.
            unsafe {
                conv_band(
                    g,
                    x,
                    w,
                    bias,
                    relu,
                    ptr,
                    b,
                    0,
                    g.out_h,
                    gemm::Parallelism::Rayon(threads),
                )
            };
        }
    }
    // SAFETY: the units cover every (image, output row) of the buffer, and each writes all
    // channels and columns of its rows (gemm, then the epilogue in place).
    unsafe { out.set_len(len) };
    out
}

/// Computes output rows `oy0..oy1` of image `b`, all output channels, into `out`.
///
/// # Safety
/// `out` must point to a `[batch, c_out, out_h, out_w]` buffer that no other thread reads or
/// writes at these (image, rows) positions during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn conv_band(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    out: OutPtr,
    b: usize,
    oy0: usize,
    oy1: usize,
    parallelism: gemm::Parallelism,
) {
    let out_hw = g.out_h * g.out_w;
    let n = (oy1 - oy0) * g.out_w;
    let k = g.k();
    let image = &x[b * g.c_in * g.h * g.w..(b + 1) * g.c_in * g.h * g.w];
    // SAFETY: in bounds of the output buffer (image b, offset of row oy0).
    let dst = unsafe { out.0.add(b * g.c_out * out_hw + oy0 * g.out_w) };
    let run_gemm = |rhs: *const f32, rhs_rs: usize| {
        // dst[c_out, n] (row stride out_hw) = w[c_out, k] · rhs[k, n] (row stride rhs_rs).
        // SAFETY: the three matrices lie inside their buffers with these strides.
        unsafe {
            gemm::gemm(
                g.c_out,
                n,
                k,
                dst,
                1,
                out_hw as isize,
                false,
                w.as_ptr(),
                1,
                k as isize,
                rhs,
                1,
                rhs_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    if g.is_pointwise() {
        run_gemm(image[oy0 * g.w..].as_ptr(), g.h * g.w);
    } else {
        COL.with(|col| {
            let mut col = col.borrow_mut();
            if col.len() < k * n {
                col.resize(k * n, 0.0);
            }
            im2col_band(g, image, oy0, oy1, &mut col[..k * n]);
            run_gemm(col.as_ptr(), n);
        });
    }
    if bias.is_some() || relu {
        for co in 0..g.c_out {
            // SAFETY: row co of the band, inside this unit's part of the output.
            let seg = unsafe { std::slice::from_raw_parts_mut(dst.add(co * out_hw), n) };
            let bv = bias.map_or(0.0, |b| b[co]);
            if relu {
                seg.iter_mut().for_each(|v| *v = (*v + bv).max(0.0));
            } else {
                seg.iter_mut().for_each(|v| *v += bv);
            }
        }
    }
}

/// im2col of output rows `oy0..oy1` of one image `[c_in, h, w]` into `col`
/// `[c_in·kh·kw, (oy1 − oy0)·out_w]` (row `(c, ki, kj)`, column `(oy − oy0, ox)`), zeros where the
/// window reaches into the padding.
fn im2col_band(g: &Geom, image: &[f32], oy0: usize, oy1: usize, col: &mut [f32]) {
    let n = (oy1 - oy0) * g.out_w;
    let (h, w, s) = (g.h, g.w, g.stride);
    let mut rows = col.chunks_exact_mut(n);
    for c in 0..g.c_in {
        let plane = &image[c * h * w..(c + 1) * h * w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = rows.next().expect("im2col row");
                let (lo, hi) = g.valid_cols(kj);
                for (oy, seg) in (oy0..oy1).zip(row.chunks_exact_mut(g.out_w)) {
                    let iy = (oy * s + ki).wrapping_sub(g.pad_h);
                    if iy >= h || lo == hi {
                        seg.fill(0.0);
                        continue;
                    }
                    seg[..lo].fill(0.0);
                    seg[hi..].fill(0.0);
                    let ix0 = lo * s + kj - g.pad_w;
                    let src = &plane[iy * w + ix0..(iy + 1) * w];
                    let dst = &mut seg[lo..hi];
                    if s == 1 {
                        dst.copy_from_slice(&src[..hi - lo]);
                    } else {
                        for (d, v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}
