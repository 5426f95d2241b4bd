//! ADM's `center_crop_arr` (openai/guided-diffusion, `guided_diffusion/image_datasets.py`) on
//! 8-bit pixels, with Pillow's resampling reproduced exactly.
//!
//! The reference, on a PIL image already converted to RGB:
//!
//! 1. while `min(w, h) >= 2 * size`: resize to `(w // 2, h // 2)` with the BOX filter;
//! 2. `scale = size / min(w, h)`; resize to `(round(w * scale), round(h * scale))` with
//!    BICUBIC (Python's `round`: half to even);
//! 3. crop `size × size` at `((h - size) // 2, (w - size) // 2)` (row, column).
//!
//! Pillow resizes separably, horizontal pass first (skipped when the width does not change),
//! then vertical (skipped likewise), each pass rounding to 8 bits. Its filter weights are
//! normalised per output pixel and turned into 22-bit fixed point; [`resize`] follows its
//! `Resample.c` step for step and gives bit-identical results to Pillow 9.5–12 (checked on
//! random sizes, RGB and L). Pillow 13 sometimes runs the vertical pass first, which moves some
//! pixels by 1–2 levels. JPEG decoders differ slightly too (zune-jpeg here, libjpeg-turbo in
//! PIL), so only lossless inputs match exactly.

use crate::error::{DataError, Result};

/// Pillow's resampling filters used by ADM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Area average (`Image.BOX`), support 0.5.
    Box,
    /// Keys cubic with a = -0.5 (`Image.BICUBIC`), support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point precision of Pillow's 8-bit resampling (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Per output position: first input index, the fixed-point weights.
struct Coeffs {
    start: Vec<usize>,
    weights: Vec<Vec<i64>>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `in_size → out_size`.
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero, as does `as`.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let w: Vec<f64> = (xmin..xmax)
            .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = w.iter().sum();
        let fixed = w
            .iter()
            .map(|&v| {
                let v = if total != 0.0 { v / total } else { v };
                let f = v * f64::from(1u32 << PRECISION_BITS);
                if v < 0.0 {
                    (f - 0.5) as i64
                } else {
                    (f + 0.5) as i64
                }
            })
            .collect();
        start.push(xmin as usize);
        weights.push(fixed);
    }
    Coeffs { start, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes interleaved 8-bit pixels (`height × width × channels`, row-major) like Pillow's
/// `Image.resize((out_w, out_h), filter)`. All sizes must be positive.
pub fn resize(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Result<Vec<u8>> {
    check_buffer(pixels, width, height, channels)?;
    if out_w == 0 || out_h == 0 {
        return Err(DataError::Invalid {
            field: "size",
            reason: format!("cannot resize to {out_w}×{out_h}"),
        });
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut cur = pixels.to_vec();
    let mut w = width;
    if out_w != width {
        let c = coeffs(width, out_w, filter);
        let mut out = vec![0u8; out_w * height * channels];
        for y in 0..height {
            let row = &cur[y * w * channels..(y + 1) * w * channels];
            let dst = &mut out[y * out_w * channels..(y + 1) * out_w * channels];
            for xx in 0..out_w {
                let s = c.start[xx];
                for ch in 0..channels {
                    let acc = c.weights[xx].iter().enumerate().fold(half, |acc, (i, &k)| {
                        acc + i64::from(row[(s + i) * channels + ch]) * k
                    });
                    dst[xx * channels + ch] = clip8(acc);
                }
            }
        }
        cur = out;
        w = out_w;
    }
    if out_h != height {
        let c = coeffs(height, out_h, filter);
        let stride = w * channels;
        let mut out = vec![0u8; out_h * stride];
        for yy in 0..out_h {
            let s = c.start[yy];
            let dst = &mut out[yy * stride..(yy + 1) * stride];
            for (j, d) in dst.iter_mut().enumerate() {
                let acc = c.weights[yy].iter().enumerate().fold(half, |acc, (i, &k)| {
                    acc + i64::from(cur[(s + i) * stride + j]) * k
                });
                *d = clip8(acc);
            }
        }
        cur = out;
    }
    Ok(cur)
}

/// ADM's `center_crop_arr`: interleaved 8-bit pixels (`height × width × channels`) to a
/// `size × size × channels` centre crop (see the module documentation for the steps).
pub fn center_crop_arr(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    size: usize,
) -> Result<Vec<u8>> {
    check_buffer(pixels, width, height, channels)?;
    if size == 0 {
        return Err(DataError::Invalid {
            field: "image_size",
            reason: "must be at least 1".to_string(),
        });
    }
    let (mut w, mut h) = (width, height);
    let mut cur: Option<Vec<u8>> = None;
    while w.min(h) >= size.saturating_mul(2) {
        let src = cur.as_deref().unwrap_or(pixels);
        cur = Some(resize(src, w, h, channels, w / 2, h / 2, Filter::Box)?);
        (w, h) = (w / 2, h / 2);
    }
    // Python: scale = size / min(w, h); round(x * scale), ties to even.
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        (w as f64 * scale).round_ties_even() as usize,
        (h as f64 * scale).round_ties_even() as usize,
    );
    let src = cur.as_deref().unwrap_or(pixels);
    let scaled = resize(src, w, h, channels, nw, nh, Filter::Bicubic)?;
    if nw < size || nh < size {
        // Unreachable for positive sizes (the short side rounds to `size`); kept as an error
        // rather than a slice panic.
        return Err(DataError::Invalid {
            field: "image_size",
            reason: format!("{width}×{height} scaled to {nw}×{nh}, smaller than {size}"),
        });
    }
    let (top, left) = ((nh - size) / 2, (nw - size) / 2);
    let mut out = Vec::with_capacity(size * size * channels);
    for y in top..top + size {
        let row = (y * nw + left) * channels;
        out.extend_from_slice(&scaled[row..row + size * channels]);
    }
    Ok(out)
}

fn check_buffer(pixels: &[u8], width: usize, height: usize, channels: usize) -> Result<()> {
    let expected = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(channels));
    if width == 0 || height == 0 || channels == 0 || expected != Some(pixels.len()) {
        return Err(DataError::Invalid {
            field: "pixels",
            reason: format!(
                "{} bytes do not form a {width}×{height} image of {channels} channels",
                pixels.len()
            ),
        });
    }
    Ok(())
}
