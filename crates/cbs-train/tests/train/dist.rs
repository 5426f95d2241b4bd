//! Data-parallel training with the in-process collective: N ranks × B/N samples train the
//! weights 1 rank × B samples trains, resume stays exact, and a missing rank is an error.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use cbs_train::dist::{Collective, ThreadGroup};
use cbs_train::{train, Dist, TrainConfig, TrainOptions};

use super::{backbone_config, bits, toy_data};

/// Trains `cfg` with `world` ranks on threads sharing `dir`; returns rank 0's losses.
fn train_ranks(dir: &std::path::Path, cfg: &TrainConfig, world: usize, resume: bool) -> Vec<f64> {
    let data = toy_data();
    let groups = ThreadGroup::new(world, Duration::from_secs(120));
    let results: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                let data = &data;
                s.spawn(move || {
                    let opts = TrainOptions {
                        resume,
                        device: Device::Cpu,
                        dist: Dist(Arc::new(g)),
                        ..TrainOptions::default()
                    };
                    train(dir, cfg, data, &opts, &mut |_| {})
                        .unwrap()
                        .losses
                        .iter()
                        .map(|l| l.1)
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every rank saw the same (global) losses.
    assert!(results.iter().all(|r| r == &results[0]));
    results[0].clone()
}

fn final_weights(dir: &std::path::Path) -> Vec<(String, Vec<u32>)> {
    let ck = cbs_train::checkpoint::latest(dir).unwrap().unwrap();
    bits(&ck.join(cbs_train::checkpoint::MODEL_FILE))
}

/// The largest `‖a − b‖ / (‖a‖ + 1)` over tensors: relative for weights of ordinary size,
/// absolute for the near-zero ones (zero-initialised biases after a few steps), whose AdamW
/// updates normalise gradients at rounding level and so differ in direction between any two
/// reduction orders.
fn max_rel_diff(a: &[(String, Vec<u32>)], b: &[(String, Vec<u32>)]) -> f64 {
    let mut worst = 0f64;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let (mut num, mut den) = (0f64, 0f64);
        for (x, y) in va.iter().zip(vb) {
            let (x, y) = (f32::from_bits(*x) as f64, f32::from_bits(*y) as f64);
            num += (x - y) * (x - y);
            den += x * x;
        }
        worst = worst.max(num.sqrt() / (den.sqrt() + 1.0));
    }
    worst
}

fn grad_norms(dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["grad_norm"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn ranks_sharing_a_batch_train_the_weights_of_one_rank_on_every_backbone() {
    for preset in ["sit-nano-4", "jit-nano-4", "unet-mini"] {
        let cfg = backbone_config(preset, 6);
        let one = tempfile::tempdir().unwrap();
        let l1 = train_ranks(one.path(), &cfg, 1, false);
        let w1 = final_weights(one.path());
        for world in [2, 4] {
            let many = tempfile::tempdir().unwrap();
            let ln = train_ranks(many.path(), &cfg, world, false);
            for (a, b) in l1.iter().zip(&ln) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs(),
                    "{preset} × {world}: loss {a} vs {b}"
                );
            }
            let d = max_rel_diff(&w1, &final_weights(many.path()));
            assert!(d < 1e-4, "{preset} × {world}: weights differ by {d:e}");
            // Only rank 0 wrote, one line per step; the gradient norm of the averaged
            // gradients is the one-rank batch's (AdamW alone would hide a wrong scale).
            let (g1, gn) = (grad_norms(one.path()), grad_norms(many.path()));
            assert_eq!(gn.len(), 6, "{preset} × {world}");
            for (a, b) in g1.iter().zip(&gn) {
                assert!(
                    (a - b).abs() <= 1e-4 * a.abs(),
                    "{preset} × {world}: ‖g‖ {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn data_parallel_resume_is_exact() {
    let mut cfg = backbone_config("sit-nano-4", 6);
    cfg.train.checkpoint_every = 3;
    let whole = tempfile::tempdir().unwrap();
    train_ranks(whole.path(), &cfg, 2, false);
    let parts = tempfile::tempdir().unwrap();
    let mut half = cfg.clone();
    half.train.steps = 3;
    train_ranks(parts.path(), &half, 2, false);
    train_ranks(parts.path(), &cfg, 2, true);
    assert_eq!(final_weights(whole.path()), final_weights(parts.path()));
}

#[test]
fn the_thread_collective_sums_in_rank_order_and_a_missing_rank_is_an_error() {
    let groups = ThreadGroup::new(3, Duration::from_secs(30));
    let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
        let hs: Vec<_> = groups
            .iter()
            .map(|g| {
                s.spawn(move || {
                    let r = g.rank() as f32;
                    let t = Tensor::new(&[r, 10.0 * r], &Device::Cpu).unwrap();
                    let b = g.broadcast(std::slice::from_ref(&t), 2).unwrap();
                    assert_eq!(b[0].to_vec1::<f32>().unwrap(), vec![2.0, 20.0]);
                    g.all_reduce_sum(&[t]).unwrap()[0].to_vec1::<f32>().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(sums.iter().all(|s| s == &vec![3.0, 30.0]), "{sums:?}");

    let lonely = ThreadGroup::new(2, Duration::from_millis(200));
    let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    let e = lonely[0].all_reduce_sum(&[t]).unwrap_err().to_string();
    assert!(e.contains("rank 0") && e.contains("all 2 ranks"), "{e}");
}
