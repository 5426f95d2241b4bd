//! [`NcclGroup`]: NVIDIA's collectives, the engine of data parallelism on GPUs.
//!
//! The communicator lives on candle's own CUDA stream, so a collective is ordered after the
//! kernels that produced its input and before those that read its output, with no extra
//! synchronisation. Gradients go in [`super::Buckets`] of [`super::BUCKET_BYTES`] (f32). The
//! communicator id is made by rank 0 and handed to the others over the TCP rendezvous
//! ([`super::TcpGroup`]).
//!
//! No call waits for a collective: each is queued on the stream with an event recorded after it,
//! and the host waits only where it reads a result (the trainer's read points). A rank that
//! stops leaves the others' streams blocked inside NCCL, which cannot be cancelled from the
//! caller: a watchdog thread polls the events and ends the process (exit status 1) with an error
//! naming the rank and the call when a collective has not completed within the group's timeout,
//! as PyTorch's NCCL watchdog does. `cbs launch` and torchrun then stop the remaining ranks.
//!
//! Unverified: no GPU was available where this was written; scripts/gpu-check.sh runs it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::cuda::cudarc::driver::CudaEvent;
use candle_core::cuda::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::cuda::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{Buckets, Collective, ProcessGroup, TcpGroup, BUCKET_BYTES};
use crate::{Result, TrainError};

/// The communicator, used by one thread at a time (the mutex in [`NcclGroup`]).
struct SharedComm(Comm);
// SAFETY: an NCCL communicator may be used from any thread as long as calls are not concurrent;
// every use goes through `NcclGroup::comm`'s mutex.
unsafe impl Send for SharedComm {}

/// One rank of an NCCL group (see the module documentation).
pub struct NcclGroup {
    rank: usize,
    world: usize,
    comm: Arc<Mutex<SharedComm>>,
    device: CudaDevice,
    watchdog: Watched,
}

/// Collectives queued on the stream and not yet seen complete: when each was queued, what it
/// was, and the event recorded after it.
type Watched = Arc<Mutex<VecDeque<(Instant, &'static str, CudaEvent)>>>;

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Invalid {
        field: "NCCL",
        value: format!("{what}: {e:?}"),
        expected: "a working NCCL (libnccl.so.2 next to the CUDA libraries, one GPU per rank)"
            .into(),
    }
}

impl NcclGroup {
    /// Joins the group on `device` (a CUDA device): rank 0 makes the communicator id and sends
    /// it to the others over TCP, then every rank initialises its communicator.
    pub fn connect(pg: &ProcessGroup, device: &Device) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(nccl_err(
                "device",
                format!("{device:?} is not a CUDA device"),
            ));
        };
        let rendezvous = TcpGroup::connect(pg)?;
        let mine: Vec<u8> = if pg.rank == 0 {
            let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            vec![0; 128]
        };
        let bytes = rendezvous.broadcast_bytes(&mine)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(&bytes) {
            *d = *s as std::ffi::c_char;
        }
        // NCCL initialises on the calling thread's current device: make it this rank's.
        let stream = dev.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| nccl_err("binding the CUDA context", e))?;
        let comm = Comm::from_rank(stream, pg.rank, pg.world_size, Id::uninit(internal))
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        let watchdog: Watched = Arc::default();
        spawn_watchdog(watchdog.clone(), pg.rank, pg.timeout);
        Ok(Self {
            rank: pg.rank,
            world: pg.world_size,
            comm: Arc::new(Mutex::new(SharedComm(comm))),
            device: dev.clone(),
            watchdog,
        })
    }

    /// Queues `op` on every bucket of `tensors` (f32) on candle's stream, under the watchdog.
    /// Nothing waits here: the results are ordered after the collectives on the stream, and
    /// the host sees them (and waits) only when it reads them.
    fn bucketed(&self, tensors: &[Tensor], what: &'static str, op: Op) -> Result<Vec<Tensor>> {
        let buckets = Buckets::new(tensors, DType::F32, BUCKET_BYTES);
        let flat = buckets.flatten(tensors)?;
        let queued = Instant::now();
        let custom = NcclOp {
            comm: self.comm.clone(),
            op,
        };
        let reduced = flat
            .iter()
            .map(|t| t.apply_op1_no_bwd(&custom))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // The watchdog polls this event: a stopped peer leaves it incomplete.
        let done = self
            .device
            .cuda_stream()
            .record_event(None)
            .map_err(|e| nccl_err(what, e))?;
        self.watchdog
            .lock()
            .expect("watchdog")
            .push_back((queued, what, done));
        buckets.unflatten(&reduced)
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        self.bucketed(tensors, "all-reduce", Op::Sum)
    }
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>> {
        self.bucketed(tensors, "broadcast", Op::Broadcast(root))
    }
}

#[derive(Clone, Copy)]
enum Op {
    Sum,
    Broadcast(usize),
}

/// One collective on one contiguous f32 buffer, as a candle op on the device's stream.
struct NcclOp {
    comm: Arc<Mutex<SharedComm>>,
    op: Op,
}

impl CustomOp1 for NcclOp {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives need CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device.clone();
        let Some((lo, hi)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL collectives need contiguous tensors")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(lo..hi);
        // SAFETY: fully written by the collective before any read (same stream).
        let mut dst = unsafe { dev.alloc::<f32>(hi - lo)? };
        let comm = self.comm.lock().expect("NCCL communicator poisoned");
        let status = match self.op {
            Op::Sum => comm.0.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            Op::Broadcast(root) => comm.0.broadcast(Some(&src), &mut dst, root as i32),
        };
        status.map_err(|e| candle_core::Error::Msg(format!("NCCL: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

/// Polls the queued collectives' events (without blocking the stream or the training thread)
/// and ends the process when one has not completed within `timeout`, or the device reports an
/// error.
fn spawn_watchdog(state: Watched, rank: usize, timeout: Duration) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100).min(timeout));
        let mut queue = state.lock().expect("watchdog");
        while let Some((since, what, event)) = queue.front() {
            let status = event
                .context()
                .bind_to_thread()
                .and_then(|()| event.try_is_complete());
            match status {
                Ok(true) => {
                    queue.pop_front();
                }
                Ok(false) if since.elapsed() <= timeout => break,
                Ok(false) => {
                    eprintln!(
                        "error: rank {rank}: an NCCL {what} did not complete within {timeout:?}: \
                         another rank stopped or failed (see its error); exiting"
                    );
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("error: rank {rank}: the GPU failed during an NCCL {what}: {e:?}");
                    std::process::exit(1);
                }
            }
        }
    });
}
