//! Helpers shared by the SiT, JiT, UNet and fused-kernel tests: seeded inputs, tensor
//! read-outs, the finite-difference gradient check, the gradient-coverage assertion and the
//! shape-recording `VarBuilder` backend.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Seeded N(0, std²) samples of shape `dims`, converted to `dtype`.
pub(crate) fn randn_std(dims: &[usize], seed: u64, std: f64, dtype: DType) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let d = Normal::new(0.0, std).unwrap();
    let v: Vec<f64> = (0..n).map(|_| d.sample(&mut rng)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Seeded standard-normal samples of shape `dims`, converted to `dtype`.
pub(crate) fn randn(dims: &[usize], seed: u64, dtype: DType) -> Tensor {
    randn_std(dims, seed, 1.0, dtype)
}

/// Seeded f64 values uniform in `[-scale, scale)`, from a xorshift stream.
pub(crate) fn uniform(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Every element of `t`, flattened, as f64.
pub(crate) fn vals(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest element-wise `|a − b|`; panics when the shapes differ.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    vals(a)
        .iter()
        .zip(vals(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A 1-D tensor of times (or any values) in `dtype`.
pub(crate) fn ts(values: &[f64], dtype: DType) -> Tensor {
    Tensor::new(values, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A 1-D `u32` tensor of class labels.
pub(crate) fn labels(values: &[u32]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

/// The variables of `varmap`, sorted by name.
pub(crate) fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Panics, listing them, when any variable of `vars` has a missing, zero or non-finite
/// gradient in `grads`.
pub(crate) fn assert_every_param_has_gradient(vars: &[(String, Var)], grads: &GradStore) {
    let mut bad = Vec::new();
    for (name, var) in vars {
        match grads.get(var.as_tensor()) {
            None => bad.push(format!("{name}: no gradient")),
            Some(g) => {
                let m = vals(g).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                if !(m > 0.0 && m.is_finite()) {
                    bad.push(format!("{name}: gradient max |g| = {m}"));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "parameters without a gradient:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Finite-difference gradient check.

fn set_entry(var: &Var, base: &[f64], i: usize, value: f64) {
    let mut w = base.to_vec();
    w[i] = value;
    let t = Tensor::from_vec(w, var.dims(), var.device()).unwrap();
    var.set(&t).unwrap();
}

/// Relative tolerance of [`fd_check_model`].
pub(crate) enum Rtol<'a> {
    /// One tolerance for every tensor.
    Uniform(f64),
    /// A tolerance by tensor name; mismatch lines then state the tolerance they broke, which
    /// the test alone no longer tells.
    PerTensor(&'a dyn Fn(&str) -> f64),
}

/// What [`fd_check_model`] found.
pub(crate) struct FdReport {
    pub checked: usize,
    pub nonzero: usize,
    /// Largest relative error among entries whose error exceeds the rounding noise.
    pub worst: (f64, String),
    /// One line per entry outside the tolerance.
    pub failures: Vec<String>,
    /// Absolute error allowed for the rounding noise of the objective.
    pub noise: f64,
    /// Tensors checked: the parameters and the inputs `x` and `t`.
    pub tensors: usize,
}

impl FdReport {
    /// Panics, listing them, when any entry was outside the tolerance.
    pub fn assert_no_mismatch(&self) {
        assert!(
            self.failures.is_empty(),
            "gradient mismatches:\n{}",
            self.failures.join("\n")
        );
    }
}

/// Compares autograd with fourth-order central differences for the objective
/// `Σ forward(x, t, y)·r` on a fixed batch (x and r `[2, 2, 8, 8]`, t = [0.3, 0.85],
/// y = [1, 3]: a class and, for 3 classes, the null class). Every tensor of `vars`, then `x`
/// and `t`, is probed at `samples` seeded random entries (all of them when it has no more)
/// and at its largest gradient. Panics on a missing or misshapen gradient; mismatches are
/// returned, not asserted.
pub(crate) fn fd_check_model(
    vars: &[(String, Var)],
    forward: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
    samples: usize,
    rtol: Rtol,
) -> Result<FdReport, Box<dyn std::error::Error>> {
    let x = Var::from_tensor(&randn(&[2, 2, 8, 8], 1, DType::F64))?;
    let t = Var::from_tensor(&ts(&[0.3, 0.85], DType::F64))?;
    let y = labels(&[1, 3]);
    let r = randn(&[2, 2, 8, 8], 2, DType::F64);

    let terms = || {
        forward(x.as_tensor(), t.as_tensor(), &y)
            .unwrap()
            .mul(&r)
            .unwrap()
    };
    let objective = || terms().sum_all().unwrap().to_scalar::<f64>().unwrap();
    let grads = terms().sum_all()?.backward()?;

    let mut targets: Vec<(String, Var)> = vars.to_vec();
    targets.push(("<input x>".to_string(), x.clone()));
    targets.push(("<input t>".to_string(), t.clone()));

    // Fourth-order stencil: truncation (∝ h⁴) is negligible at h = 1e-4; the rounding noise of
    // the objective, ≈ ε·Σ|terms|, divided by h is the absolute error allowed on top of rtol.
    let h = 1e-4;
    let abs_terms = terms().abs()?.sum_all()?.to_scalar::<f64>()?;
    let noise = 20.0 * f64::EPSILON * abs_terms / h;
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut rep = FdReport {
        checked: 0,
        nonzero: 0,
        worst: (0.0, String::new()),
        failures: Vec::new(),
        noise,
        tensors: targets.len(),
    };
    for (name, var) in &targets {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for `{name}`"));
        assert_eq!(g.dims(), var.dims(), "gradient shape of `{name}`");
        let g = vals(g);
        let base = vals(var.as_tensor());
        let n = base.len();
        let mut idx: Vec<usize> = if n <= samples {
            (0..n).collect()
        } else {
            (0..samples).map(|_| rng.random_range(0..n)).collect()
        };
        idx.push(
            (0..n)
                .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
                .unwrap(),
        );
        let tol = match &rtol {
            Rtol::Uniform(tol) => *tol,
            Rtol::PerTensor(f) => f(name),
        };
        for i in idx {
            let at = |d: f64| {
                set_entry(var, &base, i, base[i] + d);
                objective()
            };
            let (p1, m1, p2, m2) = (at(h), at(-h), at(2.0 * h), at(-2.0 * h));
            set_entry(var, &base, i, base[i]);
            let fd = (8.0 * (p1 - m1) - (p2 - m2)) / (12.0 * h);
            let a = g[i];
            let err = (a - fd).abs();
            let rel = err / a.abs().max(fd.abs()).max(1e-8);
            rep.checked += 1;
            if a.abs() > 1e-6 {
                rep.nonzero += 1;
            }
            if err > noise && rel > rep.worst.0 {
                rep.worst = (rel, format!("{name}[{i}]: autograd {a:e} vs fd {fd:e}"));
            }
            if err > tol * a.abs().max(fd.abs()) + noise {
                rep.failures.push(match rtol {
                    Rtol::Uniform(_) => format!(
                        "{name}[{i}]: autograd {a:e} vs fd {fd:e} (rel {rel:e}, noise {noise:e})"
                    ),
                    Rtol::PerTensor(_) => format!(
                        "{name}[{i}]: autograd {a:e} vs fd {fd:e} (rel {rel:e}, tol {tol:e}, \
                         noise {noise:e})"
                    ),
                });
            }
        }
    }
    Ok(rep)
}

// ---------------------------------------------------------------------------------------------
// Shape recording.

/// The one shape recorder (`cbs_models::shapes`), under the name the tests use.
pub(crate) use cbs_models::shapes::ShapeRecorder as Recorder;
