//! Folders of PNG/JPEG images (ImageNet / torchvision `ImageFolder` layout).
//!
//! - `root/<class_name>/**/*.{png,jpg,jpeg}`: one class per subfolder, class index = position
//!   of the folder name in sorted (byte-wise) order, as torchvision does; images are found
//!   recursively below each class folder.
//! - `root/*.{png,jpg,jpeg}` with no subfolders: one class, label 0 (unconditional data).
//!
//! Extensions are matched case-insensitively; other files are ignored, and so are entries whose
//! name starts with `.` (`.ipynb_checkpoints`, `.DS_Store`, …). Images directly in `root` next to
//! class subfolders are an error, since it is unclear which layout was meant. Files are read in
//! sorted path order, so the data set (and a seeded subset of it) does not depend on the order
//! the file system lists them in.
//!
//! Each image is decoded (the format is sniffed from the content, not the extension), converted
//! to RGB (grayscale repeated, alpha dropped, as PIL's `convert("RGB")`) or, with one channel,
//! to luma (PIL's `convert("L")`: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`), then centre
//! cropped to `image_size` the way ADM does ([`center_crop_arr`]). Decoding runs on several
//! threads.
//!
//! The data set keeps uint8 pixels, `channels × image_size²` bytes per image: ImageNet's 1.28M
//! training images take 15.7 GB at 64×64 and 3.9 GB at 32×32 (RGB); use `data_fraction` (which
//! subsamples before decoding) for less. That total is checked against the [`MemoryLimit`]
//! before anything is decoded, and each image's decoder may allocate at most the smaller of
//! 512 MiB and that limit (a PNG header may claim 2^31 × 2^31 pixels).

use std::path::{Path, PathBuf};

use crate::crop::center_crop_arr;
use crate::dataset::{subset_indices, ImageDataset};
use crate::error::{DataError, Result};
use crate::limit::MemoryLimit;

/// The `image` crate's own default cap on one decoder's allocations.
const MAX_DECODE_ALLOC: u64 = 512 << 20;

/// Deeper nesting than this below a class folder is taken for a symbolic-link loop.
const MAX_DEPTH: usize = 32;

/// How images of a folder become a data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderOptions {
    /// Side of the square crop, in pixels.
    pub image_size: usize,
    /// 3 (RGB) or 1 (grayscale).
    pub channels: usize,
    /// Decoding threads; 0 uses every available core.
    pub threads: usize,
}

impl FolderOptions {
    /// RGB crops of `image_size`, decoded on every core.
    pub fn new(image_size: usize) -> Self {
        Self {
            image_size,
            channels: 3,
            threads: 0,
        }
    }
}

/// The images of a folder and their labels, before decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderIndex {
    pub root: PathBuf,
    /// Class names (subfolder names) by label; `[""]` for a flat folder.
    pub classes: Vec<String>,
    /// Image files in sorted order, with `labels[i]` the class of `files[i]`.
    pub files: Vec<PathBuf>,
    pub labels: Vec<u32>,
}

impl FolderIndex {
    /// Keeps the images that [`ImageDataset::subset`] would keep after loading them all (same
    /// fraction, same seed), without decoding the others.
    pub fn subset(&self, fraction: f64, seed: u64) -> Result<FolderIndex> {
        let Some(chosen) = subset_indices(self.files.len(), fraction, seed)? else {
            return Ok(self.clone());
        };
        Ok(FolderIndex {
            root: self.root.clone(),
            classes: self.classes.clone(),
            files: chosen.iter().map(|&i| self.files[i].clone()).collect(),
            labels: chosen.iter().map(|&i| self.labels[i]).collect(),
        })
    }
}

