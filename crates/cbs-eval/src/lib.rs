//! Sample-quality metrics for `cbs eval-fid`: the FID variant of Inception-v3 (as pytorch-fid
//! builds it), its preprocessing, and the statistics computed from its features — FID, sFID,
//! Inception Score, precision/recall and KID.

pub mod bootstrap;
pub mod error;
pub mod extractors;
pub mod features;
pub mod fid;
pub mod inception;
pub mod inputs;
pub mod metrics;
pub mod preprocess;

pub use error::{EvalError, Result};
