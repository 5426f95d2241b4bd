//! `cbs eval-fid`: FID, sFID, Inception Score, precision/recall and KID of samples against a
//! reference, each side images or precomputed statistics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use cbs_eval::features::{extract_all, FeatureExtractor, Features};
use cbs_eval::inception::{InceptionV3, WEIGHTS_FILE};
use cbs_eval::inputs::{read_input, Input};
use cbs_eval::metrics::{evaluate, MetricOptions, Report, Side};

use crate::cli::{EvalFidArgs, FeatureSpace, TrainClassifierArgs};
use crate::progress::bar;

/// Environment variable naming the Inception weights when --inception is absent.
const WEIGHTS_ENV: &str = "CBS_INCEPTION";
const FEATURE_SPACE: &str = "Inception-v3 pool3 (pytorch-fid FID weights)";

/// pytorch-fid's network as a [`FeatureExtractor`].
struct Inception(InceptionV3);

impl FeatureExtractor for Inception {
    fn extract(&self, images: &Tensor) -> cbs_eval::Result<Features> {
        let (pool, logits, spatial) = self.0.forward_images01(images)?;
        Ok(Features {
            pool,
            logits: Some(logits),
            spatial: Some(spatial),
        })
    }

    fn name(&self) -> String {
        FEATURE_SPACE.to_string()
    }
}

/// A `cbs train-classifier` network as a [`FeatureExtractor`]: penultimate-layer features
/// and class logits (so the "Inception Score" is computed with its classes); no spatial
/// features, hence no sFID.
struct ClassifierFeatures {
    net: cbs_models::classifier::Classifier,
    run: PathBuf,
}

