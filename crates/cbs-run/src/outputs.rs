//! File names of the outputs other stages read.

/// `cbs sample`: ADM-format samples (`arr_0` = uint8 `[N, H, W, C]`; points: float32 `[N, D]`).
pub const SAMPLES_NPZ: &str = "samples.npz";
/// `cbs sample`: the PNG grid of the first images.
pub const GRID_PNG: &str = "grid.png";
/// `cbs sample`: one class label per line, in sample order (class-conditional models).
pub const LABELS_TXT: &str = "labels.txt";
/// `cbs sample --individual`: `images/NNNNNN.png`.
pub const IMAGES_DIR: &str = "images";
/// `cbs sample` of a latent model, `cbs encode-latents`: unscaled latents (`latents` float32
/// `[N, C, H, W]`, `labels` int64; the `latents` data source and `cbs decode` read it).
pub const LATENTS_NPZ: &str = "latents.npz";
/// `cbs sample` of a point model: scatter plot of the first two coordinates.
pub const SCATTER_PNG: &str = "scatter.png";

/// A `cbs train-classifier` run directory.
pub mod classifier {
    /// The config with the resolved architecture.
    pub const CONFIG_FILE: &str = "classifier.toml";
    pub const WEIGHTS_FILE: &str = "model.safetensors";
    /// Test accuracy and loss; written last, so its presence marks a complete run.
    pub const SUMMARY_FILE: &str = "summary.json";
    /// The test split as uint8 `[N, H, W, C]` (the reference side of `eval-fid`).
    pub const REFERENCE_FILE: &str = "reference.npz";
    /// `real_sample` training images (seeded, unflipped): the real-data floor of FID.
    pub const TRAIN_SAMPLE_FILE: &str = "train-sample.npz";
}
