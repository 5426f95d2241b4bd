//! Parameter names and shapes of any architecture, without allocating its weights.
//!
//! The real constructor runs against a backend that records each request and hands back a
//! broadcast scalar, so `cbs inspect sit-xl-2` is instant and cannot drift from the model code.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result as CResult, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::spec::{Architecture, Model};
use crate::Result;

/// The `(name, dims)` requests a [`ShapeRecorder`] has served, in order.
type ShapeLog = Arc<Mutex<Vec<(String, Vec<usize>)>>>;

/// A `VarBuilder` backend that logs the name and shape of every tensor a constructor requests
/// and serves a broadcast zero scalar, so a network of any size is built without allocating
/// its weights. The one shape recorder: `cbs inspect`, the Inception-v3 key list and the model
/// tests all build through it.
#[derive(Clone, Default)]
pub struct ShapeRecorder(ShapeLog);

impl ShapeRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `VarBuilder` over a clone of this recorder (the log is shared).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The `(name, dims)` requests so far, in order.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.0.lock().expect("shape recorder lock").clone()
    }
}

impl candle_nn::var_builder::SimpleBackend for ShapeRecorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> CResult<Tensor> {
        self.0
            .lock()
            .expect("shape recorder lock")
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> CResult<Tensor> {
        candle_core::bail!("shape recorder cannot serve `{name}` without a shape")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// `(name, dims)` of every tensor of the reference `state_dict`, sorted by name.
pub fn parameter_shapes(arch: &Architecture) -> Result<Vec<(String, Vec<usize>)>> {
    let (mut out, buffers) = record(arch)?;
    out.extend(buffers);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Names of the fixed (untrained) buffers among [`parameter_shapes`] (e.g. `pos_embed`).
pub fn buffer_names(arch: &Architecture) -> Result<Vec<String>> {
    Ok(record(arch)?.1.into_iter().map(|(n, _)| n).collect())
}

type Shapes = Vec<(String, Vec<usize>)>;

/// Trainable variables (recorded, not allocated) and buffers of the network.
fn record(arch: &Architecture) -> Result<(Shapes, Shapes)> {
    let rec = ShapeRecorder::new();
    // Nothing runs: the policy is irrelevant.
    let vb = rec.var_builder(DType::F32, &Device::Cpu);
    let model = Model::new(arch, crate::Kernels::Composed, vb)?;
    let vars = rec.shapes();
    let buffers = model
        .buffers()
        .into_iter()
        .map(|(n, t)| (n, t.dims().to_vec()))
        .collect();
    Ok((vars, buffers))
}

/// Total element count, buffers included (what `sum(p.numel() for p in state_dict)` gives).
pub fn parameter_count(arch: &Architecture) -> Result<usize> {
    Ok(parameter_shapes(arch)?
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum())
}
