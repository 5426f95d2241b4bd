use cbs_core::rng::{stream, Purpose};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn words(mut r: ChaCha8Rng) -> Vec<u32> {
    (0..64).map(|_| r.next_u32()).collect()
}

fn legacy(seed: u64, stream: Option<u64>) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    if let Some(s) = stream {
        r.set_stream(s);
    }
    r
}

#[test]
fn keyed_purposes_reproduce_the_former_train_sample_classifier_streams() {
    // The constructor cbs-train used before this crate: seed ^ key, then set_stream(counter).
    let old = |seed: u64, key: u64, counter: u64| {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ key);
        r.set_stream(counter);
        r
    };
    for seed in [0u64, 1, 42, u64::MAX] {
        for c in [0u64, 1, 7, 1 << 40] {
            assert_eq!(
                words(stream(seed, Purpose::TrainStep, c)),
                words(old(seed, 0x7472_6169_6e00_0001, c))
            );
            assert_eq!(
                words(stream(seed, Purpose::SampleNoise, c)),
                words(old(seed, 0x7361_6d70_6c00_0002, c))
            );
            assert_eq!(
                words(stream(seed, Purpose::ClassifierStep, c)),
                words(old(seed, 0x636c_6173_7300_0003, c))
            );
        }
        assert_eq!(
            words(stream(seed, Purpose::ClassifierRealSample, 0)),
            words(old(seed, 0x636c_6173_7300_0003, u64::MAX))
        );
    }
}

#[test]
fn legacy_purposes_reproduce_plain_seed_from_u64() {
    for seed in [0u64, 3, 1234, u64::MAX] {
        // Plain `ChaCha8Rng::seed_from_u64(seed)`, no stream set.
        for p in [
            Purpose::DataSubset,
            Purpose::WeightInit,
            Purpose::MonitorNoise,
            Purpose::Bootstrap,
            Purpose::GmmSample,
            Purpose::ToyMetrics,
            Purpose::KidSubsets,
        ] {
            assert_eq!(
                words(stream(seed, p, 0)),
                words(legacy(seed, None)),
                "{p:?}"
            );
        }
        // `seed_from_u64(seed)` + `set_stream(n)`.
        for n in [0u64, 1, 5, 99] {
            assert_eq!(
                words(stream(seed, Purpose::DataOrder, n)),
                words(legacy(seed, Some(n)))
            );
            assert_eq!(
                words(stream(seed, Purpose::UnetDropout, n)),
                words(legacy(seed, Some(n)))
            );
            assert_eq!(
                words(stream(seed, Purpose::MonitorProbe, n)),
                words(legacy(seed, Some(n + 1)))
            );
        }
        assert_eq!(
            words(stream(seed, Purpose::TrajectoryLabels, 0)),
            words(legacy(seed, Some(u64::MAX)))
        );
    }
}

#[test]
fn distinct_keyed_purposes_give_distinct_streams() {
    let keyed: Vec<Purpose> = Purpose::ALL
        .into_iter()
        .filter(|p| !p.is_legacy())
        .collect();
    assert_eq!(keyed.len(), 8);
    for (i, &a) in keyed.iter().enumerate() {
        for &b in &keyed[i + 1..] {
            for seed in [0u64, 9] {
                assert_ne!(
                    words(stream(seed, a, 0)),
                    words(stream(seed, b, 0)),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }
    // Counters and seeds separate streams too.
    assert_ne!(
        words(stream(5, Purpose::TrainStep, 0)),
        words(stream(5, Purpose::TrainStep, 1))
    );
    assert_ne!(
        words(stream(5, Purpose::TrainStep, 0)),
        words(stream(6, Purpose::TrainStep, 0))
    );
}

#[test]
fn every_purpose_is_listed_once() {
    let mut seen = std::collections::HashSet::new();
    for p in Purpose::ALL {
        assert!(seen.insert(p));
    }
}
