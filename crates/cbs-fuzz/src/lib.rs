//! `cbs-fuzz`: an in-process fuzz harness, on stable Rust, for every file reader of `cbs`.
//!
//! For each [`target::Target`] it generates valid files with the project's own writers
//! ([`gen`]), mutates them ([`mutate`]), writes each input to a temporary file or folder and
//! hands that path to the public reader. Panics, allocations over a cap ([`alloc`], installed
//! as the binary's `#[global_allocator]`) and hangs are failures; clean errors are what
//! malformed input must give. Every input is reproducible from `(target, seed, index)`, and
//! failing ones are saved with a note on how to replay them ([`harness`]). See
//! `docs/fuzzing.md`.

pub mod alloc;
pub mod gen;
pub mod harness;
pub mod mutate;
pub mod target;

pub use harness::{Options, Outcome, Report};
pub use target::{Target, TargetSpec};
