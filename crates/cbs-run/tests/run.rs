//! Integration tests for cbs-run: the experts rule and directory, splits files, and the
//! checkpoint directory's visibility rules, config bounds.

#[path = "run/bounds.rs"]
mod bounds;
#[path = "run/checkpoint.rs"]
mod checkpoint;
#[path = "run/experts.rs"]
mod experts;
#[path = "run/splits.rs"]
mod splits;
#[path = "run/torch.rs"]
mod torch;
