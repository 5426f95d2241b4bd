//! Inference convolution: `relu?(conv2d(x, w) + bias)` on NCHW f32 tensors, no graph node and
//! no backward (the FID Inception network). It shares the geometry and im2col of the training
//! convolution ([`super::conv2d`]) and adds what a forward-only pass can exploit:
//!
//! * 1×1 / stride 1 / no padding: no im2col at all; the weight `[c_out, c_in]` multiplies the
//!   input band `[c_in, rows·W]` read in place (row stride `H·W`);
//! * otherwise the im2col matrix of a band of output rows, sized to stay in the L2 cache
//!   (per-thread buffer, reused across calls), then one product written straight into the
//!   NCHW output (row stride `out_h·out_w`);
//! * the bias and the ReLU as one pass over the band just computed (still in cache).
//!
//! Work units are (image, row band) pairs spread over the worker threads ([`crate::par`]),
//! each a single-threaded product; with too few units for the threads, images run one after
//! another with each product split over the threads.
//!
//! Other devices and dtypes, and the composed policy, take candle's `conv2d` (+
//! `pad_with_zeros` for asymmetric padding), `broadcast_add` and `relu`.

use std::cell::RefCell;

use candle_core::{bail, DType, Device, Result, Tensor};

use super::contiguous;
use super::conv2d::{im2col, Geo};
use super::gemm::{raw as gemm_raw, Threads, View};
use crate::par::{self, SharedMut};
use crate::Kernels;

/// Target size of one im2col band, in f32 elements (1 MiB, half a typical L2 cache).
const COL_BAND_ELEMS: usize = 256 * 1024;
/// Smallest band (output pixels) worth a product of its own when splitting for parallelism.
const MIN_BAND_PIXELS: usize = 64;

/// One inference convolution's settings.
#[derive(Clone, Copy, Debug)]
pub struct ConvInfer {
    pub stride: usize,
    /// Zero padding `(rows, columns)`, the same on both sides of an axis.
    pub pad: (usize, usize),
    /// ReLU after the bias.
    pub relu: bool,
}

/// `relu?(conv2d(x, weight) + bias)` for NCHW `x` `[B, c_in, H, W]`, `weight`
/// `[c_out, c_in, kh, kw]`, optional `bias` `[c_out]`. No dilation, no groups. CPU f32 tensors
/// take the kernel of this module under [`Kernels::Fused`]; everything else candle's ops.
pub fn conv2d_infer(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    c: ConvInfer,
    kernels: Kernels,
) -> Result<Tensor> {
    let op = "conv2d-infer";
    let g = Geo::new(
        op,
        x.dims(),
        weight.dims(),
        bias.map(|b| b.dims()),
        c.stride,
        c.pad,
    )?;
    let mut all = vec![x, weight];
    all.extend(bias);
    if !(kernels.fuses(&all) && x.dtype() == DType::F32 && g.k() > 0) {
        return composed(x, weight, bias, c);
    }
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.map(Tensor::contiguous).transpose()?;
    let out = with_f32(&x, |xv| {
        with_f32(&weight, |wv| match &bias {
            Some(b) => with_f32(b, |bv| Ok(forward(&g, xv, wv, Some(bv), c.relu))),
            None => Ok(forward(&g, xv, wv, None, c.relu)),
        })
    })?;
    Tensor::from_vec(out, (g.b, g.co, g.ho, g.wo), &Device::Cpu)
}

/// The same computation with candle's own ops: the path for other devices and dtypes, and the
/// reference in tests.
pub fn composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    c: ConvInfer,
) -> Result<Tensor> {
    let (ph, pw) = c.pad;
    let y = if ph == pw {
        x.conv2d(weight, ph, c.stride, 1, 1)?
    } else {
        x.pad_with_zeros(2, ph, ph)?
            .pad_with_zeros(3, pw, pw)?
            .conv2d(weight, 0, c.stride, 1, 1)?
    };
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
        None => y,
    };
    if c.relu {
        y.relu()
    } else {
        Ok(y)
    }
}

fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*st else {
        bail!("conv2d-infer: CPU tensors only");
    };
    f(contiguous::<f32>(s, l, "conv2d-infer")?)
}

