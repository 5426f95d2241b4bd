//! Gradient buckets: many tensors sent as a few large flat buffers, as DDP does (a collective
//! per tensor would pay a launch and a latency per parameter).

use std::ops::Range;

use candle_core::{DType, Shape, Tensor};

use crate::Result;

/// The default bucket size: DDP's 25 MiB.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Consecutive ranges of `sizes` (elements per tensor) whose sums stay within `cap` elements; a
/// tensor larger than `cap` gets a bucket of its own.
pub fn bucket_ranges(sizes: &[usize], cap: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && filled + n > cap {
            out.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// How a list of tensors maps onto flat `dtype` buckets and back.
#[derive(Clone, Debug)]
pub struct Buckets {
    ranges: Vec<Range<usize>>,
    shapes: Vec<Shape>,
    dtypes: Vec<DType>,
    dtype: DType,
}

impl Buckets {
    /// Buckets of at most `cap_bytes` of `dtype` for tensors shaped like `tensors`.
    pub fn new(tensors: &[Tensor], dtype: DType, cap_bytes: usize) -> Self {
        let sizes: Vec<usize> = tensors.iter().map(|t| t.elem_count()).collect();
        let cap = (cap_bytes / dtype.size_in_bytes()).max(1);
        Self {
            ranges: bucket_ranges(&sizes, cap),
            shapes: tensors.iter().map(|t| t.shape().clone()).collect(),
            dtypes: tensors.iter().map(|t| t.dtype()).collect(),
            dtype,
        }
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// One contiguous 1-D tensor per bucket: its tensors flattened, cast and concatenated.
    pub fn flatten(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        self.ranges
            .iter()
            .map(|r| {
                let parts = tensors[r.clone()]
                    .iter()
                    .map(|t| t.flatten_all()?.to_dtype(self.dtype))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, 0)?.contiguous()?)
            })
            .collect()
    }

    /// The tensors again (shapes and dtypes of the originals) from [`Buckets::flatten`]'s output.
    pub fn unflatten(&self, flat: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.shapes.len());
        for (r, f) in self.ranges.iter().zip(flat) {
            let mut at = 0;
            for i in r.clone() {
                let n = self.shapes[i].elem_count();
                // (n,) → the original shape
                out.push(
                    f.narrow(0, at, n)?
                        .reshape(self.shapes[i].clone())?
                        .to_dtype(self.dtypes[i])?,
                );
                at += n;
            }
        }
        Ok(out)
    }
}
