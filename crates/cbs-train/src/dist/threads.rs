//! [`ThreadGroup`]: the ranks of a data-parallel group as threads of one process (the tests'
//! collective). Sums are taken in rank order, so every rank gets bit-identical results, the same
//! bits [`super::TcpGroup`] gives.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{from_host, sum_in_rank_order, to_host, Collective, Contributions};
use crate::{Result, TrainError};

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

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let sum = self.exchange(to_host(tensors)?, &sum_in_rank_order)?;
        from_host(&sum, tensors)
    }
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>> {
        let got = self.exchange(to_host(tensors)?, &|all| all[root].clone())?;
        from_host(&got, tensors)
    }
}
