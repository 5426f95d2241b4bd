//! All of the UNet's initialisation in one place, from a seeded generator.
//!
//! As the reference leaves it (PyTorch defaults plus guided-diffusion's `zero_module`):
//! - conv / linear weights: `kaiming_uniform_(a = √5)`, i.e. U(−1/√fan_in, 1/√fan_in) with
//!   `fan_in = in_channels · kernel elements`; their biases U(−1/√fan_in, 1/√fan_in) with the
//!   weight's fan_in;
//! - GroupNorm: weight 1, bias 0;
//! - `label_emb` (`nn.Embedding`): N(0, 1);
//! - `zero_module` layers, weight and bias 0: every res block's last conv (`out_layers.3`),
//!   every attention block's `proj_out`, and the final conv `out.2`.
//!
//! Layers are told apart by name and shape: 1-D `weight`s are GroupNorm scales (conv and
//! linear weights have ≥ 2 dims).

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use cbs_core::rng::{stream, Purpose};
use rand_distr::{Distribution, Normal, Uniform};

use crate::{ModelError, Result};

enum Rule {
    Zero,
    One,
    Normal(f64),
    /// U(−b, b).
    Uniform(f64),
}

fn is_zero_module(name: &str) -> bool {
    name.contains(".out_layers.3.") || name.contains(".proj_out.") || name.starts_with("out.2.")
}

fn fan_in(dims: &[usize]) -> usize {
    dims.iter().skip(1).product::<usize>().max(1)
}

fn rule(name: &str, dims: &[usize], shapes: &HashMap<&str, Vec<usize>>) -> Result<Rule> {
    if is_zero_module(name) {
        return Ok(Rule::Zero);
    }
    if name == "label_emb.weight" {
        return Ok(Rule::Normal(1.0));
    }
    if name.ends_with(".weight") {
        return Ok(if dims.len() == 1 {
            Rule::One
        } else {
            Rule::Uniform(1.0 / (fan_in(dims) as f64).sqrt())
        });
    }
    if let Some(stem) = name.strip_suffix(".bias") {
        let weight = shapes
            .get(format!("{stem}.weight").as_str())
            .ok_or_else(|| ModelError::Invalid(format!("unet init: `{name}` has no weight")))?;
        return Ok(if weight.len() == 1 {
            Rule::Zero
        } else {
            Rule::Uniform(1.0 / (fan_in(weight) as f64).sqrt())
        });
    }
    Err(ModelError::Invalid(format!(
        "unet init: no rule for parameter `{name}`"
    )))
}

/// Overwrite every variable of `vars` (name → var) with its reference initialisation. Variables
/// are visited in sorted name order and drawn from one ChaCha8 stream, so the result depends on
/// the seed alone.
pub fn init_unet(vars: &[(String, Var)], seed: u64) -> Result<()> {
    let shapes: HashMap<&str, Vec<usize>> = vars
        .iter()
        .map(|(n, v)| (n.as_str(), v.dims().to_vec()))
        .collect();
    let mut rng = stream(seed, Purpose::WeightInit, 0);
    let mut sorted: Vec<&(String, Var)> = vars.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in sorted {
        let dims = var.dims().to_vec();
        let n = var.elem_count();
        let values: Vec<f64> = match rule(name, &dims, &shapes)? {
            Rule::Zero => vec![0.0; n],
            Rule::One => vec![1.0; n],
            Rule::Normal(std) => {
                let d = Normal::new(0.0, std).expect("positive std");
                (0..n).map(|_| d.sample(&mut rng)).collect()
            }
            Rule::Uniform(b) => {
                let d = Uniform::new(-b, b).expect("finite bound");
                (0..n).map(|_| d.sample(&mut rng)).collect()
            }
        };
        let t = Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}
