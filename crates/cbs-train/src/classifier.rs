//! Training the offline feature network of `cbs train-classifier`: a small CNN
//! ([`cbs_models::classifier`]) on the run's data set, whose penultimate layer
//! `cbs eval-fid --features classifier:RUN` uses as its feature space.
//!
//! A run directory holds `classifier.toml` (the config with the resolved architecture),
//! `model.safetensors`, `summary.json` (test accuracy, loss), `reference.npz` (the test
//! split as uint8 `[N, H, W, C]`, the natural reference side for `eval-fid`) and
//! `train-sample.npz` (1000 training images: real data scored the same way). Every file is
//! written atomically; a run is short (minutes), so an interrupted run is simply restarted.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use cbs_data::{BatchSampler, Dataset, Split};
use cbs_models::classifier::{Classifier, ClassifierConfig};
use cbs_models::{common::init, weights, ModelSpec};
use rand::Rng;
use serde::{Deserialize, Serialize};

use cbs_run::classifier::sorted_vars;
pub use cbs_run::classifier::{
    load_classifier, ClassifierOverrides, ClassifierRunConfig, ClassifierSection,
};

use crate::config::{TrainConfig, TrainSection};
use crate::optim::{AdamW, AdamWParams};
use crate::{io_err, Result, TrainError};
use cbs_core::atomic::write_text;
use cbs_core::rng::{self, Purpose};

/// The data loader takes a training config; only its `[data]` and seed matter here.
fn as_train_config(cfg: &ClassifierRunConfig, split: Split) -> TrainConfig {
    let mut data = cfg.data.clone();
    data.split = split;
    if split == Split::Test {
        data.data_fraction = 1.0;
    }
    TrainConfig {
        model: ModelSpec::new("classifier"),
        data,
        train: TrainSection {
            seed: cfg.classifier.seed,
            ..TrainSection::default()
        },
    }
}

/// After every step: `(step, total, loss)`.
pub type ClassifierProgress<'a> = &'a mut dyn FnMut(u64, u64, f64);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassifierSummary {
    pub steps: u64,
    /// Mean cross-entropy of the last 50 steps.
    pub final_loss: f64,
    /// Top-1 accuracy on the test split (no flips).
    pub test_accuracy: f64,
    pub test_images: usize,
    pub seconds: f64,
    pub feature_dim: usize,
}

/// File names inside a classifier run directory (owned by `cbs-run`).
pub use cbs_run::outputs::classifier::{
    CONFIG_FILE, REFERENCE_FILE, SUMMARY_FILE, TRAIN_SAMPLE_FILE, WEIGHTS_FILE,
};

