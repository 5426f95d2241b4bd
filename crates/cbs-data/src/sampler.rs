//! Reproducible, resumable batch sampling.

use cbs_core::rng::{stream, Purpose};
use rand::seq::SliceRandom;

use crate::error::{DataError, Result};

/// Epoch-based sampler whose batch at a given global step is a pure function
/// of `(n, batch_size, seed, step)`.
///
/// Epoch `e` is a permutation drawn from `ChaCha8Rng::seed_from_u64(seed)` (`Purpose::DataOrder`) on
/// stream `e`, so any epoch can be regenerated without replaying the earlier
/// ones: a run resumed at step `s` sees exactly the batches of an
/// uninterrupted run. Batches take consecutive positions of the concatenated
/// epoch permutations, so nothing is dropped and a batch may straddle two
/// epochs.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    n: usize,
    batch_size: usize,
    seed: u64,
    /// Only the most recent epoch is kept: steps are normally consumed in
    /// order, and a batch visits its epochs in increasing order.
    cache: Option<(u64, Vec<usize>)>,
}

impl BatchSampler {
    /// Sampler over `n` items in batches of `batch_size`; both must be > 0.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Result<Self> {
        if n == 0 {
            return Err(DataError::Invalid {
                field: "n",
                reason: "cannot sample batches from an empty dataset".to_string(),
            });
        }
        if batch_size == 0 {
            return Err(DataError::Invalid {
                field: "batch_size",
                reason: "must be at least 1".to_string(),
            });
        }
        Ok(Self {
            n,
            batch_size,
            seed,
            cache: None,
        })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Indices of the batch used at global step `step` (0-based).
    pub fn indices(&mut self, step: u64) -> Vec<usize> {
        let n = self.n as u128;
        // u128 because step * batch_size can exceed u64 for very long runs.
        let start = u128::from(step) * self.batch_size as u128;
        let mut out = Vec::with_capacity(self.batch_size);
        for j in 0..self.batch_size as u128 {
            let pos = start + j;
            // Epoch ids beyond u64 (unreachable in practice) wrap the stream id;
            // that stays deterministic, which is all that matters here.
            let epoch = (pos / n) as u64;
            let offset = (pos % n) as usize;
            out.push(self.permutation(epoch)[offset]);
        }
        out
    }

    fn permutation(&mut self, epoch: u64) -> &[usize] {
        let stale = !matches!(&self.cache, Some((e, _)) if *e == epoch);
        if stale {
            let mut rng = stream(self.seed, Purpose::DataOrder, epoch);
            let mut perm: Vec<usize> = (0..self.n).collect();
            perm.shuffle(&mut rng);
            self.cache = Some((epoch, perm));
        }
        match &self.cache {
            Some((_, perm)) => perm,
            None => &[],
        }
    }
}
