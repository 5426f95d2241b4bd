//! Parameter names and shapes of any architecture, without allocating its weights.
//!
//! The real constructor runs against a backend that records each request and hands back a
//! broadcast scalar, so `cbs inspect sit-xl-2` is instant and cannot drift from the model code.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result as CResult, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::spec::{Architecture, Model};
use crate::Result;

type ShapeLog = Arc<Mutex<Vec<(String, Vec<usize>)>>>;

struct Recorder(ShapeLog);

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> CResult<Tensor> {
        self.0
            .lock()
            .expect("recorder lock")
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
    let log = Arc::new(Mutex::new(Vec::new()));
    let vb = VarBuilder::from_backend(Box::new(Recorder(log.clone())), DType::F32, Device::Cpu);
    // Nothing runs: the policy is irrelevant.
    let model = Model::new(arch, crate::Kernels::Composed, vb)?;
    let vars = log.lock().expect("recorder lock").clone();
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
