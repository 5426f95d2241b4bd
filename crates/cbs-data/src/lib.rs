//! Data loading for the `cbs` flow-matching models.
//!
//! Pure Rust, no tensor library: everything comes back as `Vec<u8>` / `Vec<f32>`
//! so the training crates decide device placement and dtype themselves.
//!
//! - [`read_idx`] parses (optionally gzipped) IDX files, the MNIST family format.
//! - [`load_fashion_mnist`] builds an [`ImageDataset`] from the four standard
//!   Fashion-MNIST files, optionally padded from 28x28 to 32x32 ([`Resize`]).
//! - [`load_cifar10`] / [`load_cifar100`]: the official binary batches (3×32×32).
//! - [`load_image_folder`]: `root/<class>/*.png|jpg` (or a flat folder, one class), each image
//!   centre-cropped the ADM way ([`center_crop_arr`], Pillow's BOX/BICUBIC reproduced exactly).
//! - [`load_npz`]: ADM's `.npz` format (`arr_0` = uint8 `[N, H, W, C]`, labels in `arr_1` or
//!   `labels`); [`NpzArchive`] reads any `.npz` / `.npy` array.
//! - [`ImageDataset::batch`] turns selected images into `[-1, 1]` NCHW floats.
//! - [`PointDataset`]: low-dimensional points (toy targets); [`Dataset`] is what trainers use.
//! - [`BatchSampler`] yields reproducible batches so a resumed run sees exactly
//!   the batches an uninterrupted run would have seen.
//!
//! Every image source stores uint8 NCHW pixels (1 byte per channel and pixel in memory);
//! [`ImageDataset::batch`] scales them as `x / 127.5 - 1`, ADM's and SiT's convention.
//!
//! Bad input never panics: every failure is a [`DataError`] naming the file. Sizes a file
//! declares are checked against a [`MemoryLimit`] before anything of that size is allocated
//! or inflated (the `*_limited` readers take one; the others use the machine default).

mod cifar;
mod crop;
mod dataset;
mod error;
mod fashion;
mod folder;
mod idx;
mod latents;
mod limit;
mod npz;
mod points;
mod sampler;

pub use cifar::{
    load_cifar10, load_cifar100, load_cifar100_limited, load_cifar10_limited, CIFAR10_CLASSES,
};
pub use crop::{center_crop_arr, resize, Filter};
pub use dataset::{ImageDataset, Resize};
pub use error::{DataError, Result};
pub use fashion::{
    load_fashion_mnist, load_fashion_mnist_limited, Split, FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEFAULT_DIR, FASHION_MNIST_INSTALL_HINT,
};
pub use folder::{
    list_images, load_image_folder, load_image_folder_limited, load_image_index,
    load_image_index_limited, scan_image_folder, FolderIndex, FolderOptions,
};
pub use idx::{read_idx, read_idx_limited, IdxArray};
pub use latents::{
    load_latents, load_latents_limited, LatentDataset, LatentWriter, LABELS_ARRAY, LATENTS_ARRAY,
    LATENTS_FLIP_ARRAY, SD_VAE_SCALE,
};
pub use limit::MemoryLimit;
pub use npz::{
    load_npz, load_npz_limited, read_npy, read_npy_limited, write_npy, write_npz, NpyArray,
    NpyDtype, NpyHeader, NpzArchive, NpzStreamWriter, NPZ_MAX_IMPLICIT_CLASSES,
};
pub use points::{Dataset, PointDataset};
pub use sampler::BatchSampler;
