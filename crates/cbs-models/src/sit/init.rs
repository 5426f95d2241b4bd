//! All of SiT's initialisation in one place, from a seeded generator.
//!
//! As the reference: xavier-uniform linears with zero bias (the patch projection viewed as a
//! linear), N(0, 0.02) label table and timestep-MLP weights, and zeros for every adaLN output
//! layer and the final linear (adaLN-Zero: each block starts as the identity).

use candle_core::Var;

use crate::common::init::{init_with, Rule};
use crate::Result;

fn rule(name: &str) -> Rule {
    if name.ends_with(".bias") {
        return Rule::Zero;
    }
    if name.contains("adaLN_modulation") || name.starts_with("final_layer.linear") {
        return Rule::Zero;
    }
    if name.starts_with("y_embedder.") || name.starts_with("t_embedder.mlp.") {
        return Rule::Normal(0.02);
    }
    Rule::Xavier
}

/// Overwrite every variable of `vars` (name → var) with its reference initialisation.
/// Variables are visited in sorted name order so the result depends on the seed alone.
pub fn init_sit(vars: &[(String, Var)], seed: u64) -> Result<()> {
    init_with(vars, seed, rule)
}
