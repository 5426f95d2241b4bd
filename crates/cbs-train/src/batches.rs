//! The host half of every training step's batch, drawn from the step's own random stream and
//! prepared on a loader thread a few steps ahead, so that the device never waits for image
//! copies, flips or millions of normal draws.
//!
//! Each step's draws depend only on `(seed, step)` (`cbs_core::rng`), never on which thread
//! draws them or how far ahead it runs: prefetching changes no number, and a resumed run draws
//! what an uninterrupted one does.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::Scope;

use candle_core::{Device, Tensor};
use cbs_core::rng::{self, Purpose};
use cbs_data::{BatchSampler, Dataset};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::config::TrainConfig;
use crate::step::Batch;
use crate::times::TimeDist;
use crate::weighting::LossWeights;
use crate::Result;

/// Batches the loader thread keeps ready ahead of the step that consumes them.
pub const PREFETCH_DEPTH: usize = 2;

/// One step's batch in host memory.
pub struct HostBatch {
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    pub times: Vec<f32>,
    pub noise: Vec<f32>,
    pub dropout_seed: u64,
    /// Per-sample loss weights w(t) (`train.loss_weighting`), `None` for unweighted.
    pub weights: Option<Vec<f32>>,
}

impl HostBatch {
    /// Rank `rank`'s contiguous shard of `world` equal shards (`per_sample` values per sample);
    /// the dropout seed is offset by the rank so that ranks draw different masks.
    pub fn shard(self, rank: usize, world: usize, per_sample: usize) -> HostBatch {
        if world == 1 {
            return self;
        }
        let r = crate::dist::shard_range(self.times.len(), rank, world);
        let rows = |v: Vec<f32>, width: usize| v[r.start * width..r.end * width].to_vec();
        HostBatch {
            pixels: rows(self.pixels, per_sample),
            labels: self.labels[r.clone()].to_vec(),
            times: rows(self.times, 1),
            noise: rows(self.noise, per_sample),
            dropout_seed: self.dropout_seed.wrapping_add(rank as u64),
            weights: self.weights.map(|w| rows(w, 1)),
        }
    }

    /// Copies the batch to `device`; `shape` is `[B, …sample]`.
    pub fn upload(self, shape: &[usize], device: &Device) -> Result<Batch> {
        let b = shape[0];
        Ok(Batch {
            x1: Tensor::from_vec(self.pixels, shape, device)?,
            x0: Tensor::from_vec(self.noise, shape, device)?,
            t: Tensor::from_vec(self.times, b, device)?,
            y: Tensor::from_vec(self.labels, b, device)?,
            dropout_seed: self.dropout_seed,
            w: self
                .weights
                .map(|w| Tensor::from_vec(w, b, device))
                .transpose()?,
        })
    }
}

/// Everything that decides a step's batch.
pub struct BatchPlan<'a> {
    data: &'a dyn Dataset,
    sampler: BatchSampler,
    seed: u64,
    batch: usize,
    per_sample: usize,
    hflip: bool,
    drop_p: f64,
    null: Option<u32>,
    times: TimeDist,
    weights: Option<LossWeights>,
}

impl<'a> BatchPlan<'a> {
    pub fn new(
        cfg: &TrainConfig,
        arch: &cbs_models::Architecture,
        data: &'a dyn Dataset,
    ) -> Result<Self> {
        let tc = &cfg.train;
        Ok(Self {
            data,
            sampler: BatchSampler::new(data.len(), tc.batch_size, tc.seed)?,
            seed: tc.seed,
            batch: tc.batch_size,
            per_sample: data.sample_shape().iter().product(),
            hflip: cfg.data.hflip,
            drop_p: arch.class_dropout_prob(),
            null: arch.null_class(),
            times: TimeDist::resolve(tc, arch),
            weights: LossWeights::resolve(tc, arch),
        })
    }

    /// The batch of step `s` (0-based). Draw order is part of the reproducibility contract:
    /// flips, label drops, times, noise, dropout seed.
    pub fn draw(&mut self, s: u64) -> Result<HostBatch> {
        let b = self.batch;
        let mut rng = rng::stream(self.seed, Purpose::TrainStep, s);
        let idx = self.sampler.indices(s);
        let flips: Vec<bool> = (0..b).map(|_| flip_draw(&mut rng, self.hflip)).collect();
        let (pixels, mut labels) = self.data.batch(&idx, &flips)?;
        for l in labels.iter_mut() {
            let dropped = rng.random::<f64>() < self.drop_p;
            if let (true, Some(n)) = (dropped, self.null) {
                *l = n;
            }
        }
        let times: Vec<f32> = (0..b)
            .map(|_| self.times.time(rng.random::<f64>()) as f32)
            .collect();
        let noise: Vec<f32> = (0..b * self.per_sample)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        // Computed from the times, drawing nothing: the batch stream is the same weighted or not.
        let weights = self.weights.map(|w| {
            times
                .iter()
                .map(|&t| w.weight(f64::from(t)) as f32)
                .collect()
        });
        Ok(HostBatch {
            pixels,
            labels,
            times,
            noise,
            dropout_seed: rng.random::<u64>(),
            weights,
        })
    }

    /// Draws the batches of `steps` in order on a thread of `scope`, at most
    /// [`PREFETCH_DEPTH`] ahead of the receiver. The thread stops after the first error (sent
    /// as the last item) or as soon as the receiver is dropped.
    pub fn prefetch<'scope>(
        mut self,
        scope: &'scope Scope<'scope, '_>,
        steps: std::ops::Range<u64>,
    ) -> Receiver<Result<HostBatch>>
    where
        'a: 'scope,
    {
        let (tx, rx) = sync_channel(PREFETCH_DEPTH);
        scope.spawn(move || {
            for s in steps {
                let item = self.draw(s);
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        rx
    }
}

/// Always draws, so that turning flips off does not shift the other random streams.
fn flip_draw(rng: &mut impl Rng, enabled: bool) -> bool {
    let f = rng.random::<bool>();
    enabled && f
}
