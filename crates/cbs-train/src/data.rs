//! The data set a training config names, loaded (and subset) for the loop.

use cbs_data::Dataset;

use crate::config::{DataConfig, DataSource, TrainConfig};
use crate::{Result, TrainError};

/// Load the configured data set (and its seeded subset).
///
/// Every image source keeps uint8 pixels and batches them as `x / 127.5 - 1`; `data_fraction`
/// keeps a subset seeded by `train.seed` (an image folder is subsampled before decoding, with
/// the same selection).
pub fn load_dataset(cfg: &TrainConfig) -> Result<Box<dyn Dataset>> {
    load_data(&cfg.data, cfg.train.seed)
}

/// [`load_dataset`] from the `[data]` table alone; `seed` selects the `data_fraction` subset.
pub fn load_data(d: &DataConfig, seed: u64) -> Result<Box<dyn Dataset>> {
    d.validate()?;
    let subset = |data: cbs_data::ImageDataset| -> Result<Box<dyn Dataset>> {
        if d.data_fraction < 1.0 {
            return Ok(Box::new(data.subset(d.data_fraction, seed)?));
        }
        Ok(Box::new(data))
    };
    // Every declared array size is checked against this before anything is allocated.
    let limit = d.memory_limit();
    match d.source {
        DataSource::FashionMnist => {
            let dir = d.dir_or_default();
            subset(cbs_data::load_fashion_mnist_limited(
                &dir, d.split, d.resize, limit,
            )?)
        }
        DataSource::Cifar10 => subset(cbs_data::load_cifar10_limited(
            d.required_dir()?,
            d.split,
            limit,
        )?),
        DataSource::Cifar100 => subset(cbs_data::load_cifar100_limited(
            d.required_dir()?,
            d.split,
            limit,
        )?),
        DataSource::ImageFolder => {
            let index =
                cbs_data::scan_image_folder(d.required_dir()?)?.subset(d.data_fraction, seed)?;
            let opts = cbs_data::FolderOptions {
                image_size: d.folder_image_size()?,
                channels: d.folder_channels()?,
                threads: 0,
            };
            Ok(Box::new(cbs_data::load_image_index_limited(
                &index, &opts, limit,
            )?))
        }
        DataSource::Npz => subset(cbs_data::load_npz_limited(
            d.npz_path()?,
            d.num_classes,
            limit,
        )?),
        DataSource::Latents => {
            let scale = d.latent_scale.unwrap_or(cbs_data::SD_VAE_SCALE);
            let data = cbs_data::load_latents_limited(d.npz_path()?, d.num_classes, scale, limit)?;
            Ok(Box::new(data.subset(d.data_fraction, seed)?))
        }
        DataSource::Gmm => {
            let path = d.gmm.as_ref().ok_or_else(|| TrainError::Invalid {
                field: "data.gmm",
                value: "(unset)".into(),
                expected: "the path of a mixture JSON (means, stds, weights) for source = \"gmm\""
                    .into(),
            })?;
            let oracle = cbs_split::GmmOracle::from_file(path).map_err(|e| TrainError::Config {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let n = ((d.num_samples as f64) * d.data_fraction).round().max(1.0);
            let pts = oracle.sample(n as usize, d.sample_seed);
            let pts = pts.into_iter().map(|v| v as f32).collect();
            Ok(Box::new(cbs_data::PointDataset::new(pts, oracle.dim())?))
        }
    }
}