/// Lists the images and classes of `root` (see the module documentation for the layouts).
pub fn scan_image_folder(root: &Path) -> Result<FolderIndex> {
    if !root.is_dir() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
            hint: "expected a folder of class subfolders holding PNG/JPEG images \
                   (root/<class>/*.png|jpg|jpeg), or a folder of images"
                .to_string(),
        });
    }
    let (dirs, images) = list(root)?;
    if dirs.is_empty() {
        if images.is_empty() {
            return Err(layout(
                root,
                "no images (*.png, *.jpg, *.jpeg) and no class subfolders".to_string(),
            ));
        }
        let labels = vec![0; images.len()];
        return Ok(FolderIndex {
            root: root.to_path_buf(),
            classes: vec![String::new()],
            files: images,
            labels,
        });
    }
    if let Some(stray) = images.first() {
        return Err(layout(
            root,
            format!(
                "has both class subfolders and images directly in it (e.g. {}); put every \
                 image in a class subfolder, or use a folder without subfolders for one class",
                stray.display()
            ),
        ));
    }
    if dirs.len() > u32::MAX as usize {
        return Err(layout(root, format!("{} class folders", dirs.len())));
    }
    let mut classes = Vec::with_capacity(dirs.len());
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (label, dir) in dirs.iter().enumerate() {
        let before = files.len();
        collect(dir, 0, &mut files)?;
        if files.len() == before {
            return Err(layout(
                dir,
                "class folder holds no images (*.png, *.jpg, *.jpeg); remove it or add images"
                    .to_string(),
            ));
        }
        labels.resize(files.len(), label as u32);
        classes.push(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    Ok(FolderIndex {
        root: root.to_path_buf(),
        classes,
        files,
        labels,
    })
}

/// Scans `root` and decodes every image (see the module documentation).
pub fn load_image_folder(root: &Path, opts: &FolderOptions) -> Result<ImageDataset> {
    load_image_index(&scan_image_folder(root)?, opts)
}

/// Decodes the images of an index (for instance a [`FolderIndex::subset`]) into a data set
/// whose `num_classes` is the number of classes of the whole folder, under the machine's
/// default [`MemoryLimit`].
pub fn load_image_index(index: &FolderIndex, opts: &FolderOptions) -> Result<ImageDataset> {
    load_image_index_limited(index, opts, MemoryLimit::default())
}

/// [`load_image_folder`] under an explicit memory limit.
pub fn load_image_folder_limited(
    root: &Path,
    opts: &FolderOptions,
    limit: MemoryLimit,
) -> Result<ImageDataset> {
    load_image_index_limited(&scan_image_folder(root)?, opts, limit)
}

/// [`load_image_index`] under an explicit memory limit.
pub fn load_image_index_limited(
    index: &FolderIndex,
    opts: &FolderOptions,
    limit: MemoryLimit,
) -> Result<ImageDataset> {
    if opts.channels != 1 && opts.channels != 3 {
        return Err(DataError::Invalid {
            field: "channels",
            reason: format!("must be 1 (grayscale) or 3 (RGB), got {}", opts.channels),
        });
    }
    if opts.image_size == 0 {
        return Err(DataError::Invalid {
            field: "image_size",
            reason: "must be at least 1".to_string(),
        });
    }
    if index.files.len() != index.labels.len() {
        return Err(DataError::Invalid {
            field: "labels",
            reason: format!(
                "{} labels for {} files",
                index.labels.len(),
                index.files.len()
            ),
        });
    }
    let stride = opts
        .image_size
        .checked_mul(opts.image_size)
        .and_then(|n| n.checked_mul(opts.channels))
        .ok_or_else(|| DataError::Invalid {
            field: "image_size",
            reason: format!("{} overflows usize", opts.image_size),
        })?;
    let total = stride
        .checked_mul(index.files.len())
        .ok_or_else(|| DataError::Invalid {
            field: "image_size",
            reason: format!(
                "{} images of {stride} bytes overflow usize",
                index.files.len()
            ),
        })?;
    limit.check(
        &index.root,
        || {
            format!(
                "the data set of {} images of {} × {} × {}",
                index.files.len(),
                opts.channels,
                opts.image_size,
                opts.image_size
            )
        },
        total as u64,
    )?;
    let decode_limit = limit.bytes.min(MAX_DECODE_ALLOC);
    let mut images = vec![0u8; total];
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let per_thread = index.files.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = index
            .files
            .chunks(per_thread)
            .zip(images.chunks_mut(per_thread * stride))
            .map(|(files, out)| {
                scope.spawn(move || {
                    for (path, dst) in files.iter().zip(out.chunks_exact_mut(stride)) {
                        dst.copy_from_slice(&decode_guarded(path, opts, decode_limit)?);
                    }
                    Ok(())
                })
            })
            .collect();
        // Joined in order, so the error reported is that of the first bad file in sorted
        // order among the chunks that failed.
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                Err(DataError::Invalid {
                    field: "threads",
                    reason: "an image decoding thread panicked".to_string(),
                })
            })
        })
    })?;
    Ok(ImageDataset {
        images,
        labels: index.labels.clone(),
        channels: opts.channels,
        height: opts.image_size,
        width: opts.image_size,
        num_classes: index.classes.len(),
    })
}

