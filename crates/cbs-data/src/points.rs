//! Low-dimensional point data (toy distributions such as Gaussian mixtures).

use crate::{DataError, Result};

/// `n` points of dimension `dim`, row-major, unlabelled.
#[derive(Clone, Debug)]
pub struct PointDataset {
    pub points: Vec<f32>,
    pub dim: usize,
}

impl PointDataset {
    pub fn new(points: Vec<f32>, dim: usize) -> Result<Self> {
        if dim == 0 || !points.len().is_multiple_of(dim) || points.is_empty() {
            return Err(DataError::Invalid {
                field: "points",
                reason: format!(
                    "{} values do not form points of dimension {dim}",
                    points.len()
                ),
            });
        }
        if let Some(bad) = points.iter().find(|v| !v.is_finite()) {
            return Err(DataError::Invalid {
                field: "points",
                reason: format!("non-finite value {bad}"),
            });
        }
        Ok(Self { points, dim })
    }
}

/// What the trainer needs of a data set: its size, the shape of one sample, its classes, and
/// batches of float samples with their labels.
/// `Sync` so that a loader thread can prepare the next batches while a step runs.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shape of one sample: `[C, H, W]` for images, `[D]` for points.
    fn sample_shape(&self) -> Vec<usize>;
    /// 0 for unlabelled data.
    fn num_classes(&self) -> usize;
    /// The samples at `indices` as floats (images mirrored where `flips` is set) and labels.
    fn batch(&self, indices: &[usize], flips: &[bool]) -> Result<(Vec<f32>, Vec<u32>)>;
}

impl Dataset for crate::ImageDataset {
    fn len(&self) -> usize {
        crate::ImageDataset::len(self)
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.channels, self.height, self.width]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn batch(&self, indices: &[usize], flips: &[bool]) -> Result<(Vec<f32>, Vec<u32>)> {
        crate::ImageDataset::batch(self, indices, flips)
    }
}

impl Dataset for PointDataset {
    fn len(&self) -> usize {
        self.points.len() / self.dim
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.dim]
    }
    fn num_classes(&self) -> usize {
        0
    }
    /// Points are not mirrored: `flips` is ignored.
    fn batch(&self, indices: &[usize], _flips: &[bool]) -> Result<(Vec<f32>, Vec<u32>)> {
        let n = Dataset::len(self);
        let mut out = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            if i >= n {
                return Err(DataError::Invalid {
                    field: "indices",
                    reason: format!("index {i} out of range for {n} points"),
                });
            }
            out.extend_from_slice(&self.points[i * self.dim..(i + 1) * self.dim]);
        }
        Ok((out, vec![0; indices.len()]))
    }
}
