//! How a training run executes, as opposed to what it trains (the config): resume, device,
//! stop flag, data-parallel group, and when step numbers are read back to the host.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;

use crate::dist::{Collective, Single};

/// How to run (as opposed to what to train, which is the config).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    pub device: Device,
    /// Set (by a signal handler, say) to stop after the current step: a checkpoint of that
    /// step is written and [`crate::train`] returns [`crate::TrainError::Interrupted`].
    pub stop: Option<&'static AtomicBool>,
    /// This process's place in a data-parallel group (see [`crate::dist`]).
    pub dist: Dist,
    /// When the loop reads each step's numbers back to the host.
    pub host_reads: HostReads,
}

/// When the training loop reads a step's numbers (loss, gradient norm, per-sample losses) back
/// to the host. Reading waits for the device; on a GPU that wait, every step, leaves it idle
/// while the host prepares the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum HostReads {
    /// `every-step` on the CPU (where nothing runs ahead of the host, so reading is free),
    /// `logging` on other devices.
    #[default]
    Auto,
    /// After every step: a non-finite step stops the run at that step.
    EveryStep,
    /// At logging steps (`train.log_every`), checkpoint steps, the last step and a requested
    /// stop: every step since the previous read in one transfer. A non-finite step is never
    /// applied either way (the update kernels read the device-side guard); it stops the run at
    /// the next read, before any checkpoint is written, naming the step.
    Logging,
}

impl HostReads {
    /// Whether the loop reads after every step on `device`.
    pub fn every_step(self, device: &Device) -> bool {
        match self {
            HostReads::Auto => device.is_cpu(),
            HostReads::EveryStep => true,
            HostReads::Logging => false,
        }
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            resume: false,
            device: Device::Cpu,
            stop: None,
            dist: Dist::default(),
            host_reads: HostReads::Auto,
        }
    }
}

/// A handle on a [`Collective`] (a world of one by default).
#[derive(Clone)]
pub struct Dist(pub Arc<dyn Collective>);

impl Default for Dist {
    fn default() -> Self {
        Dist(Arc::new(Single))
    }
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.0.rank(), self.0.world_size())
    }
}
