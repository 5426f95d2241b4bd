//! The error type of this crate.

use std::path::PathBuf;

/// Result alias with [`SplitError`].
pub type Result<T> = std::result::Result<T, SplitError>;

/// Everything that can go wrong while estimating splits.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// A Gaussian-mixture specification is malformed.
    #[error("invalid GMM spec: `{field}` = {value}: {reason}")]
    InvalidSpec {
        field: String,
        value: String,
        reason: String,
    },

    /// A text input is not a readable, reasonably sized text file.
    #[error(transparent)]
    Text(#[from] cbs_core::TextError),

    /// A file is not valid JSON of the expected shape.
    #[error("cannot parse {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A JSON string is not of the expected shape.
    #[error("cannot parse JSON: {0}")]
    JsonStr(#[source] serde_json::Error),

    /// A file of ours (e.g. `splits.toml`) is unreadable or invalid.
    #[error("{path}: {message}")]
    File { path: String, message: String },

    /// A file was read and parsed but its content is invalid.
    #[error("in {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<SplitError>,
    },

    /// An input has the wrong size.
    #[error("{what}: expected {expected} values, got {got}")]
    DimensionMismatch {
        what: String,
        expected: usize,
        got: usize,
    },

    /// An option is out of range.
    #[error("invalid option `{name}` = {value}: {reason}")]
    InvalidOption {
        name: &'static str,
        value: String,
        reason: String,
    },

    /// `n_experts` must be at least 1.
    #[error("the number of experts must be at least 1, got {0}")]
    NoExperts(usize),

    /// The grid has too few points.
    #[error("the time grid needs at least 2 points, got {0}")]
    GridTooShort(usize),

    /// The grid is not strictly increasing (or not finite).
    #[error("the time grid must be finite and strictly increasing: grid[{index}] = {value} after grid[{}] = {prev}", index - 1)]
    GridNotIncreasing { index: usize, prev: f64, value: f64 },

    /// One mass per grid cell is required.
    #[error("monitor has {mass} cell masses but the grid has {grid} points (expected {} masses)", grid.saturating_sub(1))]
    MassLength { mass: usize, grid: usize },

    /// A cell mass is NaN, infinite or negative.
    #[error("monitor mass of cell {index} is {value}: masses must be finite and non-negative")]
    InvalidMass { index: usize, value: f64 },

    /// The monitor integrates to zero.
    #[error("degenerate monitor: the total mass is zero, so it cannot place knots")]
    DegenerateMonitor,

    /// Two consecutive knots fell on the same point.
    #[error(
        "knots {first} and {second} coincide at t = {t} ({n_experts} experts on a grid of {cells} cells): \
         the monitor is too concentrated for this grid; use a finer grid, the `linear` mode, or fewer experts"
    )]
    CoincidingKnots {
        first: usize,
        second: usize,
        t: f64,
        n_experts: usize,
        cells: usize,
    },

    /// A knot fell on an end of the time interval, leaving an empty segment.
    #[error(
        "knot {index} falls on the end of the time interval (t = {t}), leaving an empty segment: \
         use a finer grid or fewer experts"
    )]
    KnotAtBoundary { index: usize, t: f64 },

    /// Autograd returned no gradient with respect to `x` for the VJP Dirichlet estimator.
    #[error(
        "the velocity field returned no gradient with respect to x (is it built from ops without a \
         backward pass, or detached?); use the finite-difference JVP method instead"
    )]
    NoGradient,

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
