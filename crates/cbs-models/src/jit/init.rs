//! All of JiT's initialisation in one place, from a seeded generator.
//!
//! As the reference `initialize_weights`: xavier-uniform linears with zero bias (both patch
//! projections viewed as linears `[out, in·k·k]`), N(0, 0.02) for the label table, the two
//! timestep-MLP weights and the in-context token positions, zeros for every adaLN output layer
//! and the final linear (adaLN-Zero), ones for every RMSNorm weight.

use candle_core::{Tensor, Var};

use crate::common::init::{init_with, Rule};
use crate::Result;

/// RMSNorm weights (`norm1`, `norm2`, `attn.q_norm`, `attn.k_norm`, `final_layer.norm_final`).
fn is_norm_weight(name: &str) -> bool {
    name.ends_with("norm1.weight")
        || name.ends_with("norm2.weight")
        || name.ends_with("q_norm.weight")
        || name.ends_with("k_norm.weight")
        || name.ends_with("norm_final.weight")
}

fn rule(name: &str) -> Rule {
    if name.ends_with(".bias") {
        return Rule::Zero;
    }
    if name.contains("adaLN_modulation") || name.starts_with("final_layer.linear") {
        return Rule::Zero;
    }
    if name.starts_with("y_embedder.")
        || name.starts_with("t_embedder.mlp.")
        || name == "in_context_posemb"
    {
        return Rule::Normal(0.02);
    }
    Rule::Xavier
}

/// Overwrite every variable of `vars` (name → var) with its reference initialisation.
/// Random draws visit the variables in sorted name order, so the result depends on the seed
/// alone.
pub fn init_jit(vars: &[(String, Var)], seed: u64) -> Result<()> {
    type Named = Vec<(String, Var)>;
    let (norms, rest): (Named, Named) = vars.iter().cloned().partition(|(n, _)| is_norm_weight(n));
    init_with(&rest, seed, rule)?;
    for (_, var) in norms {
        let ones = Tensor::ones(var.dims(), var.dtype(), var.device())?;
        var.set(&ones)?;
    }
    Ok(())
}
