//! Sampling for `cbs`: integrate a velocity field from seeded (or given) noise and write the
//! results as a PNG grid, individual PNGs and an ADM-evaluator `samples.npz`.

pub mod experts;
pub mod images;
pub mod vae;
pub mod velocity_error;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use cbs_core::rng::{self, Purpose};
use cbs_flow::sde::{integrate_sde, BrownianStreams};
use cbs_flow::solver::{integrate_counted, Solver};
use cbs_flow::VelocityField;
use rand_distr::{Distribution, StandardNormal};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid sampling option `{option}`: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
    #[error(transparent)]
    Write(#[from] cbs_core::AtomicError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] cbs_data::DataError),
}

pub type Result<T> = std::result::Result<T, SampleError>;

/// What to draw and how.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub num: usize,
    /// Time grid from 0 to 1 (uniform, or with a step edge on every expert knot).
    pub grid: Vec<f64>,
    pub solver: Solver,
    pub seed: u64,
    /// Labels, repeated cyclically to `num`; `None` cycles through all classes.
    pub labels: Option<Vec<u32>>,
    /// Start from this noise (`[num, C, H, W]`) instead of seeded noise.
    pub noise: Option<Tensor>,
    /// Samples integrated together (memory bound). The noise does not depend on it; the
    /// results only up to floating-point rounding.
    pub batch: usize,
    /// Tolerances of the adaptive solver (ignored by the fixed-step ones).
    pub tolerances: cbs_flow::adaptive::Tolerances,
    /// The model's path and the diffusion of the SDE sampler (`Solver::EulerMaruyama`).
    pub sde: Option<cbs_flow::sde::SdeSettings>,
}

/// Per-sample shape and the label space of the field being sampled.
#[derive(Clone, Debug)]
pub struct SampleShape {
    /// `[C, H, W]` for images, `[D]` for points.
    pub dims: Vec<usize>,
    /// 0 for unconditional fields.
    pub num_classes: usize,
}

impl SampleShape {
    /// `[num, dims...]`.
    pub fn batch(&self, num: usize) -> Vec<usize> {
        std::iter::once(num)
            .chain(self.dims.iter().copied())
            .collect()
    }
}

/// Labels of every sample: the given list repeated, or all classes in turn.
pub fn labels_for(opts: &SampleOptions, shape: &SampleShape) -> Result<Option<Vec<u32>>> {
    if shape.num_classes == 0 {
        return Ok(None);
    }
    let base: Vec<u32> = match &opts.labels {
        Some(l) if l.is_empty() => {
            return Err(SampleError::Invalid {
                option: "labels",
                message: "empty list".into(),
            })
        }
        Some(l) => {
            if let Some(bad) = l.iter().find(|&&v| v as usize >= shape.num_classes) {
                return Err(SampleError::Invalid {
                    option: "labels",
                    message: format!(
                        "label {bad} is out of range: the model has {} classes (0..={})",
                        shape.num_classes,
                        shape.num_classes - 1
                    ),
                });
            }
            l.clone()
        }
        None => (0..shape.num_classes as u32).collect(),
    };
    Ok(Some((0..opts.num).map(|i| base[i % base.len()]).collect()))
}

/// Seeded standard-normal noise `[num, dims...]`, independent of the batch size.
pub fn seeded_noise(num: usize, shape: &SampleShape, seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = rng::stream(seed, Purpose::SampleNoise, 0);
    let dims = shape.batch(num);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(v, dims, device)?)
}

