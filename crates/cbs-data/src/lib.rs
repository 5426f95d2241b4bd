//! Data loading for the `cbs` flow-matching models.
//!
//! Pure Rust, no tensor library: everything comes back as `Vec<u8>` / `Vec<f32>`
//! so the training crates decide device placement and dtype themselves.
//!
//! - [`read_idx`] parses (optionally gzipped) IDX files, the MNIST family format.
//! - [`load_fashion_mnist`] builds an [`ImageDataset`] from the four standard
//!   Fashion-MNIST files, optionally padded from 28x28 to 32x32 ([`Resize`]).
//! - [`ImageDataset::batch`] turns selected images into `[-1, 1]` NCHW floats.
//! - [`PointDataset`]: low-dimensional points (toy targets); [`Dataset`] is what trainers use.
//! - [`BatchSampler`] yields reproducible batches so a resumed run sees exactly
//!   the batches an uninterrupted run would have seen.
//!
//! Bad input never panics: every failure is a [`DataError`] naming the file.

mod dataset;
mod error;
mod fashion;
mod idx;
mod points;
mod sampler;

pub use dataset::{ImageDataset, Resize};
pub use error::{DataError, Result};
pub use fashion::{
    load_fashion_mnist, Split, FASHION_MNIST_CLASSES, FASHION_MNIST_DEFAULT_DIR,
    FASHION_MNIST_INSTALL_HINT,
};
pub use idx::{read_idx, IdxArray};
pub use points::{Dataset, PointDataset};
pub use sampler::BatchSampler;
