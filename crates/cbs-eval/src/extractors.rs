//! The feature spaces `cbs eval-fid` offers, as [`FeatureExtractor`]s: pytorch-fid's
//! Inception-v3 and the penultimate layer of a `cbs train-classifier` network.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use cbs_models::classifier::Classifier;

use crate::features::{FeatureExtractor, Features};
use crate::inception::InceptionV3;
use crate::{EvalError, Result};

/// How reports name the Inception feature space.
pub const INCEPTION_SPACE: &str = "Inception-v3 pool3 (pytorch-fid FID weights)";

/// How reports name the feature space of the classifier run `run`.
pub fn classifier_space(run: &Path) -> String {
    format!(
        "classifier penultimate layer ({}); NOT comparable with Inception FID",
        run.display()
    )
}

/// pytorch-fid's network: pool3 features, logits (Inception Score) and spatial features (sFID).
pub struct InceptionFeatures(pub InceptionV3);

impl FeatureExtractor for InceptionFeatures {
    fn extract(&self, images: &Tensor) -> Result<Features> {
        let (pool, logits, spatial) = self.0.forward_images01(images)?;
        Ok(Features {
            pool,
            logits: Some(logits),
            spatial: Some(spatial),
        })
    }

    fn name(&self) -> String {
        INCEPTION_SPACE.to_string()
    }
}

/// A `cbs train-classifier` network: penultimate-layer features and class logits (so the
/// "Inception Score" is computed with its classes); no spatial features, hence no sFID.
pub struct ClassifierFeatures {
    net: Classifier,
    run: PathBuf,
}

impl ClassifierFeatures {
    /// `net` loaded from the run directory `run` (named in reports and errors).
    pub fn new(net: Classifier, run: &Path) -> Self {
        Self {
            net,
            run: run.to_path_buf(),
        }
    }
}

impl FeatureExtractor for ClassifierFeatures {
    fn extract(&self, images: &Tensor) -> Result<Features> {
        let cfg = self.net.config();
        let (_, _, h, w) = images.dims4()?;
        if (h, w) != (cfg.image_size, cfg.image_size) {
            return Err(EvalError::Invalid(format!(
                "images are {h}×{w} but the classifier of {} was trained on {s}×{s}",
                self.run.display(),
                s = cfg.image_size
            )));
        }
        // Grayscale data: eval-fid made the images RGB by repetition; the mean undoes it.
        let x = match cfg.in_channels {
            1 => images.mean_keepdim(1)?,
            _ => images.clone(),
        };
        let x = ((x * 2.0)? - 1.0)?; // [0, 1] → the training scale [-1, 1]
        let out = self.net.forward(&x)?;
        // The weights are variables: without detaching, each batch's features would keep its
        // whole forward graph (every activation) alive until the end of the extraction.
        Ok(Features {
            pool: out.features.detach(),
            logits: Some(out.logits.detach()),
            spatial: None,
        })
    }

    fn name(&self) -> String {
        classifier_space(&self.run)
    }
}
