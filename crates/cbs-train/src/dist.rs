//! Data-parallel training: the collective operations a step needs, behind one small trait.
//!
//! Every rank holds the same weights, draws the same global batch of each step from the run's
//! seeded stream and keeps its own contiguous shard of it (`B / world` samples, rank order),
//! computes the gradients of its shard's mean loss, and the ranks average them
//! ([`Collective::all_reduce_sum`] then `/ world`): with equal shards that is the gradient of the
//! global batch's mean loss, so the loss curve, the weights and resume do not depend on the
//! world size beyond the order of the floating-point reduction. Clipping, AdamW and the EMA then
//! run identically on every rank. Only rank 0 writes checkpoints, metrics and progress.
//!
//! [`ThreadGroup`] is the in-process implementation (one thread per rank, the sum taken in rank
//! order, so every rank gets bit-identical results); the tests use it to check that N ranks ×
//! B/N samples train the weights 1 rank × B samples trains. A rank that does not arrive at a
//! collective within the group's timeout makes the others fail with an error naming it,
//! instead of waiting forever.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use crate::{Result, TrainError};

/// The operations of data-parallel training.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The element-wise sum over ranks of each tensor (same shapes and dtypes on every rank),
    /// returned to every rank.
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>>;
    /// Rank `root`'s tensors, returned to every rank.
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>>;
}

/// A world of one: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(tensors.to_vec())
    }
    fn broadcast(&self, tensors: &[Tensor], _root: usize) -> Result<Vec<Tensor>> {
        Ok(tensors.to_vec())
    }
}

/// What the ranks of a [`ThreadGroup`] share.
struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<Round>,
    cv: Condvar,
}

/// One collective call: each rank's contribution, then the result every rank reads.
#[derive(Default)]
struct Round {
    /// Incremented when a round completes; a rank waits for the generation it joined to end.
    generation: u64,
    arrived: usize,
    slots: Vec<Option<Vec<Vec<f64>>>>,
    result: Option<Arc<Vec<Vec<f64>>>>,
    /// Ranks that have read the finished round's result.
    readers: usize,
}

/// Every rank's tensors as host vectors (one `Vec<f64>` per tensor), in rank order.
type Contributions = [Vec<Vec<f64>>];

/// One rank of an in-process group of threads (see the module documentation).
#[derive(Clone)]
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// The `world` ranks of a new group; hand one to each thread. A collective waits at most
    /// `timeout` for the other ranks.
    pub fn new(world: usize, timeout: Duration) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(Round {
                slots: vec![None; world],
                ..Round::default()
            }),
            cv: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Deposits this rank's values and returns `combine(all ranks' values in rank order)`,
    /// computed once by the last rank to arrive.
    fn exchange(
        &self,
        mine: Vec<Vec<f64>>,
        combine: &dyn Fn(&Contributions) -> Vec<Vec<f64>>,
    ) -> Result<Arc<Vec<Vec<f64>>>> {
        let sh = &*self.shared;
        let deadline = Instant::now() + sh.timeout;
        let timeout = |what: &str| TrainError::Invalid {
            field: "data-parallel collective",
            value: format!("rank {} {what}", self.rank),
            expected: format!(
                "all {} ranks to reach the same collective within {:?} (a rank stopped or failed)",
                sh.world, sh.timeout
            ),
        };
        let mut st = sh.state.lock().expect("collective state poisoned");
        // A previous round is still being read: wait for it to drain.
        while st.result.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout("waited for the previous collective to finish"));
            }
            st = sh.cv.wait_timeout(st, left).expect("poisoned").0;
        }
        let generation = st.generation;
        st.slots[self.rank] = Some(mine);
        st.arrived += 1;
        if st.arrived == sh.world {
            let all: Vec<Vec<Vec<f64>>> = st.slots.iter_mut().map(|s| s.take().unwrap()).collect();
            st.result = Some(Arc::new(combine(&all)));
            st.arrived = 0;
            st.generation += 1;
            sh.cv.notify_all();
        } else {
            while st.generation == generation {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // Withdraw, so that a later call does not see a stale contribution.
                    st.slots[self.rank] = None;
                    st.arrived -= 1;
                    return Err(timeout("waited for the other ranks"));
                }
                st = sh.cv.wait_timeout(st, left).expect("poisoned").0;
            }
        }
        let out = st.result.clone().expect("set when the round completed");
        st.readers += 1;
        if st.readers == sh.world {
            st.readers = 0;
            st.result = None;
            sh.cv.notify_all();
        }
        Ok(out)
    }
}

fn to_host(tensors: &[Tensor]) -> Result<Vec<Vec<f64>>> {
    tensors
        .iter()
        .map(|t| Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        .collect()
}

fn from_host(values: &[Vec<f64>], like: &[Tensor]) -> Result<Vec<Tensor>> {
    values
        .iter()
        .zip(like)
        .map(|(v, t)| Ok(Tensor::from_slice(v, t.shape(), t.device())?.to_dtype(t.dtype())?))
        .collect()
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let sum = self.exchange(to_host(tensors)?, &|all| {
            // In rank order, so every rank gets the same rounding.
            let mut acc = all[0].clone();
            for other in &all[1..] {
                for (a, b) in acc.iter_mut().zip(other) {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                }
            }
            acc
        })?;
        from_host(&sum, tensors)
    }
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>> {
        let got = self.exchange(to_host(tensors)?, &|all| all[root].clone())?;
        from_host(&got, tensors)
    }
}

/// The shard `[rank·B/world, (rank+1)·B/world)` of a global batch of `batch` samples.
pub fn shard_range(batch: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let per = batch / world;
    rank * per..(rank + 1) * per
}
