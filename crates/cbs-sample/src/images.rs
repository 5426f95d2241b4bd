//! Image outputs: uint8 conversion, PNG grid, individual PNGs, ADM-format `.npz`, and the
//! whole output directory of `cbs sample` ([`write_outputs`]; names in
//! [`cbs_run::outputs`]). Every file is written crash-safe ([`cbs_core::atomic`]).

use std::path::Path;

use candle_core::{DType, Tensor};
use cbs_core::atomic;
use cbs_run::outputs::{GRID_PNG, IMAGES_DIR, LABELS_TXT, SAMPLES_NPZ, SCATTER_PNG};

use crate::{Result, SampleError};

fn file_err(path: &Path, e: impl std::fmt::Display) -> SampleError {
    SampleError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// `[N, C, H, W]` in [−1, 1] → uint8 `[N, H, W, C]`, as the SiT/DiT sampling scripts do:
/// `clamp(127.5·x + 128, 0, 255)` truncated to an integer.
pub fn to_uint8_nhwc(x: &Tensor) -> Result<(Vec<u8>, [usize; 4])> {
    let (n, c, h, w) = x.dims4()?;
    let v = x
        .permute((0, 2, 3, 1))? // [N, H, W, C]
        .contiguous()?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bytes = v
        .iter()
        .map(|&p| (127.5 * p + 128.0).clamp(0.0, 255.0) as u8)
        .collect();
    Ok((bytes, [n, h, w, c]))
}

/// `samples.npz` with `arr_0` = uint8 `[N, H, W, C]` (the ADM evaluator's input format).
pub fn write_npz(path: &Path, bytes: &[u8], dims: [usize; 4]) -> Result<()> {
    let a = cbs_data::NpyArray::from_u8(&dims, bytes.to_vec()).map_err(|e| file_err(path, e))?;
    Ok(atomic::write_with_path(path, |tmp| {
        cbs_data::write_npz(tmp, &[("arr_0", &a)])
    })?)
}

/// A PNG written crash-safe (the temporary file has no `.png` extension, so the format is
/// given explicitly).
fn write_png<P, C>(path: &Path, img: &image::ImageBuffer<P, C>) -> Result<()>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    Ok(atomic::write_with_path(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
    })?)
}

fn save_png(path: &Path, data: Vec<u8>, w: usize, h: usize, c: usize) -> Result<()> {
    let (w, h) = (w as u32, h as u32);
    let res = match c {
        1 => image::GrayImage::from_raw(w, h, data).map(|i| write_png(path, &i)),
        3 => image::RgbImage::from_raw(w, h, data).map(|i| write_png(path, &i)),
        _ => {
            return Err(file_err(
                path,
                format!("cannot write {c}-channel images as PNG (1 or 3 channels)"),
            ))
        }
    };
    res.unwrap_or_else(|| Err(file_err(path, "image buffer size mismatch")))
}

/// A grid of `nrow` images per row with a 2-pixel border, like torchvision's `make_grid`.
pub fn write_grid(path: &Path, bytes: &[u8], dims: [usize; 4], nrow: usize) -> Result<()> {
    let [n, h, w, c] = dims;
    let pad = 2;
    let cols = nrow.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    let gw = cols * (w + pad) + pad;
    let gh = rows * (h + pad) + pad;
    let mut grid = vec![0u8; gw * gh * c];
    for i in 0..n {
        let (r, col) = (i / cols, i % cols);
        let (oy, ox) = (pad + r * (h + pad), pad + col * (w + pad));
        for y in 0..h {
            let src = &bytes[((i * h + y) * w) * c..((i * h + y) * w + w) * c];
            let dst = ((oy + y) * gw + ox) * c;
            grid[dst..dst + w * c].copy_from_slice(src);
        }
    }
    save_png(path, grid, gw, gh, c)
}

/// `DIR/000000.png`, … one file per sample.
pub fn write_individual(dir: &Path, bytes: &[u8], dims: [usize; 4]) -> Result<()> {
    let [n, h, w, c] = dims;
    cbs_core::atomic::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let per = h * w * c;
    for i in 0..n {
        save_png(
            &dir.join(format!("{i:06}.png")),
            bytes[i * per..(i + 1) * per].to_vec(),
            w,
            h,
            c,
        )?;
    }
    Ok(())
}

