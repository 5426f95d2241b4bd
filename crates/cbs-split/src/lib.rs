//! Complexity-Balanced Splitting: where to put the time boundaries between experts.
//!
//! A flow-matching model is split into `N` time-specialised experts. The knots
//! `0 < t_1 < … < t_{N−1} < 1` are chosen by de Boor equidistribution of a *monitor* `m(t)`
//! that measures how hard the velocity field is to approximate at time `t`: every segment gets
//! the same share of `∫ m(t) dt`.
//!
//! Conventions are those of `cbs-flow`: `t = 0` is noise, `t = 1` is data,
//! `x_t = t·x1 + (1 − t)·x0`, regression target `x1 − x0`.
//!
//! - [`gmm`]: a Gaussian-mixture target ([`GmmSpec`]) and its exact marginal velocity
//!   ([`GmmOracle`]), usable as a [`cbs_flow::VelocityField`] and in plain `f64` (velocity,
//!   Jacobian, sampling, log-density). It is the reference against which everything is tested.
//! - [`monitor`]: Euler trajectories of any velocity field on a uniform grid and the per-cell
//!   monitor masses (path acceleration or Hutchinson-estimated Dirichlet energy).
//! - [`mod@equidistribute`]: monitor masses → knots (`grid` as in the paper, or `linear`).
//! - [`bootstrap`]: percentile confidence intervals of the knots by resampling trajectories.
//!
//! All fallible functions return [`SplitError`]; bad input never panics.

pub mod bootstrap;
pub mod equidistribute;
pub mod error;
pub mod gmm;
pub mod monitor;
pub mod toy_metrics;

pub use bootstrap::{bootstrap_knots, KnotInterval};
pub use equidistribute::{equidistribute, SplitMode};
pub use error::{Result, SplitError};
pub use gmm::{GmmOracle, GmmSpec};
pub use monitor::{
    frobenius_sq_estimate, monitor_curve, trajectory_labels, HutchinsonOptions, JvpMethod,
    MonitorCurve, MonitorKind, MonitorOptions, ProbeKind,
};
