//! Data-parallel training with the in-process collective: N ranks × B/N samples train the
//! weights 1 rank × B samples trains, resume stays exact, and a missing rank is an error.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use cbs_train::dist::{
    bucket_ranges, check_same_run, Buckets, Collective, ProcessGroup, TcpGroup, ThreadGroup,
};
use cbs_train::{train, Dist, TrainConfig, TrainOptions};

use super::{backbone_config, bits, toy_data};

/// The collective of each rank: threads of one group, or TCP connections on a port.
#[derive(Clone, Copy)]
enum Kind {
    Threads,
    Tcp,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    l.local_addr().unwrap().port()
}

fn tcp_group(rank: usize, world: usize, port: u16, timeout: Duration) -> ProcessGroup {
    ProcessGroup {
        rank,
        world_size: world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        timeout,
    }
}

/// Trains `cfg` with `world` ranks on threads sharing `dir`; returns rank 0's losses.
fn train_ranks(dir: &std::path::Path, cfg: &TrainConfig, world: usize, resume: bool) -> Vec<f64> {
    train_ranks_with(Kind::Threads, dir, cfg, world, resume)
}

fn train_ranks_with(
    kind: Kind,
    dir: &std::path::Path,
    cfg: &TrainConfig,
    world: usize,
    resume: bool,
) -> Vec<f64> {
    let data = toy_data();
    let timeout = Duration::from_secs(120);
    let threads = std::sync::Mutex::new(ThreadGroup::new(world, timeout));
    let port = free_port();
    let results: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (data, threads) = (&data, &threads);
                s.spawn(move || {
                    let group: Arc<dyn Collective> = match kind {
                        Kind::Threads => Arc::new(threads.lock().unwrap()[rank].clone()),
                        Kind::Tcp => Arc::new(
                            TcpGroup::connect(&tcp_group(rank, world, port, timeout)).unwrap(),
                        ),
                    };
                    let opts = TrainOptions {
                        resume,
                        device: Device::Cpu,
                        dist: Dist(group),
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

#[test]
fn processes_over_tcp_train_the_bits_of_threads() {
    let cfg = backbone_config("sit-nano-4", 4);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let la = train_ranks_with(Kind::Threads, a.path(), &cfg, 2, false);
    let lb = train_ranks_with(Kind::Tcp, b.path(), &cfg, 2, false);
    assert_eq!(la, lb);
    assert_eq!(final_weights(a.path()), final_weights(b.path()));
    // A group of one goes through the collectives (the path a backend check on one device
    // takes) and changes no bit.
    let (c, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alone = train(
        c.path(),
        &cfg,
        &toy_data(),
        &TrainOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let lone: Vec<f64> = alone.losses.iter().map(|l| l.1).collect();
    assert_eq!(lone, train_ranks_with(Kind::Tcp, d.path(), &cfg, 1, false));
    assert_eq!(final_weights(c.path()), final_weights(d.path()));
}

/// Connects `world` TCP ranks on threads and runs `f` on each.
fn with_tcp<T: Send>(world: usize, f: impl Fn(&TcpGroup) -> T + Sync) -> Vec<T> {
    let port = free_port();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..world)
            .map(|rank| {
                let f = &f;
                s.spawn(move || {
                    let g =
                        TcpGroup::connect(&tcp_group(rank, world, port, Duration::from_secs(30)))
                            .unwrap();
                    f(&g)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn the_tcp_collective_sums_broadcasts_and_names_a_rank_that_left() {
    let sums = with_tcp(3, |g| {
        let r = g.rank() as f32;
        let t = Tensor::new(&[r, 10.0 * r], &Device::Cpu).unwrap();
        let b = g.broadcast(std::slice::from_ref(&t), 2).unwrap();
        assert_eq!(b[0].to_vec1::<f32>().unwrap(), vec![2.0, 20.0]);
        let id = g.broadcast_bytes(&[g.rank() as u8 + 7; 128]).unwrap();
        assert_eq!(id, vec![7u8; 128]);
        g.all_reduce_sum(&[t]).unwrap()[0].to_vec1::<f32>().unwrap()
    });
    assert!(sums.iter().all(|s| s == &vec![3.0, 30.0]), "{sums:?}");

    // Rank 1 leaves after the rendezvous: rank 0's next collective fails at once, naming it.
    let errs = with_tcp(2, |g| {
        if g.rank() == 1 {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        Some(g.all_reduce_sum(&[t]).unwrap_err().to_string())
    });
    let e = errs[0].as_ref().unwrap();
    assert!(e.contains("rank 1 closed its connection"), "{e}");

    // Different shapes on two ranks: an error naming the rank, not a misread.
    let errs = with_tcp(2, |g| {
        let n = 1 + g.rank();
        let t = Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap();
        g.all_reduce_sum(&[t]).err().map(|e| e.to_string())
    });
    let e = errs[0].as_ref().unwrap();
    assert!(e.contains("rank 1 sent 16 bytes where rank 0 has 8"), "{e}");
}

#[test]
fn a_rendezvous_without_its_peers_times_out_naming_them() {
    let port = free_port();
    let short = Duration::from_millis(300);
    let e = TcpGroup::connect(&tcp_group(0, 3, port, short))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("ranks 1, 2 did not connect"), "{e}");
    let e = TcpGroup::connect(&tcp_group(1, 2, port, short))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("rank 1 could not reach rank 0 at 127.0.0.1"),
        "{e}"
    );
    let bad = tcp_group(2, 2, port, short);
    let e = TcpGroup::connect(&bad).err().unwrap().to_string();
    assert!(e.contains("RANK < WORLD_SIZE"), "{e}");
}

#[test]
fn ranks_with_different_configs_or_steps_are_refused() {
    let groups = ThreadGroup::new(2, Duration::from_secs(30));
    let check = |cfgs: [&str; 2], steps: [u64; 2]| -> Vec<Option<String>> {
        std::thread::scope(|s| {
            let hs: Vec<_> = groups
                .iter()
                .map(|g| {
                    let r = g.rank();
                    s.spawn(move || {
                        check_same_run(g, cfgs[r], steps[r], &Device::Cpu)
                            .err()
                            .map(|e| e.to_string())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    assert_eq!(check(["{\"a\":1}", "{\"a\":1}"], [5, 5]), vec![None, None]);
    let r = check(["{\"a\":1}", "{\"a\":2}"], [5, 5]);
    assert!(r[0].is_none());
    assert!(
        r[1].as_ref()
            .unwrap()
            .contains("rank 1's training configuration"),
        "{r:?}"
    );
    let r = check(["{}", "{}"], [1 << 30, 3]);
    assert!(
        r[1].as_ref()
            .unwrap()
            .contains("rank 1 resumes from step 3"),
        "{r:?}"
    );
    assert!(
        r[1].as_ref().unwrap().contains(&(1u64 << 30).to_string()),
        "{r:?}"
    );
}

#[test]
fn buckets_respect_the_cap_and_give_the_tensors_back() {
    assert_eq!(bucket_ranges(&[3, 3, 3], 6), vec![0..2, 2..3]);
    assert_eq!(bucket_ranges(&[10, 1, 1], 4), vec![0..1, 1..3]);
    assert_eq!(bucket_ranges(&[1, 10, 1], 4), vec![0..1, 1..2, 2..3]);
    assert!(bucket_ranges(&[], 4).is_empty());
    let ts: Vec<Tensor> = [(2usize, 3usize), (4, 1), (1, 5), (3, 3)]
        .iter()
        .enumerate()
        .map(|(i, &(a, b))| {
            Tensor::arange(0f32, (a * b) as f32, &Device::Cpu)
                .unwrap()
                .affine(1.0, i as f64 * 100.0)
                .unwrap()
                .reshape((a, b))
                .unwrap()
        })
        .collect();
    // 10 floats per bucket: [6, 4] [5] [9]
    let b = Buckets::new(&ts, candle_core::DType::F32, 40);
    assert_eq!(b.len(), 3);
    let flat = b.flatten(&ts).unwrap();
    assert_eq!(
        flat.iter().map(|t| t.elem_count()).collect::<Vec<_>>(),
        vec![10, 5, 9]
    );
    let back = b.unflatten(&flat).unwrap();
    for (x, y) in ts.iter().zip(&back) {
        assert_eq!(x.shape(), y.shape());
        assert_eq!(
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}

#[test]
fn a_run_resumed_with_another_world_size_continues_the_same_batches() {
    let mut cfg = backbone_config("sit-nano-4", 6);
    cfg.train.checkpoint_every = 3;
    let whole = tempfile::tempdir().unwrap();
    let lw = train_ranks(whole.path(), &cfg, 1, false);
    let parts = tempfile::tempdir().unwrap();
    let mut half = cfg.clone();
    half.train.steps = 3;
    let mut lp = train_ranks(parts.path(), &half, 2, false);
    lp.extend(train_ranks(parts.path(), &cfg, 4, true));
    assert_eq!(lw.len(), lp.len());
    for (a, b) in lw.iter().zip(&lp) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "loss {a} vs {b}");
    }
    let d = max_rel_diff(&final_weights(whole.path()), &final_weights(parts.path()));
    assert!(d < 1e-4, "weights differ by {d:e}");
}
