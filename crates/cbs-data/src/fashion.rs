//! Fashion-MNIST loader.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{ImageDataset, Resize};
use crate::error::{DataError, Result};
use crate::idx::{read_idx_limited, IdxArray};
use crate::limit::MemoryLimit;

/// Where the Debian `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Human-readable class names, indexed by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Hint attached to [`DataError::Missing`] when Fashion-MNIST is absent.
pub const FASHION_MNIST_INSTALL_HINT: &str = "Fashion-MNIST not found; install with \
`apt-get install -y dataset-fashion-mnist` (Debian package; puts the files under \
/usr/share/datasets/fashion-mnist) or set `data.dir` in the config";

const SIDE: usize = 28;

/// Which half of the dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    #[default]
    Train,
    Test,
}

impl Split {
    fn file_stems(self) -> (&'static str, &'static str) {
        match self {
            Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

/// Loads one split of Fashion-MNIST from `dir` (10 classes, 1 channel).
///
/// Each file is looked up as `<name>.gz` first, then as `<name>`, because
/// some mirrors ship the files already decompressed. Only the requested
/// split's two files need to be present.
pub fn load_fashion_mnist(dir: &Path, split: Split, resize: Resize) -> Result<ImageDataset> {
    load_fashion_mnist_limited(dir, split, resize, MemoryLimit::default())
}

/// [`load_fashion_mnist`] with each IDX payload checked against `limit`.
pub fn load_fashion_mnist_limited(
    dir: &Path,
    split: Split,
    resize: Resize,
    limit: MemoryLimit,
) -> Result<ImageDataset> {
    if !dir.is_dir() {
        return Err(missing(dir.to_path_buf()));
    }
    let (image_stem, label_stem) = split.file_stems();
    let image_path = locate(dir, image_stem)?;
    let label_path = locate(dir, label_stem)?;
    let images = read_idx_limited(&image_path, limit).map_err(with_hint)?;
    let labels = read_idx_limited(&label_path, limit).map_err(with_hint)?;
    let dataset = assemble(&image_path, images, &label_path, labels, 10)?;
    dataset.padded(resize.border())
}

fn locate(dir: &Path, stem: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = dir.join(stem);
    if raw.is_file() {
        return Ok(raw);
    }
    // Something is there but cannot be read as a file: say what, not "install the package".
    if let Some(e) = crate::error::not_a_file(&gz).or_else(|| crate::error::not_a_file(&raw)) {
        return Err(e);
    }
    Err(missing(gz))
}

fn missing(path: PathBuf) -> DataError {
    DataError::Missing {
        path,
        hint: FASHION_MNIST_INSTALL_HINT.to_string(),
    }
}

/// A file that vanished between `locate` and `read_idx` should still tell
/// the user how to install the data.
fn with_hint(e: DataError) -> DataError {
    match e {
        DataError::Missing { path, .. } => missing(path),
        other => other,
    }
}

/// Validates an images/labels pair and combines them into a dataset.
fn assemble(
    image_path: &Path,
    images: IdxArray,
    label_path: &Path,
    labels: IdxArray,
    num_classes: usize,
) -> Result<ImageDataset> {
    let malformed = |path: &Path, reason: String| DataError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let n = match images.dims.as_slice() {
        &[n, SIDE, SIDE] => n,
        dims => {
            return Err(malformed(
                image_path,
                format!("images must have dimensions [n, {SIDE}, {SIDE}], found {dims:?}"),
            ))
        }
    };
    let n_labels = match labels.dims.as_slice() {
        &[n] => n,
        dims => {
            return Err(malformed(
                label_path,
                format!("labels must have dimensions [n], found {dims:?}"),
            ))
        }
    };
    if n != n_labels {
        return Err(malformed(
            label_path,
            format!(
                "{n_labels} labels but {} holds {n} images",
                image_path.display()
            ),
        ));
    }
    if n == 0 {
        return Err(malformed(image_path, "contains no images".to_string()));
    }
    if let Some((i, &l)) = labels
        .data
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= num_classes)
    {
        return Err(malformed(
            label_path,
            format!("label {l} at index {i} is out of range for {num_classes} classes"),
        ));
    }
    Ok(ImageDataset {
        images: images.data,
        labels: labels.data.iter().map(|&l| u32::from(l)).collect(),
        channels: 1,
        height: SIDE,
        width: SIDE,
        num_classes,
    })
}
