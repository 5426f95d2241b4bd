//! `cbs eval-fid`: FID, sFID, Inception Score, precision/recall and KID of samples against a
//! reference, each side images or precomputed statistics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use cbs_eval::extractors::{
    classifier_space, ClassifierFeatures, InceptionFeatures, INCEPTION_SPACE,
};
use cbs_eval::features::{extract_all, FeatureExtractor};
use cbs_eval::inception::{InceptionV3, WEIGHTS_FILE};
use cbs_eval::inputs::{read_input, Input};
use cbs_eval::metrics::{evaluate, MetricOptions, Report, Side};

use crate::cli::{EvalFidArgs, FeatureSpace, TrainClassifierArgs};
use crate::progress::bar;

/// Environment variable naming the Inception weights when --inception is absent.
const WEIGHTS_ENV: &str = "CBS_INCEPTION";

fn load_extractor(a: &EvalFidArgs, dev: &Device) -> Result<Box<dyn FeatureExtractor>> {
    Ok(match &a.features {
        FeatureSpace::Inception => {
            let w = weights_path(a)?;
            let m = InceptionV3::load(&w, dev).context("loading the Inception network")?;
            Box::new(InceptionFeatures(m))
        }
        FeatureSpace::Classifier(run) => {
            let net = cbs_run::classifier::load_classifier(run, dev)
                .context("loading the classifier (--features classifier:RUN_DIR)")?;
            Box::new(ClassifierFeatures::new(net, run))
        }
    })
}

pub fn train_classifier(a: TrainClassifierArgs) -> Result<()> {
    use cbs_train::classifier::{
        ClassifierOverrides, ClassifierRunConfig, REFERENCE_FILE, TRAIN_SAMPLE_FILE,
    };
    let cfg = ClassifierRunConfig::resolve(
        a.config.as_deref(),
        &ClassifierOverrides {
            steps: a.steps,
            seed: a.seed,
            real_sample: a.real_sample,
            data_dir: a.data_dir.clone(),
        },
    )?;
    let dev = a.device.open()?;
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
        a.out.join(TRAIN_SAMPLE_FILE).display()
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
    let dev = a.device.open()?;
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
        (None, FeatureSpace::Inception) => INCEPTION_SPACE.to_string(),
        (None, FeatureSpace::Classifier(run)) => classifier_space(run),
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
