//! Valid text inputs: run configs (TOML) derived from the repository's known-good configs,
//! `splits.toml` files and Gaussian-mixture JSON, each through the project's own types and
//! serialisers so every generated file is one the readers accept before mutation.

use std::path::Path;

use cbs_run::{SplitsFile, TrainConfig};
use cbs_split::GmmSpec;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Input;

/// Known-good configs, compiled in so the fuzzer runs from any directory.
const CONFIGS: &[(&str, &str)] = &[
    (
        "quickstart.toml",
        include_str!("../../../../configs/quickstart.toml"),
    ),
    (
        "fashion-aux.toml",
        include_str!("../../../../configs/fashion-aux.toml"),
    ),
    (
        "fashion-experts.toml",
        include_str!("../../../../configs/fashion-experts.toml"),
    ),
    (
        "fashion-unet.toml",
        include_str!("../../../../configs/fashion-unet.toml"),
    ),
    (
        "ring8-mlp.toml",
        include_str!("../../../../configs/toy/ring8-mlp.toml"),
    ),
];
const RING8: &str = include_str!("../../../../configs/toy/ring8.json");

/// A run config: a known-good one, with a few values changed within their valid ranges (so
/// the mutations start from varied points), serialised by `TrainConfig::to_toml`; the raw
/// repository text now and then (comments and layout as people write them).
pub fn config(rng: &mut ChaCha8Rng, _scratch: &Path) -> Input {
    let (name, text) = CONFIGS[rng.random_range(0..CONFIGS.len())];
    if rng.random_bool(0.3) {
        return Input::file("config.toml", text.as_bytes().to_vec());
    }
    let mut cfg = TrainConfig::from_toml(text, Path::new(name)).expect("a known-good config");
    if rng.random_bool(0.5) {
        cfg.train.steps = rng.random_range(1..100_000);
    }
    if rng.random_bool(0.5) {
        cfg.train.batch_size = rng.random_range(1..=512);
    }
    if rng.random_bool(0.5) {
        cfg.train.lr = 10f64.powf(rng.random_range(-6.0..-1.0));
    }
    if rng.random_bool(0.5) {
        cfg.train.seed = rng.random();
    }
    if rng.random_bool(0.3) {
        cfg.data.data_fraction = rng.random_range(0.01..=1.0);
    }
    if rng.random_bool(0.3) {
        cfg.data.max_memory_gib = cbs_data::MemoryLimit::from_gib(rng.random_range(0.5..64.0));
    }
    debug_assert!(cfg.validate().is_ok());
    Input::file("config.toml", cfg.to_toml().into_bytes())
}

/// A `splits.toml`: `n` experts with sorted knots in (0, 1) and their bootstrap intervals.
pub fn splits(rng: &mut ChaCha8Rng, _scratch: &Path) -> Input {
    let n = rng.random_range(1..=8);
    let mut s = SplitsFile::uniform(n);
    if rng.random_bool(0.6) {
        let mut knots: Vec<f64> = (1..n).map(|_| rng.random_range(0.01..0.99)).collect();
        knots.sort_by(f64::total_cmp);
        knots.dedup();
        s.knots = knots;
        s.settings.experts = s.knots.len() + 1;
        s.settings.seed = rng.random();
        s.intervals = s
            .knots
            .iter()
            .map(|&k| cbs_run::KnotIntervalEntry {
                knot: k,
                lo: (k - 0.01).max(0.0),
                hi: (k + 0.01).min(1.0),
                confidence: 0.9,
            })
            .collect();
    }
    Input::file("splits.toml", s.to_toml().into_bytes())
}

/// A Gaussian mixture JSON: the repository's ring, or a random mixture of 1–5 components in
/// 1–4 dimensions.
pub fn gmm_json(rng: &mut ChaCha8Rng, _scratch: &Path) -> Input {
    if rng.random_bool(0.2) {
        return Input::file("mixture.json", RING8.as_bytes().to_vec());
    }
    let (k, d) = (rng.random_range(1..=5), rng.random_range(1..=4));
    let means = (0..k)
        .map(|_| (0..d).map(|_| rng.random_range(-5.0..5.0)).collect())
        .collect();
    let stds = (0..k).map(|_| rng.random_range(0.05..2.0)).collect();
    let weights = (0..k).map(|_| rng.random_range(0.1..3.0)).collect();
    let mut spec = GmmSpec::new(means, stds, weights);
    if rng.random_bool(0.3) {
        spec.grid = Some(rng.random_range(2..200));
        spec.seed = Some(rng.random());
    }
    let json = serde_json::to_string(&spec).expect("a mixture always serialises");
    Input::file("mixture.json", json.into_bytes())
}
