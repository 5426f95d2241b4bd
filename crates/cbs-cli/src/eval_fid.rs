//! `cbs eval-fid`: FID, sFID, Inception Score, precision/recall and KID of samples against a
//! reference, each side images or precomputed statistics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use cbs_eval::features::{extract_all, FeatureExtractor, Features};
use cbs_eval::inception::{InceptionV3, WEIGHTS_FILE};
use cbs_eval::inputs::{read_input, Input};
use cbs_eval::metrics::{evaluate, MetricOptions, Report, Side};

use crate::cli::EvalFidArgs;
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
    net: &mut Option<Inception>,
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
        let w = weights_path(a)?;
        let m = InceptionV3::load(&w, dev).context("loading the Inception network")?;
        *net = Some(Inception(m));
    }
    let extractor = net.as_ref().expect("loaded above");
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
    let report = evaluate(&samples, &reference, &opts, FEATURE_SPACE, &dev)?;
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