fn pointwise(g: &Geo) -> bool {
    g.kh == 1 && g.kw == 1 && g.s == 1 && g.ph == 0 && g.pw == 0
}

thread_local! {
    /// Per-thread im2col buffer, reused across calls (no page faults on every convolution).
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Output rows per band: the im2col band stays within [`COL_BAND_ELEMS`], and there are enough
/// units for every thread (at least two per thread while bands stay ≥ [`MIN_BAND_PIXELS`]).
fn band_rows(g: &Geo, threads: usize) -> usize {
    let mut rows = (COL_BAND_ELEMS / (g.k() * g.wo).max(1)).clamp(1, g.ho);
    let min_rows = MIN_BAND_PIXELS.div_ceil(g.wo).clamp(1, g.ho);
    while g.b * g.ho.div_ceil(rows) < 2 * threads && rows > min_rows {
        rows = (rows / 2).max(min_rows);
    }
    rows
}

fn forward(g: &Geo, x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let len = g.b * g.out_len();
    // Not zeroed: the products (k > 0) write every element before anything reads it.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let threads = par::threads();
    let rows = band_rows(g, threads);
    let bands = g.ho.div_ceil(rows);
    let units = g.b * bands;
    let dst = SharedMut(out.as_mut_ptr());
    let unit = |b: usize, (oy0, oy1): (usize, usize), th: Threads| {
        // SAFETY: the unit writes only image b, output rows oy0..oy1 (all channels), which
        // no other unit touches; the buffer holds `len` elements and outlives the loop.
        unsafe { band(g, x, w, bias, relu, dst, b, (oy0, oy1), th) }
    };
    if threads == 1 || units >= threads {
        par::for_each(units, |u| {
            let (b, i) = (u / bands, u % bands);
            unit(b, (i * rows, ((i + 1) * rows).min(g.ho)), Threads::One)
        });
    } else {
        (0..g.b).for_each(|b| unit(b, (0, g.ho), Threads::All));
    }
    // SAFETY: the units cover every (image, output row) of the buffer, and each writes all
    // channels and columns of its rows (the product, then the epilogue in place).
    unsafe { out.set_len(len) };
    out
}

/// Output rows `oy0..oy1` of image `b`, all output channels, into `out`.
///
/// # Safety
/// `out` must point to a `[b, co, ho, wo]` buffer that no other thread reads or writes at
/// these (image, rows) positions during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn band(
    g: &Geo,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    out: SharedMut<f32>,
    b: usize,
    (oy0, oy1): (usize, usize),
    th: Threads,
) {
    let (pix, n, k) = (g.pix(), (oy1 - oy0) * g.wo, g.k());
    let image = &x[b * g.x_len()..][..g.x_len()];
    // SAFETY: in bounds of the output buffer (image b, offset of row oy0).
    let dst = unsafe { out.ptr().add(b * g.out_len() + oy0 * g.wo) };
    let wv = View::rows(w, g.co, k, k);
    // dst[co, n] (row stride pix) = w[co, k] · rhs[k, n].
    // SAFETY: the operands are in bounds (views over whole slices checked below); `dst`
    // addresses rows of this unit only, aliasing neither operand.
    let product = |rhs: View<'_, f32>| unsafe { gemm_raw(dst, pix, wv, rhs, false, th) };
    if pointwise(g) {
        product(View::rows(&image[oy0 * g.w..], k, n, g.h * g.w));
    } else {
        COL.with(|col| {
            let mut col = col.borrow_mut();
            if col.len() < k * n {
                col.resize(k * n, 0.0);
            }
            im2col(image, g, (oy0, oy1), &mut col[..k * n]);
            product(View::rows(&col[..k * n], k, n, n));
        });
    }
    if bias.is_some() || relu {
        for co in 0..g.co {
            // SAFETY: row co of the band, inside this unit's part of the output.
            let seg = unsafe { std::slice::from_raw_parts_mut(dst.add(co * pix), n) };
            let bv = bias.map_or(0.0, |b| b[co]);
            if relu {
                seg.iter_mut().for_each(|v| *v = (*v + bv).max(0.0));
            } else {
                seg.iter_mut().for_each(|v| *v += bv);
            }
        }
    }
}