/// Read a `.npy` noise array and check it against the expected `[num, dims...]`.
pub fn read_noise(path: &Path, num: usize, shape: &SampleShape, device: &Device) -> Result<Tensor> {
    let file_err = |message: String| SampleError::File {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(m) if m.is_dir() => return Err(file_err("is a directory, not a .npy file".into())),
        Ok(_) => {
            return Err(file_err(
                "is not a regular file (a FIFO, socket or device)".into(),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(file_err("noise file not found".into()))
        }
        Err(e) => return Err(file_err(format!("cannot read: {e}"))),
    }
    // cbs-data's reader checks the declared shape against the file's length before
    // allocating, so a corrupt header is an error rather than a panic or an abort.
    let a = cbs_data::read_npy(path).map_err(|e| file_err(e.reason()))?;
    let (dims, dtype) = (&a.header.shape, a.header.dtype);
    let want = shape.batch(num);
    if dims != &want {
        return Err(file_err(format!(
            "noise has shape {dims:?}, expected {want:?} (num, then the model's sample shape)"
        )));
    }
    if !dtype.is_float() {
        return Err(file_err(format!(
            "noise has dtype {}, expected a float array",
            dtype.name()
        )));
    }
    if a.header.fortran_order {
        return Err(file_err(
            "noise is stored in Fortran order; save np.ascontiguousarray(noise)".into(),
        ));
    }
    let v = a.to_f32().unwrap_or_default();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(file_err(format!(
            "noise holds a non-finite value ({} at flat index {i}); every sample would be NaN",
            v[i]
        )));
    }
    Ok(Tensor::from_vec(v, want, device)?)
}

/// Integrate `num` samples; `field_for_step(i)` gives the field that owns step `i` of the grid.
/// `progress(done_steps, total_steps)` counts steps over all batches. Returns `[num, dims...]`.
pub fn generate<'a>(
    field_for_step: &dyn Fn(usize) -> &'a dyn VelocityField,
    shape: &SampleShape,
    opts: &SampleOptions,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Option<Vec<u32>>)> {
    generate_counted(field_for_step, shape, opts, device, progress).map(|(x, l, _)| (x, l))
}

/// [`generate`], also returning the number of velocity evaluations (summed over batches;
/// with guidance each counts once, though it runs the network twice).
pub fn generate_counted<'a>(
    field_for_step: &dyn Fn(usize) -> &'a dyn VelocityField,
    shape: &SampleShape,
    opts: &SampleOptions,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Option<Vec<u32>>, usize)> {
    if opts.num == 0 || opts.batch == 0 {
        return Err(SampleError::Invalid {
            option: "num/batch",
            message: "must be positive".into(),
        });
    }
    if opts.grid.len() < 2 {
        return Err(SampleError::Invalid {
            option: "steps",
            message: "at least one step is needed".into(),
        });
    }
    let labels = labels_for(opts, shape)?;
    let noise = match &opts.noise {
        Some(n) => n.clone(),
        None => seeded_noise(opts.num, shape, opts.seed, device)?,
    };
    let steps = opts.grid.len() - 1;
    let batches = opts.num.div_ceil(opts.batch);
    let total = steps * batches;
    let mut outs = Vec::with_capacity(batches);
    let mut evals = 0;
    for bi in 0..batches {
        let start = bi * opts.batch;
        let len = opts.batch.min(opts.num - start);
        let x0 = noise.narrow(0, start, len)?;
        let y = match &labels {
            Some(l) => Some(Tensor::from_vec(
                l[start..start + len].to_vec(),
                len,
                device,
            )?),
            None => None,
        };
        let done = bi * steps;
        let (x, n) = if opts.solver.is_stochastic() {
            let sde = opts.sde.ok_or_else(|| SampleError::Invalid {
                option: "solver",
                message: "euler-maruyama needs the SDE settings (path, diffusion)".into(),
            })?;
            let streams = (start..start + len)
                .map(|i| rng::stream(opts.seed, Purpose::SdeNoise, i as u64))
                .collect();
            let mut brownian = BrownianStreams::new(streams, &shape.dims, x0.dtype(), x0.device());
            integrate_sde(
                &x0,
                &opts.grid,
                &sde,
                y.as_ref(),
                field_for_step,
                &mut |_| brownian.draw(),
                &mut |i, _| progress(done + i, total),
            )?
        } else {
            integrate_counted(
                &x0,
                &opts.grid,
                opts.solver,
                opts.tolerances,
                y.as_ref(),
                field_for_step,
                &mut |i, _| progress(done + i, total),
            )?
        };
        evals += n;
        outs.push(x);
    }
    Ok((Tensor::cat(&outs, 0)?, labels, evals))
}
