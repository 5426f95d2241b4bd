//! Expert-switching sampling: one network per time segment, a step edge on every knot, and
//! each step integrated by the expert that owns it.

use std::path::Path;

use candle_core::Device;
use cbs_flow::solver::segmented_grid;
use cbs_run::checkpoint::{self, LoadedModel, WeightsKind};
use cbs_run::experts::{expert_dir, expert_interval, read_splits, splits_path};
use cbs_run::Precision;
use cbs_run::SplitsFile;

use crate::{Result, SampleError};

/// `experts[i]` owns `[edges[i], edges[i+1]]`.
pub struct ExpertSet<F> {
    pub edges: Vec<f64>,
    pub experts: Vec<F>,
}

impl<F> ExpertSet<F> {
    pub fn new(knots: &[f64], experts: Vec<F>) -> Result<Self> {
        let mut edges = vec![0.0];
        edges.extend_from_slice(knots);
        edges.push(1.0);
        if experts.len() != edges.len() - 1 {
            return Err(SampleError::Invalid {
                option: "experts",
                message: format!("{} experts for {} segments", experts.len(), edges.len() - 1),
            });
        }
        if !edges.windows(2).all(|w| w[1] > w[0]) {
            return Err(SampleError::Invalid {
                option: "knots",
                message: format!("{knots:?} are not strictly increasing inside (0, 1)"),
            });
        }
        Ok(Self { edges, experts })
    }

    /// The step grid (knots are step edges; steps shared in proportion to segment length) and,
    /// for each step, the expert that owns it.
    pub fn plan(&self, steps: usize) -> (Vec<f64>, Vec<usize>) {
        segmented_grid(&self.edges[1..self.edges.len() - 1], steps)
    }
}

/// Load every expert of a `train-experts` directory (layout and training rule:
/// [`cbs_run::experts`]), checking that expert `i` was trained on its interval of the stored
/// splits and that all experts share one sample shape.
pub fn load_experts(
    root: &Path,
    which: WeightsKind,
    precision: Precision,
    device: &Device,
) -> Result<(SplitsFile, ExpertSet<LoadedModel>)> {
    let splits = read_splits(root).map_err(|e| SampleError::File {
        path: splits_path(root),
        message: e.to_string(),
    })?;
    let segments = splits.edges().len() - 1;
    let mut experts = Vec::with_capacity(segments);
    for i in 0..segments {
        let dir = expert_dir(root, i);
        let m = checkpoint::load_for_inference(&dir, which, precision, device).map_err(|e| {
            SampleError::File {
                path: dir.clone(),
                message: format!("expert {i}: {e}"),
            }
        })?;
        let [a, b] = m.config.train.t_range;
        let [lo, hi] = expert_interval(&splits, i);
        if (a - lo).abs() > 1e-12 || (b - hi).abs() > 1e-12 {
            return Err(SampleError::File {
                path: dir,
                message: format!(
                    "expert {i} was trained on [{a}, {b}] but splits.toml gives segment \
                     [{lo}, {hi}]"
                ),
            });
        }
        if let Some(first) = experts.first() {
            let first: &LoadedModel = first;
            if first.architecture.sample_shape() != m.architecture.sample_shape()
                || first.architecture.num_classes() != m.architecture.num_classes()
            {
                return Err(SampleError::File {
                    path: dir,
                    message: format!(
                        "expert {i} has another sample shape or label set than expert 0"
                    ),
                });
            }
        }
        experts.push(m);
    }
    let set = ExpertSet::new(&splits.knots, experts)?;
    Ok((splits, set))
}
