//! CIFAR-10 / CIFAR-100 in their official binary formats (`cifar-10-binary.tar.gz`,
//! `cifar-100-binary.tar.gz`).
//!
//! Every record is its label byte(s) followed by 3072 pixel bytes: the red plane, then green,
//! then blue, each 32×32 row-major. That is already the NCHW layout of [`ImageDataset`], so
//! records are copied as they are.
//!
//! | set | files (train / test) | record |
//! | --- | --- | --- |
//! | CIFAR-10 | `data_batch_1.bin` … `data_batch_5.bin` / `test_batch.bin` | label (0–9), pixels: 3073 bytes |
//! | CIFAR-100 | `train.bin` / `test.bin` | coarse label (0–19), fine label (0–99), pixels: 3074 bytes |
//!
//! CIFAR-100 is labelled with its 100 fine classes. `dir` may be the folder holding the files or
//! the folder the archive was extracted into (holding `cifar-10-batches-bin` /
//! `cifar-100-binary`).
//!
//! The batches' total size (what the data set will hold) is checked against the
//! [`MemoryLimit`] before any of them is read.

use std::path::{Path, PathBuf};

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::fashion::Split;
use crate::limit::{read_declared, MemoryLimit};

/// CIFAR-10 class names, indexed by label (as in `batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

/// One of the two binary layouts.
#[derive(Clone, Copy)]
struct Layout {
    name: &'static str,
    /// The folder the official archive extracts to.
    subdir: &'static str,
    train: &'static [&'static str],
    test: &'static [&'static str],
    /// Label bytes before the pixels; the label used is the last one.
    label_bytes: usize,
    /// Number of classes of each label byte, in file order.
    classes: &'static [(usize, &'static str)],
}

const CIFAR10: Layout = Layout {
    name: "CIFAR-10",
    subdir: "cifar-10-batches-bin",
    train: &[
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ],
    test: &["test_batch.bin"],
    label_bytes: 1,
    classes: &[(10, "label")],
};

const CIFAR100: Layout = Layout {
    name: "CIFAR-100",
    subdir: "cifar-100-binary",
    train: &["train.bin"],
    test: &["test.bin"],
    label_bytes: 2,
    classes: &[(20, "coarse label"), (100, "fine label")],
};

/// Loads one split of CIFAR-10 (10 classes, 3×32×32) from its binary batches in `dir`.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<ImageDataset> {
    load(&CIFAR10, dir, split, MemoryLimit::default())
}

/// [`load_cifar10`] under an explicit memory limit.
pub fn load_cifar10_limited(dir: &Path, split: Split, limit: MemoryLimit) -> Result<ImageDataset> {
    load(&CIFAR10, dir, split, limit)
}

/// Loads one split of CIFAR-100 (100 fine classes, 3×32×32) from `train.bin` / `test.bin` in
/// `dir`.
pub fn load_cifar100(dir: &Path, split: Split) -> Result<ImageDataset> {
    load(&CIFAR100, dir, split, MemoryLimit::default())
}

/// [`load_cifar100`] under an explicit memory limit.
pub fn load_cifar100_limited(dir: &Path, split: Split, limit: MemoryLimit) -> Result<ImageDataset> {
    load(&CIFAR100, dir, split, limit)
}

impl Layout {
    fn files(&self, split: Split) -> &'static [&'static str] {
        match split {
            Split::Train => self.train,
            Split::Test => self.test,
        }
    }

    fn record(&self) -> usize {
        self.label_bytes + PIXELS
    }

    fn num_classes(&self) -> usize {
        self.classes.last().map_or(0, |c| c.0)
    }

    fn hint(&self, split: Split) -> String {
        let mut hint = format!(
            "expected the {} binary version ({}) for the {} split, in this folder or in its \
             `{}` subfolder; set `data.dir` to that folder",
            self.name,
            self.files(split).join(", "),
            match split {
                Split::Train => "train",
                Split::Test => "test",
            },
            self.subdir
        );
        if self.label_bytes == 1 {
            hint.push_str(
                " (the python version, `cifar-10-batches-py` with `data_batch_1` pickles, is not \
                 read)",
            );
        }
        hint
    }
}

fn load(layout: &Layout, dir: &Path, split: Split, limit: MemoryLimit) -> Result<ImageDataset> {
    let names = layout.files(split);
    let missing = |path: PathBuf| DataError::Missing {
        path,
        hint: layout.hint(split),
    };
    if !dir.is_dir() {
        return Err(missing(dir.to_path_buf()));
    }
    // The extracted archive's folder is accepted too.
    let nested = dir.join(layout.subdir);
    let base = if !dir.join(names[0]).is_file() && nested.join(names[0]).is_file() {
        nested
    } else {
        dir.to_path_buf()
    };
    let paths: Vec<PathBuf> = names.iter().map(|n| base.join(n)).collect();
    if let Some(absent) = paths.iter().find(|p| !p.is_file()) {
        return Err(crate::error::not_a_file(absent).unwrap_or_else(|| missing(absent.clone())));
    }

    let io = |path: &PathBuf, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            missing(path.clone())
        } else {
            DataError::Io {
                path: path.clone(),
                source: e,
            }
        }
    };
    // The data set holds about what the files do (less the label bytes); each file is read
    // whole while the data set grows, so the check covers both before any byte is read.
    let mut sizes = Vec::with_capacity(paths.len());
    for path in &paths {
        sizes.push(std::fs::metadata(path).map_err(|e| io(path, e))?.len());
    }
    let total = sizes.iter().fold(0u64, |a, &b| a.saturating_add(b));
    let largest = sizes.iter().copied().max().unwrap_or(0);
    limit.check(
        &base,
        || {
            format!(
                "the {} {} split ({} file(s))",
                layout.name,
                match split {
                    Split::Train => "train",
                    Split::Test => "test",
                },
                paths.len()
            )
        },
        total.saturating_add(largest),
    )?;

    let record = layout.record();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (path, &size) in paths.iter().zip(&sizes) {
        // At most one byte past the size checked above: a file that grew since is an error
        // below (not a multiple of the record), not an unbounded read.
        let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
        let len = usize::try_from(size.saturating_add(1)).unwrap_or(usize::MAX);
        let bytes = read_declared(&mut std::io::Read::take(file, len as u64), len)
            .map_err(|e| io(path, e))?;
        let malformed = |reason: String| DataError::Malformed {
            path: path.clone(),
            reason,
        };
        if bytes.is_empty() {
            return Err(malformed(format!(
                "empty file; expected {} records of {record} bytes",
                layout.name
            )));
        }
        if bytes.len() % record != 0 {
            return Err(malformed(format!(
                "size {} bytes is not a multiple of the {record}-byte {} record ({} label \
                 byte(s) + {PIXELS} pixel bytes): truncated, or not a {} binary batch",
                bytes.len(),
                layout.name,
                layout.label_bytes,
                layout.name
            )));
        }
        images.reserve(bytes.len() / record * PIXELS);
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            for (b, &(classes, what)) in layout.classes.iter().enumerate() {
                if usize::from(rec[b]) >= classes {
                    return Err(malformed(format!(
                        "record {i}: {what} {} is out of range for {classes} classes",
                        rec[b]
                    )));
                }
            }
            labels.push(u32::from(rec[layout.label_bytes - 1]));
            images.extend_from_slice(&rec[layout.label_bytes..]);
        }
    }
    Ok(ImageDataset {
        images,
        labels,
        channels: 3,
        height: SIDE,
        width: SIDE,
        num_classes: layout.num_classes(),
    })
}
