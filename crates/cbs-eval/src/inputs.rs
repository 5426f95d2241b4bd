//! What `cbs eval-fid` accepts on either side, read into images or precomputed statistics.
//!
//! - a directory of PNG/JPEG images (`*.png`, `*.jpg`, `*.jpeg`, any case; other files and
//!   hidden entries are ignored; not recursive), read in sorted file-name order
//!   ([`cbs_data::list_images`]), all of one size;
//! - a `cbs sample` output directory (its `samples.npz`);
//! - an `.npz` with `arr_0` = uint8 `[N, H, W, C]` (the ADM evaluator's sample format);
//! - precomputed statistics: an `.npz` with `mu` [D] and `sigma` [D, D] (pytorch-fid's
//!   `--save-stats` format; `mu_s` / `sigma_s`, the sFID statistics, are read when present).
//!   An `.npz` with both `arr_0` and `mu` (ADM reference batches) is read as images.
//!
//! Grayscale becomes 3 channels by repetition and an alpha channel is dropped (PIL's
//! `convert('RGB')`, as pytorch-fid does). Every failure is an error naming the path and what
//! was expected. `.npz` files are read by [`cbs_data::NpzArchive`], which checks every array
//! against the file's size before allocating it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use cbs_data::{list_images, NpzArchive};

use crate::fid::Stats;
use crate::{EvalError, Result};

/// What the two sides of `cbs eval-fid` may be, in words (used in error messages).
pub const EXPECTED: &str = "a directory of PNG/JPEG images, a `cbs sample` output directory \
     (samples.npz), an .npz with arr_0 = uint8 [N, H, W, C] images, or an .npz of statistics \
     (mu [D], sigma [D, D])";

/// Images, uint8 `[N, H, W, 3]` on the CPU.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub pixels: Tensor,
}

impl ImageSet {
    /// Wraps uint8 NHWC pixels with 1, 3 or 4 channels (or `[N, H, W]` grayscale), making
    /// them 3-channel.
    pub fn from_nhwc(pixels: Tensor) -> Result<Self> {
        if pixels.dtype() != DType::U8 {
            return Err(EvalError::Invalid(format!(
                "images must be uint8, found {:?}",
                pixels.dtype()
            )));
        }
        let pixels = match pixels.dims() {
            [_, _, _] => pixels.unsqueeze(3)?,
            [_, _, _, _] => pixels,
            dims => {
                return Err(EvalError::Invalid(format!(
                    "images must be [N, H, W, C], found shape {dims:?}"
                )))
            }
        };
        let (n, h, w, c) = pixels.dims4()?;
        let pixels = match c {
            3 => pixels,
            1 => pixels.broadcast_as((n, h, w, 3))?.contiguous()?,
            4 => pixels.narrow(3, 0, 3)?.contiguous()?,
            _ => {
                return Err(EvalError::Invalid(format!(
                    "images must have 1, 3 or 4 channels, found {c} (shape [N, H, W, C] = \
                     {:?})",
                    [n, h, w, c]
                )))
            }
        };
        if n == 0 || h == 0 || w == 0 {
            return Err(EvalError::Invalid(format!(
                "no pixels: shape [N, H, W, C] = {:?}",
                pixels.dims()
            )));
        }
        Ok(Self {
            pixels: pixels.to_device(&Device::Cpu)?,
        })
    }