impl FeatureExtractor for ClassifierFeatures {
    fn extract(&self, images: &Tensor) -> cbs_eval::Result<Features> {
        let cfg = self.net.config();
        let (_, _, h, w) = images.dims4()?;
        if (h, w) != (cfg.image_size, cfg.image_size) {
            return Err(cbs_eval::EvalError::Invalid(format!(
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
        format!(
            "classifier penultimate layer ({}); NOT comparable with Inception FID",
            self.run.display()
        )
    }
}

fn load_extractor(a: &EvalFidArgs, dev: &Device) -> Result<Box<dyn FeatureExtractor>> {
    Ok(match &a.features {
        FeatureSpace::Inception => {
            let w = weights_path(a)?;
            let m = InceptionV3::load(&w, dev).context("loading the Inception network")?;
            Box::new(Inception(m))
        }
        FeatureSpace::Classifier(run) => {
            let net = cbs_train::classifier::load_classifier(run, dev)
                .context("loading the classifier (--features classifier:RUN_DIR)")?;
            Box::new(ClassifierFeatures {
                net,
                run: run.clone(),
            })
        }
    })
}

pub fn train_classifier(a: TrainClassifierArgs) -> Result<()> {
    use cbs_train::classifier::{ClassifierRunConfig, REFERENCE_FILE};
    let mut cfg = match &a.config {
        Some(p) => ClassifierRunConfig::from_file(p)?,
        None => ClassifierRunConfig {
            data: Default::default(),
            classifier: Default::default(),
        },
    };
    if let Some(s) = a.steps {
        cfg.classifier.steps = s;
    }
    if let Some(s) = a.seed {
        cfg.classifier.seed = s;
    }
    if let Some(n) = a.real_sample {
        cfg.classifier.real_sample = n;
    }
    if let Some(d) = &a.data_dir {
        cfg.data.dir = Some(d.clone());
    }
    let dev = crate::commands::device(&a.device)?;
    let pb = bar(cfg.classifier.steps, "steps");
    let summary =
        cbs_train::classifier::train_classifier(&cfg, &a.out, &dev, &mut |step, _, loss| {
            pb.set_position(step);
            if step % 10 == 0 {
                pb.set_message(format!("loss {loss:.4}"));
            }
        });
    pb.finish_and_clear();
    let summary = summary?;
    println!(
        "classifier: {} steps in {:.0} s, final loss {:.4}, test accuracy {:.2}% ({} images); \
         {}-d features",
        summary.steps,
        summary.seconds,
        summary.final_loss,
        100.0 * summary.test_accuracy,
        summary.test_images,
        summary.feature_dim
    );
    println!(
        "use: cbs eval-fid SAMPLES {} --features classifier:{}\n(real-data floor: the same \
         command with SAMPLES = {})",
        a.out.join(REFERENCE_FILE).display(),
        a.out.display(),
        a.out
            .join(cbs_train::classifier::TRAIN_SAMPLE_FILE)
            .display()
    );
    Ok(())
}

fn weights_path(a: &EvalFidArgs) -> Result<PathBuf> {
    let path = match (&a.inception, std::env::var_os(WEIGHTS_ENV)) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) if !p.is_empty() => PathBuf::from(p),
        _ => bail!(
            "images need the FID Inception network, and no weights were given: download \
             {WEIGHTS_FILE} (pytorch-fid's FID Inception weights, \
             https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}) \
             or use a safetensors copy of it, and pass it with --inception PATH or the \
             {WEIGHTS_ENV} environment variable. (Two statistics files need no weights.)"
        ),
    };
    if !path.is_file() {
        bail!(
            "{}: Inception weights not found (expected {WEIGHTS_FILE}, pytorch-fid's FID \
             Inception weights, or a safetensors copy)",
            path.display()
        );
    }
    Ok(path)
}

/// Reads one side and, for images, extracts its features (loading the network on first use).
fn side(
    path: &Path,
    what: &str,
    a: &EvalFidArgs,
    net: &mut Option<Box<dyn FeatureExtractor>>,
    dev: &Device,
) -> Result<Side> {
    let input = read_input(path).with_context(|| format!("reading {what}"))?;
    let images = match input {
        Input::Stats { pool, spatial } => {
            eprintln!(
                "{what}: statistics from {} ({}-dimensional)",
                path.display(),
                pool.dim()
            );
            return Ok(Side::from_stats(pool, spatial));
        }
        Input::Images(images) => images,
    };
    if net.is_none() {
        *net = Some(load_extractor(a, dev)?);
    }
    let extractor = net.as_deref().expect("loaded above");
    let (h, w) = images.size();
    eprintln!(
        "{what}: {} images of {h}×{w} from {}",
        images.len(),
        path.display()
    );
    let batches = images.len().div_ceil(a.batch.max(1));
    let pb = bar(batches as u64, "batches");
    pb.set_message(what.to_string());
    let features = extract_all(extractor, &images, a.batch, dev, &mut |done, _| {
        pb.set_position(done as u64)
    });
    pb.finish_and_clear();
    drop(images);
    let features = features.with_context(|| format!("extracting features of {what}"))?;
    Ok(Side::from_features(features, dev)?)
}

pub fn eval_fid(a: EvalFidArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    for p in std::iter::once(&a.samples).chain(a.reference.as_ref()) {
        if !p.exists() {
            bail!(
                "{}: not found; expected {}",
                p.display(),
                cbs_eval::inputs::EXPECTED
            );
        }
    }
    let dev = crate::commands::device(&a.device)?;
    let mut net = None;
    let samples = side(&a.samples, "samples", &a, &mut net, &dev)?;
    if let Some(out) = &a.save_stats {
        cbs_eval::fid::save_stats(out, &samples.pool, samples.spatial.as_ref())?;
        eprintln!("wrote the statistics of the samples to {}", out.display());
    }
    let Some(reference) = &a.reference else {
        return Ok(());
    };
    let reference = side(reference, "reference", &a, &mut net, &dev)?;
    let opts = MetricOptions {
        kid_subsets: a.kid_subsets,
        kid_subset_size: a.kid_subset_size,
        seed: a.seed,
        ..MetricOptions::default()
    };
    let space = match (&net, &a.features) {
        (Some(n), _) => n.name(),
        (None, FeatureSpace::Inception) => FEATURE_SPACE.to_string(),
        (None, FeatureSpace::Classifier(run)) => format!(
            "classifier penultimate layer ({}); NOT comparable with Inception FID",
            run.display()
        ),
    };
    let report = evaluate(&samples, &reference, &opts, &space, &dev)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn count(n: Option<usize>) -> String {
    n.map_or_else(|| "statistics".to_string(), |n| format!("{n} images"))
}

fn print_report(r: &Report) {
    println!(
        "samples: {}, reference: {}; features: {} ({}-d)",
        count(r.num_samples),
        count(r.num_reference),
        r.features,
        r.feature_dim
    );
    println!("FID        {:.4}", r.fid);
    if let Some(s) = r.sfid {
        println!("sFID       {s:.4}");
    }
    if let Some(is) = r.inception_score {
        println!("IS         {:.4} ± {:.4}", is.mean, is.std);
    }
    if let (Some(p), Some(rc)) = (r.precision, r.recall) {
        println!("precision  {p:.4}");
        println!("recall     {rc:.4}");
    }
    if let (Some(k), Some(s)) = (r.kid, r.kid_std) {
        println!("KID        {k:.6} ± {s:.6}");
    }
}
