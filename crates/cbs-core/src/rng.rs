//! Every random stream of `cbs`, by purpose.
//!
//! A stream is a ChaCha8 generator keyed by `seed ^ purpose key` and positioned on stream
//! `offset + counter` (ChaCha's 64-bit stream number, wrapping). Everything random is a pure
//! function of `(seed, purpose, counter)`: a training step is stream `step` of its run seed, so
//! a run resumed at step `s` draws what an uninterrupted run draws after `s`, and no generator
//! state has to be saved. candle's own RNG is never used (it cannot be seeded on the CPU).
//!
//! # Key spaces
//!
//! [`Purpose::TrainStep`], [`Purpose::SampleNoise`] and the two classifier purposes have keys
//! of their own. Every other purpose has key 0, i.e. its generator is
//! `ChaCha8Rng::seed_from_u64(seed)` positioned on a stream: that is how those streams were
//! drawn before this module existed, and every result of the project (the pipeline's knots,
//! its FID, every test fixture) depends on them, so they are kept bit-identical. The price is
//! that key-0 purposes share one key space: given the *same* seed, stream 0 of
//! [`Purpose::MonitorNoise`], [`Purpose::Bootstrap`], [`Purpose::DataSubset`],
//! [`Purpose::WeightInit`], [`Purpose::GmmSample`], [`Purpose::ToyMetrics`],
//! [`Purpose::KidSubsets`], epoch 0 of [`Purpose::DataOrder`] and mask 0 of
//! [`Purpose::UnetDropout`] are the same numbers (as are probe stream `k` of
//! [`Purpose::MonitorProbe`] and mask `k + 1` of [`Purpose::UnetDropout`]). Where two of them
//! meet with one seed they draw different quantities (in `estimate-splits`, the monitor noises
//! and the bootstrap resample indices both come from `--seed`), and the published results were
//! computed that way. A new purpose gets its own non-zero key.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Why numbers are drawn. See the module documentation for which purposes share a key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Training step `counter` of a run: flips, label drops, times, noise, the dropout seed,
    /// in that order.
    TrainStep,
    /// Sampling noise; counter 0 (one stream for all samples, whatever the batch size).
    SampleNoise,
    /// Step `counter` of `cbs train-classifier` (horizontal flips).
    ClassifierStep,
    /// The training images of a classifier run's `train-sample.npz`; counter 0.
    ClassifierRealSample,
    /// The permutation of epoch `counter` of the batch sampler. Key 0 (legacy).
    DataOrder,
    /// The seeded `data_fraction` subset of a data set; counter 0. Key 0 (legacy).
    DataSubset,
    /// Reference weight initialisation of a network, in sorted name order; counter 0.
    /// Key 0 (legacy).
    WeightInit,
    /// Dropout mask `counter` of a UNet forward pass (the seed is drawn by the training step).
    /// Key 0 (legacy).
    UnetDropout,
    /// The noises of the monitor trajectories, drawn trajectory after trajectory; counter 0.
    /// Key 0 (legacy).
    MonitorNoise,
    /// The Hutchinson probes of monitor trajectory `counter` (stream `counter + 1`).
    /// Key 0 (legacy).
    MonitorProbe,
    /// The class labels of the monitor trajectories (stream `u64::MAX`); counter 0.
    /// Key 0 (legacy).
    TrajectoryLabels,
    /// Bootstrap resamples of the monitor trajectories; counter 0. Key 0 (legacy).
    Bootstrap,
    /// Points drawn from a Gaussian mixture; counter 0. Key 0 (legacy).
    GmmSample,
    /// Random directions of the toy metrics' sliced Wasserstein distance; counter 0.
    /// Key 0 (legacy).
    ToyMetrics,
    /// The random subsets of KID; counter 0. Key 0 (legacy).
    KidSubsets,
    /// The posterior draw of `cbs encode-latents --posterior sample`: counter `2·i` for image
    /// `i`, `2·i + 1` for its mirror image (so the draws do not depend on the batch size).
    LatentPosterior,
    /// The Brownian increments of SDE sampling: counter `i` for sample `i` (its own stream,
    /// step after step, so the noise does not depend on the batch size).
    SdeNoise,
    /// Bootstrap resample `counter` of a set of samples (the metric intervals of
    /// `cbs experiment`): the image indices drawn with replacement.
    MetricBootstrap,
    /// The noise of the per-time velocity error: counter `j·N + i` for image `i` at time `j`
    /// of the grid (common to every model evaluated with one seed; independent of the batch).
    VelocityError,
}

impl Purpose {
    /// Every purpose, for tests and documentation.
    pub const ALL: [Purpose; 19] = [
        Purpose::TrainStep,
        Purpose::SampleNoise,
        Purpose::ClassifierStep,
        Purpose::ClassifierRealSample,
        Purpose::DataOrder,
        Purpose::DataSubset,
        Purpose::WeightInit,
        Purpose::UnetDropout,
        Purpose::MonitorNoise,
        Purpose::MonitorProbe,
        Purpose::TrajectoryLabels,
        Purpose::Bootstrap,
        Purpose::GmmSample,
        Purpose::ToyMetrics,
        Purpose::KidSubsets,
        Purpose::LatentPosterior,
        Purpose::SdeNoise,
        Purpose::MetricBootstrap,
        Purpose::VelocityError,
    ];

    /// XORed into the seed before seeding ChaCha8 (0: the legacy shared key space).
    pub const fn key(self) -> u64 {
        match self {
            Purpose::TrainStep => 0x7472_6169_6e00_0001,
            Purpose::SampleNoise => 0x7361_6d70_6c00_0002,
            Purpose::ClassifierStep | Purpose::ClassifierRealSample => 0x636c_6173_7300_0003,
            Purpose::LatentPosterior => 0x6c61_7465_6e00_0004,
            Purpose::SdeNoise => 0x7364_6500_0000_0005,
            Purpose::MetricBootstrap => 0x626f_6f74_0000_0006,
            Purpose::VelocityError => 0x7665_6c65_7200_0007,
            _ => 0,
        }
    }

    /// The ChaCha stream of counter 0.
    pub const fn offset(self) -> u64 {
        match self {
            Purpose::MonitorProbe => 1,
            Purpose::TrajectoryLabels | Purpose::ClassifierRealSample => u64::MAX,
            _ => 0,
        }
    }

    /// True for the purposes that share key 0 (see the module documentation).
    pub const fn is_legacy(self) -> bool {
        self.key() == 0
    }
}

/// The generator of `(seed, purpose, counter)`: ChaCha8 seeded with `seed ^ purpose.key()`,
/// on stream `purpose.offset() + counter` (wrapping).
pub fn stream(seed: u64, purpose: Purpose, counter: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ purpose.key());
    rng.set_stream(purpose.offset().wrapping_add(counter));
    rng
}
