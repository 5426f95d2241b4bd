//! Image preprocessing for the FID Inception network, matching pytorch-fid.
//!
//! pytorch-fid feeds its Inception network with images in [0, 1] (NCHW, 3 channels), resized with
//! `F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)` (no antialiasing, so
//! upsampling 32 → 299 and downsampling 512 → 299 both use plain 2-tap linear interpolation), then
//! mapped to [-1, 1] with `2x − 1`. This module reproduces that pipeline:
//!
//! * [`u8_nhwc_to_f32_nchw`]: uint8 `[N, H, W, C]` (C = 1 or 3; grayscale is repeated to three
//!   channels) → f32 `[N, 3, H, W]` in [0, 1] (division by 255, as `ToTensor` does).
//! * [`resize_bilinear`]: PyTorch's bilinear resize with `align_corners=False`, implemented as a
//!   separable interpolation: `out = W_h · x · W_wᵀ`, where each row of the interpolation matrix
//!   holds the two PyTorch weights of one output pixel. The source coordinate of output pixel `d`
//!   is `s = (d + 0.5) · in / out − 0.5`, clamped to 0 when negative; `i0 = ⌊s⌋`,
//!   `i1 = min(i0 + 1, in − 1)`, `λ = s − i0`, weights `(1 − λ, λ)`. Both are computed in f32, like
//!   PyTorch's CPU kernel for f32 inputs.
//! * [`to_inception_input`]: resize to 299 × 299 (skipped when the input already is 299 × 299,
//!   where PyTorch's resize is an exact copy) and `2x − 1`.

use candle_core::{DType, Device, Tensor};

use crate::{EvalError, Result};

/// Side length of the Inception-v3 input.
pub const INCEPTION_SIZE: usize = 299;

/// The source coordinate PyTorch's `align_corners=False` linear interpolation samples for output
/// index `dst` (`area_pixel_compute_source_index` with the scale `in / out`), clamped at 0.
pub fn source_index(in_size: usize, out_size: usize, dst: usize) -> f32 {
    let scale = in_size as f32 / out_size as f32;
    let src = scale * (dst as f32 + 0.5) - 0.5;
    if src < 0.0 {
        0.0
    } else {
        src
    }
}

/// Interpolation matrix `[out_size, in_size]` (row-major) of PyTorch's 1-D linear interpolation
/// with `align_corners=False`: row `d` holds the weights that output index `d` gives to the input
/// indices (at most two non-zero entries, summing to 1).
pub fn interpolation_matrix(in_size: usize, out_size: usize) -> Vec<f32> {
    let mut m = vec![0f32; out_size * in_size];
    for d in 0..out_size {
        let src = source_index(in_size, out_size, d);
        // `src >= 0`, so truncation is the floor, as in PyTorch.
        let i0 = (src as usize).min(in_size - 1);
        let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
        let l1 = src - i0 as f32;
        let l0 = 1.0 - l1;
        m[d * in_size + i0] += l0;
        m[d * in_size + i1] += l1;
    }
    m
}

/// Bilinear resize of an NCHW float tensor to `out_h × out_w` with PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False)` semantics (no antialias). The result is
/// f32.
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4().map_err(|_| {
        EvalError::Invalid(format!(
            "resize_bilinear expects an NCHW tensor, got shape {:?}",
            x.dims()
        ))
    })?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return Err(EvalError::Invalid(format!(
            "resize_bilinear: empty size ({h}×{w} → {out_h}×{out_w})"
        )));
    }
    let x = x.to_dtype(DType::F32)?;
    if (h, w) == (out_h, out_w) {
        return Ok(x);
    }
    let dev = x.device();
    let x = x.reshape((n * c, h, w))?;
    // Along the width: [n·c, h, w] · [w, out_w].
    let x = if w == out_w {
        x
    } else {
        let ww = Tensor::from_vec(interpolation_matrix(w, out_w), (out_w, w), dev)?;
        x.broadcast_matmul(&ww.t()?)?
    };
    // Along the height: [out_h, h] · [n·c, h, out_w].
    let x = if h == out_h {
        x
    } else {
        let wh = Tensor::from_vec(interpolation_matrix(h, out_h), (out_h, h), dev)?;
        wh.broadcast_matmul(&x.contiguous()?)?
    };
    Ok(x.reshape((n, c, out_h, out_w))?)
}

/// pytorch-fid's input transform: images in [0, 1], NCHW with 3 channels, any size → bilinear
/// resize to 299 × 299 (`align_corners=False`) → `2x − 1`. Values are not clamped.
pub fn to_inception_input(images01: &Tensor) -> Result<Tensor> {
    let dims = images01.dims();
    if dims.len() != 4 || dims[1] != 3 {
        return Err(EvalError::Invalid(format!(
            "Inception input must be [N, 3, H, W] in [0, 1], got shape {dims:?}"
        )));
    }
    let x = resize_bilinear(images01, INCEPTION_SIZE, INCEPTION_SIZE)?;
    Ok(x.affine(2.0, -1.0)?)
}

/// uint8 images `[N, H, W, C]` (row-major, C = 1 or 3) → f32 `[N, 3, H, W]` in [0, 1]
/// (`v / 255`); a single (grayscale) channel is repeated to three channels.
pub fn u8_nhwc_to_f32_nchw(
    data: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    device: &Device,
) -> Result<Tensor> {
    if c != 1 && c != 3 {
        return Err(EvalError::Invalid(format!(
            "images must have 1 or 3 channels, got {c}"
        )));
    }
    if data.len() != n * h * w * c {
        return Err(EvalError::Invalid(format!(
            "image buffer holds {} bytes, expected {n}×{h}×{w}×{c} = {}",
            data.len(),
            n * h * w * c
        )));
    }
    let x = Tensor::from_slice(data, (n, h, w, c), device)?
        .to_dtype(DType::F32)?
        .broadcast_div(&Tensor::new(255f32, device)?)?
        .permute((0, 3, 1, 2))?;
    let x = if c == 1 { x.repeat((1, 3, 1, 1))? } else { x };
    Ok(x.contiguous()?)
}

/// Grayscale NCHW float images `[N, 1, H, W]` → `[N, 3, H, W]` (channel repeated); 3-channel
/// input is returned unchanged.
pub fn gray_to_rgb(x: &Tensor) -> Result<Tensor> {
    match x.dims() {
        [_, 1, _, _] => Ok(x.repeat((1, 3, 1, 1))?),
        [_, 3, _, _] => Ok(x.clone()),
        d => Err(EvalError::Invalid(format!(
            "expected [N, 1 or 3, H, W] images, got shape {d:?}"
        ))),
    }
}
