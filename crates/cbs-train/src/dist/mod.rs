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
//! Implementations:
//! - [`Single`]: a world of one.
//! - [`ThreadGroup`]: ranks as threads of one process (the tests).
//! - [`TcpGroup`]: one process per rank, sums on rank 0's host over TCP in rank order (the same
//!   bits as [`ThreadGroup`]): data parallelism on CPUs, and launchers tested without GPUs.
//! - `NcclGroup` (feature `nccl`): NVIDIA's collectives on candle's CUDA stream, in buckets; the
//!   engine on GPUs. Its communicator id travels from rank 0 over the same TCP rendezvous.
//!
//! A process finds its group with [`ProcessGroup`] (what `torchrun`, `cbs launch` or a SLURM
//! script put in `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) and
//! [`connect`]. A rank that does not reach a collective within the group's timeout makes the
//! others fail with an error naming it, instead of waiting forever.

mod buckets;
#[cfg(feature = "nccl")]
mod nccl;
mod tcp;
mod threads;

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};

pub use buckets::{bucket_ranges, Buckets, BUCKET_BYTES};
#[cfg(feature = "nccl")]
pub use nccl::NcclGroup;
pub use tcp::TcpGroup;
pub use threads::ThreadGroup;

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
    /// Whether training goes through the collectives: true for every group, also a group of
    /// one (so a single process checks a backend's code path), false for [`Single`].
    fn reduces(&self) -> bool {
        true
    }
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
    fn reduces(&self) -> bool {
        false
    }
}

/// How the processes of a group exchange tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Backend {
    /// NCCL on CUDA devices, TCP on the CPU.
    #[default]
    Auto,
    /// NVIDIA's collectives (GPUs; a binary built with the `cuda` feature).
    Nccl,
    /// Sums on rank 0's host over TCP, in rank order (CPUs).
    Tcp,
}

/// One process's place in a multi-process group, as launchers describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessGroup {
    pub rank: usize,
    pub world_size: usize,
    /// The rank among the processes of this node (the GPU it uses).
    pub local_rank: usize,
    /// Where rank 0 listens for the others (host name or address).
    pub master_addr: String,
    pub master_port: u16,
    /// How long a rank waits for the others: at the rendezvous and in every collective.
    pub timeout: Duration,
}

impl ProcessGroup {
    fn invalid(&self, field: &'static str, value: String, expected: &str) -> TrainError {
        TrainError::Invalid {
            field,
            value,
            expected: expected.into(),
        }
    }

    /// Rank within the world, a port, a timeout.
    pub fn validate(&self) -> Result<()> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(self.invalid(
                "RANK",
                format!("{} with WORLD_SIZE {}", self.rank, self.world_size),
                "0 ≤ RANK < WORLD_SIZE",
            ));
        }
        if self.master_port == 0 && self.world_size > 1 {
            return Err(self.invalid("MASTER_PORT", "0".into(), "a fixed port (1–65535)"));
        }
        if self.timeout.is_zero() {
            return Err(self.invalid("timeout", "0 s".into(), "a positive number of seconds"));
        }
        Ok(())
    }
}

/// Joins the group `pg` describes (blocking until every rank has arrived, at most the timeout)
/// with `backend`; a world of one needs no connection.
pub fn connect(
    pg: &ProcessGroup,
    backend: Backend,
    device: &Device,
) -> Result<Arc<dyn Collective>> {
    pg.validate()?;
    if pg.world_size == 1 {
        return Ok(Arc::new(Single));
    }
    let nccl = match backend {
        Backend::Auto => device.is_cuda(),
        Backend::Nccl => true,
        Backend::Tcp => false,
    };
    if !nccl {
        return Ok(Arc::new(TcpGroup::connect(pg)?));
    }
    if !device.is_cuda() {
        return Err(TrainError::Invalid {
            field: "data-parallel backend",
            value: format!("nccl on {device:?}"),
            expected: "a CUDA device for NCCL (or the tcp backend on the CPU)".into(),
        });
    }
    connect_nccl(pg, device)
}

#[cfg(feature = "nccl")]
fn connect_nccl(pg: &ProcessGroup, device: &Device) -> Result<Arc<dyn Collective>> {
    Ok(Arc::new(NcclGroup::connect(pg, device)?))
}

#[cfg(not(feature = "nccl"))]
fn connect_nccl(_pg: &ProcessGroup, _device: &Device) -> Result<Arc<dyn Collective>> {
    Err(TrainError::Invalid {
        field: "data-parallel backend",
        value: "nccl".into(),
        expected: "a binary built with NCCL (scripts/build-cuda.sh, cargo's --features cuda)"
            .into(),
    })
}

/// Every rank's tensors as host vectors (one `Vec<f64>` per tensor), in rank order.
pub(crate) type Contributions = [Vec<Vec<f64>>];

/// The element-wise sum of every rank's values, in rank order (so every rank of every host
/// implementation gets the same rounding).
pub(crate) fn sum_in_rank_order(all: &Contributions) -> Vec<Vec<f64>> {
    let mut acc = all[0].clone();
    for other in &all[1..] {
        for (a, b) in acc.iter_mut().zip(other) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }
    acc
}

pub(crate) fn to_host(tensors: &[Tensor]) -> Result<Vec<Vec<f64>>> {
    tensors
        .iter()
        .map(|t| Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        .collect()
}

pub(crate) fn from_host(values: &[Vec<f64>], like: &[Tensor]) -> Result<Vec<Tensor>> {
    values
        .iter()
        .zip(like)
        .map(|(v, t)| Ok(Tensor::from_slice(v, t.shape(), t.device())?.to_dtype(t.dtype())?))
        .collect()
}

/// The shard `[rank·B/world, (rank+1)·B/world)` of a global batch of `batch` samples.
pub fn shard_range(batch: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let per = batch / world;
    rank * per..(rank + 1) * per
}

/// Fails unless every rank runs the same training configuration from the same step: rank 0
/// broadcasts a fingerprint of both and each rank compares it with its own.
pub fn check_same_run(
    dist: &dyn Collective,
    config_json: &str,
    start_step: u64,
    device: &Device,
) -> Result<()> {
    if dist.world_size() == 1 {
        return Ok(());
    }
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in config_json.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // 16- and 24-bit pieces: exact in f32 on every device.
    let mine: Vec<f32> = (0..4)
        .map(|i| ((h >> (16 * i)) & 0xffff) as f32)
        .chain([(start_step >> 24) as f32, (start_step & 0xff_ffff) as f32])
        .collect();
    let t = Tensor::new(mine.as_slice(), device)?;
    let got = dist.broadcast(&[t], 0)?[0].to_vec1::<f32>()?;
    if got[..4] != mine[..4] {
        return Err(TrainError::Invalid {
            field: "data-parallel group",
            value: format!("rank {}'s training configuration", dist.rank()),
            expected: "the same configuration on every rank (the same command, config files \
                       and overrides: rank 0's differs)"
                .into(),
        });
    }
    if got[4..] != mine[4..] {
        let theirs = ((got[4] as u64) << 24) | got[5] as u64;
        return Err(TrainError::Invalid {
            field: "data-parallel group",
            value: format!("rank {} resumes from step {start_step}", dist.rank()),
            expected: format!(
                "the step rank 0 resumes from ({theirs}): every rank reads the same run \
                 directory (a shared file system across nodes)"
            ),
        });
    }
    Ok(())
}