/// `samples.npz` with `arr_0` = float32 `[N, D]` (point samples).
pub fn write_points_npz(path: &Path, x: &Tensor) -> Result<()> {
    let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let a = cbs_data::NpyArray::from_f32(x.dims(), &v).map_err(|e| file_err(path, e))?;
    Ok(atomic::write_with_path(path, |tmp| {
        cbs_data::write_npz(tmp, &[("arr_0", &a)])
    })?)
}

/// A 2-D scatter plot (first two coordinates) over `[-extent, extent]²`, 512×512 px.
pub fn write_scatter(path: &Path, x: &Tensor, extent: f32) -> Result<()> {
    let (n, d) = x.dims2()?;
    if d < 2 {
        return Err(file_err(
            path,
            "a scatter plot needs at least two coordinates",
        ));
    }
    let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let size = 512u32;
    let mut img = image::RgbImage::from_pixel(size, size, image::Rgb([255, 255, 255]));
    let to_px = |c: f32| ((c + extent) / (2.0 * extent) * (size as f32 - 1.0)).round();
    // Axes through the origin.
    let o = to_px(0.0) as u32;
    for i in 0..size {
        img.put_pixel(i, o, image::Rgb([200, 200, 200]));
        img.put_pixel(o, i, image::Rgb([200, 200, 200]));
    }
    for i in 0..n {
        let (px, py) = (to_px(v[i * d]), to_px(-v[i * d + 1]));
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let (qx, qy) = (px + dx as f32, py + dy as f32);
            if (0.0..size as f32).contains(&qx) && (0.0..size as f32).contains(&qy) {
                img.put_pixel(qx as u32, qy as u32, image::Rgb([30, 80, 200]));
            }
        }
    }
    write_png(path, &img)
}

/// How [`write_outputs`] lays out the image outputs.
#[derive(Clone, Debug)]
pub struct OutputOptions {
    /// Images per grid row (default: √ of the images shown).
    pub nrow: Option<usize>,
    /// The grid shows the first this many images (all of them are in `samples.npz`).
    pub grid_max: usize,
    /// Also write every image as `images/NNNNNN.png`.
    pub individual: bool,
}

/// The output directory of `cbs sample`: images `[N, C, H, W]` → `grid.png`, `samples.npz`
/// (uint8 `[N, H, W, C]`), `labels.txt` (if labelled) and optionally `images/`; points
/// `[N, D]` → `samples.npz` (float32) and, for `D ≥ 2`, `scatter.png`.
pub fn write_outputs(
    out: &Path,
    x: &Tensor,
    labels: Option<&[u32]>,
    opts: &OutputOptions,
) -> Result<()> {
    cbs_core::atomic::create_dir_all(out).map_err(|e| file_err(out, e))?;
    if x.rank() == 2 {
        write_points_npz(&out.join(SAMPLES_NPZ), x)?;
        if x.dim(1)? >= 2 {
            write_scatter(&out.join(SCATTER_PNG), x, 5.0)?;
        }
        return Ok(());
    }
    let (bytes, dims) = to_uint8_nhwc(x)?;
    let shown = dims[0].min(opts.grid_max.max(1));
    let per_image = dims[1] * dims[2] * dims[3];
    let nrow = opts
        .nrow
        .unwrap_or_else(|| (shown as f64).sqrt().ceil() as usize);
    let grid_dims = [shown, dims[1], dims[2], dims[3]];
    write_grid(
        &out.join(GRID_PNG),
        &bytes[..shown * per_image],
        grid_dims,
        nrow,
    )?;
    write_npz(&out.join(SAMPLES_NPZ), &bytes, dims)?;
    if let Some(l) = labels {
        let text: String = l.iter().map(|v| format!("{v}\n")).collect();
        atomic::write_text(&out.join(LABELS_TXT), &text)?;
    }
    if opts.individual {
        write_individual(&out.join(IMAGES_DIR), &bytes, dims)?;
    }
    Ok(())
}
