//! Counter-based randomness: every step draws from its own stream of a seeded ChaCha8.
//!
//! The generator state of a run is therefore just `(seed, step)`, which the checkpoint records;
//! resuming needs no opaque generator dump and cannot drift.

use serde::{Deserialize, Serialize};

pub use cbs_core::rng::{stream, Purpose};

/// What a checkpoint records of the generators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {
    pub algorithm: String,
    pub seed: u64,
    /// The next step's stream index.
    pub next_stream: u64,
}
