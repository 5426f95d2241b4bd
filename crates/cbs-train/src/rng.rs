//! Counter-based randomness: every step draws from its own stream of a seeded ChaCha8.
//!
//! The generator state of a run is therefore just `(seed, step)`, which the checkpoint records;
//! resuming needs no opaque generator dump and cannot drift.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Independent purposes get independent key spaces.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Purpose {
    Train = 0x7472_6169_6e00_0001,
    Sample = 0x7361_6d70_6c00_0002,
    Classifier = 0x636c_6173_7300_0003,
}

/// A generator for `(seed, purpose, counter)`.
pub fn stream(seed: u64, purpose: Purpose, counter: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ purpose as u64);
    rng.set_stream(counter);
    rng
}

/// What a checkpoint records of the generators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {
    pub algorithm: String,
    pub seed: u64,
    /// The next step's stream index.
    pub next_stream: u64,
}