    pub fn len(&self) -> usize {
        self.pixels.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (H, W).
    pub fn size(&self) -> (usize, usize) {
        let d = self.pixels.dims();
        (d[1], d[2])
    }

    /// Images `start .. start + len` as float32 `[len, 3, H, W]` in [0, 1] (x / 255, a true
    /// division like torchvision's `ToTensor`) on `device`.
    pub fn batch(&self, start: usize, len: usize, device: &Device) -> Result<Tensor> {
        let x = self
            .pixels
            .narrow(0, start, len)?
            .to_device(device)?
            .permute((0, 3, 1, 2))?
            .to_dtype(DType::F32)?;
        Ok(x.broadcast_div(&Tensor::new(255f32, device)?)?)
    }
}

/// One side of an evaluation as read from disk.
#[derive(Debug, Clone)]
pub enum Input {
    Images(ImageSet),
    /// Precomputed statistics: of the pool features, and of the spatial (sFID) features when
    /// the file has them.
    Stats {
        pool: Stats,
        spatial: Option<Stats>,
    },
}

impl Input {
    /// "N images of H×W" or "statistics (D-dimensional)".
    pub fn describe(&self) -> String {
        match self {
            Input::Images(s) => {
                let (h, w) = s.size();
                format!("{} images of {h}×{w}", s.len())
            }
            Input::Stats { pool, .. } => format!("statistics ({}-dimensional)", pool.dim()),
        }
    }
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> EvalError {
    EvalError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads one side (see the module documentation for the accepted forms).
pub fn read_input(path: &Path) -> Result<Input> {
    if path.is_dir() {
        let npz = path.join(cbs_run::outputs::SAMPLES_NPZ);
        if npz.is_file() {
            return read_npz_input(&npz);
        }
        let files = list_images(path)?;
        if !files.is_empty() {
            return Ok(Input::Images(read_image_files(&files)?));
        }
        let sub = path.join(cbs_run::outputs::IMAGES_DIR);
        if sub.is_dir() {
            let files = list_images(&sub)?;
            if !files.is_empty() {
                return Ok(Input::Images(read_image_files(&files)?));
            }
        }
        return Err(file_err(
            path,
            format!("no samples.npz and no PNG/JPEG images in this directory; expected {EXPECTED}"),
        ));
    }
    if !path.exists() {
        return Err(file_err(path, format!("not found; expected {EXPECTED}")));
    }
    read_npz_input(path)
}

/// Reads an `.npz` side: images (`arr_0`) or statistics (`mu`, `sigma`).
pub fn read_npz_input(path: &Path) -> Result<Input> {
    let mut npz = NpzArchive::open(path)
        .map_err(|e| file_err(path, format!("{}; expected {EXPECTED}", e.reason())))?;
    if npz.has("arr_0") {
        let h = npz.header("arr_0")?;
        if h.dtype != cbs_data::NpyDtype::U8 {
            return Err(file_err(
                path,
                format!(
                    "arr_0 is {} {:?}; expected uint8 [N, H, W, C] images (for point samples \
                     use `cbs eval-gmm`)",
                    h.dtype.name(),
                    h.shape
                ),
            ));
        }
        if h.fortran_order {
            return Err(file_err(
                path,
                "arr_0 is stored in Fortran order; save np.ascontiguousarray(images)",
            ));
        }
        let a = npz.read("arr_0")?;
        let t = Tensor::from_vec(a.data, a.header.shape, &Device::Cpu)?;
        return ImageSet::from_nhwc(t)
            .map(Input::Images)
            .map_err(|e| file_err(path, format!("arr_0: {e}")));
    }
    if npz.has("mu") || npz.has("sigma") {
        let (pool, spatial) = crate::fid::read_stats(&mut npz)?;
        return Ok(Input::Stats { pool, spatial });
    }
    let mut names = npz.names();
    names.sort();
    Err(file_err(
        path,
        format!(
            "has arrays {names:?}; expected arr_0 (uint8 [N, H, W, C] images) or mu and sigma \
             (statistics)"
        ),
    ))
}

/// Decodes images (all of one size) into an [`ImageSet`].
pub fn read_image_files(files: &[PathBuf]) -> Result<ImageSet> {
    let Some(first) = files.first() else {
        return Err(EvalError::Invalid("no image files given".into()));
    };
    let mut data = Vec::new();
    let mut size = None;
    for p in files {
        let img = image::ImageReader::open(p)
            .map_err(|e| file_err(p, e))?
            .with_guessed_format()
            .map_err(|e| file_err(p, e))?
            .decode()
            .map_err(|e| file_err(p, format!("not a readable PNG/JPEG image: {e}")))?
            .to_rgb8();
        let dims = (img.width() as usize, img.height() as usize);
        match size {
            None => {
                size = Some(dims);
                data.reserve(files.len() * dims.0 * dims.1 * 3);
            }
            Some(s) if s != dims => {
                return Err(file_err(
                    p,
                    format!(
                        "is {}×{} but {} is {}×{}; all images must have one size",
                        dims.0,
                        dims.1,
                        first.display(),
                        s.0,
                        s.1
                    ),
                ))
            }
            Some(_) => {}
        }
        data.extend_from_slice(img.as_raw());
    }
    let (w, h) = size.unwrap_or((0, 0));
    let t = Tensor::from_vec(data, (files.len(), h, w, 3), &Device::Cpu)?;
    ImageSet::from_nhwc(t)
}