/// [`decode`], with a decoder panic (a bug on some malformed input) turned into an error
/// naming the file.
fn decode_guarded(path: &Path, opts: &FolderOptions, max_alloc: u64) -> Result<Vec<u8>> {
    std::panic::catch_unwind(|| decode(path, opts, max_alloc)).unwrap_or_else(|_| {
        Err(malformed(
            path,
            "the image decoder failed on this file (corrupt image?)".to_string(),
        ))
    })
}

/// One file → `channels × size × size` uint8, CHW.
fn decode(path: &Path, opts: &FolderOptions, max_alloc: u64) -> Result<Vec<u8>> {
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| io_error(path, e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| {
        malformed(
            path,
            format!(
                "not a readable PNG/JPEG image: {}",
                e.to_string().trim_end()
            ),
        )
    })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let hwc = if opts.channels == 3 {
        img.into_rgb8().into_raw()
    } else {
        match img {
            image::DynamicImage::ImageLuma8(g) => g.into_raw(),
            image::DynamicImage::ImageLumaA8(g) => {
                g.into_raw().chunks_exact(2).map(|p| p[0]).collect()
            }
            other => other
                .into_rgb8()
                .into_raw()
                .chunks_exact(3)
                .map(luma)
                .collect(),
        }
    };
    let c = opts.channels;
    let crop = center_crop_arr(&hwc, w, h, c, opts.image_size)
        .map_err(|e| malformed(path, format!("{w}×{h} image: {e}")))?;
    if c == 1 {
        return Ok(crop);
    }
    let plane = opts.image_size * opts.image_size;
    let mut chw = vec![0u8; crop.len()];
    for (i, px) in crop.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            chw[ch * plane + i] = v;
        }
    }
    Ok(chw)
}

/// PIL's RGB → L (ITU-R 601-2 luma in 16-bit fixed point).
fn luma(rgb: &[u8]) -> u8 {
    let l = u32::from(rgb[0]) * 19595 + u32::from(rgb[1]) * 38470 + u32::from(rgb[2]) * 7471;
    ((l + 0x8000) >> 16) as u8
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The PNG/JPEG files directly in `dir` (not recursive), in sorted path order: extensions
/// `png`, `jpg`, `jpeg` in any case, hidden entries skipped, links followed. The one lister for
/// image folders (training data sets and `cbs eval-fid` inputs alike).
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(list(dir)?.1)
}

/// Sorted (subfolders, image files) of `dir`, hidden entries skipped, links followed.
fn list(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    let mut dirs = Vec::new();
    let mut images = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symbolic links; a dangling link is skipped like a non-image.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            dirs.push(path);
        } else if meta.is_file() && is_image(&path) {
            images.push(path);
        }
    }
    dirs.sort();
    images.sort();
    Ok((dirs, images))
}

/// Appends the images below `dir` in sorted order: a folder's own files, then its subfolders.
fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(layout(
            dir,
            format!("nested more than {MAX_DEPTH} folders deep (a symbolic-link loop?)"),
        ));
    }
    let (dirs, images) = list(dir)?;
    out.extend(images);
    for d in &dirs {
        collect(d, depth + 1, out)?;
    }
    Ok(())
}

fn malformed(path: &Path, reason: String) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        reason,
    }
}

fn layout(path: &Path, reason: String) -> DataError {
    DataError::Layout {
        path: path.to_path_buf(),
        reason,
    }
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}
