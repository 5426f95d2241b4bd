//! Expert-switching sampling: one network per time segment, a step edge on every knot, and
//! each step integrated by the expert that owns it.

use std::path::{Path, PathBuf};

use candle_core::Device;
use cbs_flow::solver::segmented_grid;
use cbs_split::SplitsFile;
use cbs_train::checkpoint::{self, LoadedModel, WeightsKind};

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

/// Directory layout written by `cbs train-experts`: `DIR/splits.toml`, `DIR/expert-<i>/`.
pub fn expert_dir(root: &Path, i: usize) -> PathBuf {
    root.join(format!("expert-{i}"))
}

/// Load every expert of a `train-experts` directory, checking that expert `i` was trained on
/// segment `i` of the stored splits and that all experts share one sample shape.
pub fn load_experts(
    root: &Path,
    which: WeightsKind,
    device: &Device,
) -> Result<(SplitsFile, ExpertSet<LoadedModel>)> {
    let splits_path = root.join("splits.toml");
    let splits = SplitsFile::from_file(&splits_path).map_err(|e| SampleError::File {
        path: splits_path.clone(),
        message: e.to_string(),
    })?;
    let edges = splits.edges();
    let mut experts = Vec::with_capacity(edges.len() - 1);
    for i in 0..edges.len() - 1 {
        let dir = expert_dir(root, i);
        let m =
            checkpoint::load_for_inference(&dir, which, device).map_err(|e| SampleError::File {
                path: dir.clone(),
                message: format!("expert {i}: {e}"),
            })?;
        let [a, b] = m.config.train.t_range;
        if (a - edges[i]).abs() > 1e-12 || (b - edges[i + 1]).abs() > 1e-12 {
            return Err(SampleError::File {
                path: dir,
                message: format!(
                    "expert {i} was trained on [{a}, {b}] but splits.toml gives segment \
                     [{}, {}]",
                    edges[i],
                    edges[i + 1]
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