/// Train the classifier of `cfg` and write the run to `out`.
pub fn train_classifier(
    cfg: &ClassifierRunConfig,
    out: &Path,
    device: &Device,
    progress: ClassifierProgress,
) -> Result<ClassifierSummary> {
    cfg.validate()?;
    if out.join(WEIGHTS_FILE).exists() {
        return Err(TrainError::Checkpoint {
            path: out.to_path_buf(),
            message: "already holds a trained classifier; choose another --out or delete it".into(),
        });
    }
    let train_data = crate::load_dataset(&as_train_config(cfg, Split::Train))?;
    let test_data = crate::load_dataset(&as_train_config(cfg, Split::Test))?;
    let &[c, h, w] = train_data.sample_shape().as_slice() else {
        return Err(TrainError::Invalid {
            field: "data.source",
            value: format!("samples of shape {:?}", train_data.sample_shape()),
            expected: "an image data set ([C, H, W] samples)".into(),
        });
    };
    if h != w {
        return Err(TrainError::Invalid {
            field: "data.source",
            value: format!("{h}×{w} images"),
            expected: "square images".into(),
        });
    }
    let cc = &cfg.classifier;
    let arch = ClassifierConfig {
        widths: cc.widths.clone(),
        feature_dim: cc.feature_dim,
        ..ClassifierConfig::small(c, h, train_data.num_classes())
    };
    arch.validate()?;

    let varmap = VarMap::new();
    let net = Classifier::new(&arch, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let vars = sorted_vars(&varmap);
    init::init_xavier(&vars, cc.seed)?;
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: cc.weight_decay,
        },
    )?;

    let started = Instant::now();
    let mut sampler = BatchSampler::new(train_data.len(), cc.batch_size, cc.seed)?;
    let b = cc.batch_size;
    let mut recent = std::collections::VecDeque::new();
    for s in 0..cc.steps {
        let mut rng = rng::stream(cc.seed, Purpose::ClassifierStep, s);
        let idx = sampler.indices(s);
        let flips: Vec<bool> = (0..b)
            .map(|_| {
                let f = rng.random::<bool>(); // always drawn: the stream stays aligned
                f && cfg.data.hflip
            })
            .collect();
        let (pixels, labels) = train_data.batch(&idx, &flips)?;
        let x = Tensor::from_vec(pixels, (b, c, h, w), device)?;
        let y = Tensor::from_vec(labels, b, device)?;
        let logits = net.forward(&x)?.logits;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let loss_val = loss.to_scalar::<f32>()? as f64;
        if !loss_val.is_finite() {
            return Err(TrainError::NonFinite {
                step: s + 1,
                loss: loss_val,
                grad_norm: None,
                last_checkpoint: None,
            });
        }
        // Cosine decay to zero: a short run still ends at a well-settled point.
        let lr = cc.lr * 0.5 * (1.0 + (std::f64::consts::PI * s as f64 / cc.steps as f64).cos());
        opt.step(&loss.backward()?, lr, 1.0)?;
        recent.push_back(loss_val);
        if recent.len() > 50 {
            recent.pop_front();
        }
        progress(s + 1, cc.steps, loss_val);
    }

    let (correct, total) = accuracy(&net, test_data.as_ref(), device)?;
    let summary = ClassifierSummary {
        steps: cc.steps,
        final_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
        test_accuracy: correct as f64 / total.max(1) as f64,
        test_images: total,
        seconds: started.elapsed().as_secs_f64(),
        feature_dim: arch.feature_dim,
    };

    cbs_core::atomic::create_dir_all(out).map_err(io_err(out))?;
    let all: Vec<usize> = (0..test_data.len()).collect();
    write_images(&out.join(REFERENCE_FILE), test_data.as_ref(), &all)?;
    // A same-size draw of real training images: its FID against the reference is the floor
    // that samples of that size can reach in this feature space.
    let mut rng = rng::stream(cc.seed, Purpose::ClassifierRealSample, 0);
    let k = cc.real_sample.min(train_data.len());
    let mut pick = rand::seq::index::sample(&mut rng, train_data.len(), k).into_vec();
    pick.sort_unstable();
    write_images(&out.join(TRAIN_SAMPLE_FILE), train_data.as_ref(), &pick)?;
    let state: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    weights::save_safetensors(&out.join(WEIGHTS_FILE), &state)?;
    let mut saved = cfg.clone();
    saved.classifier.arch = Some(arch);
    let text = toml::to_string_pretty(&saved).expect("a classifier config always serialises");
    write_text(&out.join(CONFIG_FILE), &text)?;
    let json = serde_json::to_string_pretty(&summary).expect("a summary always serialises");
    // Written last: its presence marks a complete run.
    write_text(&out.join(SUMMARY_FILE), &json)?;
    Ok(summary)
}

/// Correct predictions and count over a whole data set.
pub fn accuracy(net: &Classifier, data: &dyn Dataset, device: &Device) -> Result<(usize, usize)> {
    let shape = data.sample_shape();
    let mut correct = 0usize;
    for start in (0..data.len()).step_by(256) {
        let idx: Vec<usize> = (start..(start + 256).min(data.len())).collect();
        let (pixels, labels) = data.batch(&idx, &vec![false; idx.len()])?;
        let dims: Vec<usize> = std::iter::once(idx.len()).chain(shape.clone()).collect();
        let x = Tensor::from_vec(pixels, dims.as_slice(), device)?;
        let pred = net
            .forward(&x)?
            .logits
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        correct += pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
    }
    Ok((correct, data.len()))
}

/// Images `indices` of the data set as uint8 `[N, H, W, C]` in `arr_0` (exact: pixels are
/// `k / 127.5 − 1`).
fn write_images(path: &Path, data: &dyn Dataset, indices: &[usize]) -> Result<()> {
    let &[c, h, w] = data.sample_shape().as_slice() else {
        return Err(TrainError::Invalid {
            field: "data.source",
            value: format!("samples of shape {:?}", data.sample_shape()),
            expected: "an image data set ([C, H, W] samples)".into(),
        });
    };
    let (pixels, _) = data.batch(indices, &vec![false; indices.len()])?;
    let bytes: Vec<u8> = pixels
        .iter()
        .map(|&v| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8)
        .collect();
    let t = Tensor::from_vec(bytes, (indices.len(), c, h, w), &Device::Cpu)?
        .permute((0, 2, 3, 1))? // [N, H, W, C]
        .flatten_all()?
        .to_vec1::<u8>()?;
    let a = cbs_data::NpyArray::from_u8(&[indices.len(), h, w, c], t).map_err(|e| {
        TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: e.reason(),
        }
    })?;
    cbs_core::atomic::write_with_path(path, |tmp| cbs_data::write_npz(tmp, &[("arr_0", &a)]))?;
    Ok(())
}
