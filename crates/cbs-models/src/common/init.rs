//! The initialisation rules the backbones share, drawn from the seeded weight-init stream:
//! each backbone's `init` module maps parameter names to a [`Rule`] and calls [`init_with`].

use candle_core::{Tensor, Var};
use cbs_core::rng::{stream, Purpose};
use rand_distr::{Distribution, Normal, Uniform};

use crate::Result;

/// How one parameter is initialised.
pub enum Rule {
    Zero,
    Normal(f64),
    /// Xavier-uniform with fan_out = dims[0], fan_in = the rest (conv weights as linears).
    Xavier,
}

/// Xavier-uniform weights and zero biases (the MLP's initialisation).
pub fn init_xavier(vars: &[(String, Var)], seed: u64) -> Result<()> {
    init_with(vars, seed, |name| {
        if name.ends_with(".bias") {
            Rule::Zero
        } else {
            Rule::Xavier
        }
    })
}

/// Overwrite every variable with the value its [`Rule`] gives, visiting them in sorted name
/// order so that the result depends on the seed alone.
pub fn init_with(vars: &[(String, Var)], seed: u64, rule: impl Fn(&str) -> Rule) -> Result<()> {
    let mut rng = stream(seed, Purpose::WeightInit, 0);
    let mut sorted: Vec<&(String, Var)> = vars.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in sorted {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f64> = match rule(name) {
            Rule::Zero => vec![0.0; n],
            Rule::Normal(std) => {
                let d = Normal::new(0.0, std).expect("positive std");
                (0..n).map(|_| d.sample(&mut rng)).collect()
            }
            Rule::Xavier => {
                // fan_out = dims[0], fan_in = the rest (conv weights flattened like a linear).
                let fan_out = dims[0] as f64;
                let fan_in = (n / dims[0].max(1)) as f64;
                let bound = (6.0 / (fan_in + fan_out)).sqrt();
                let d = Uniform::new_inclusive(-bound, bound).expect("finite bound");
                (0..n).map(|_| d.sample(&mut rng)).collect()
            }
        };
        let t = Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Small random values everywhere, adaLN and final layers included, so that every parameter
/// influences the output (for gradient tests; the reference init zeroes whole branches).
pub fn init_all_random(vars: &[(String, Var)], seed: u64, std: f64) -> Result<()> {
    let mut rng = stream(seed, Purpose::WeightInit, 0);
    let mut sorted: Vec<&(String, Var)> = vars.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let d = Normal::new(0.0, std).expect("positive std");
    for (_, var) in sorted {
        let n = var.elem_count();
        let values: Vec<f64> = (0..n).map(|_| d.sample(&mut rng)).collect();
        var.set(&Tensor::from_vec(values, var.dims(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
