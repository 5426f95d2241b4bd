//! The bottom of the `cbs` workspace: the conventions every other crate shares and that
//! must never exist twice.
//!
//! - [`atomic`]: the one way to write a file (or commit a directory) that must survive a crash:
//!   a temporary file in the same directory, fsync, rename over the target, fsync the
//!   directory. Readers see the old content or the complete new one, never a prefix.
//! - [`rng`]: every random stream of the project, named by its [`rng::Purpose`] and built by
//!   one constructor, [`rng::stream`]`(seed, purpose, counter)`.
//! - [`text`]: the one way to read a small text input, with a size cap and a file-type check.
//!
//! This crate depends on no other `cbs` crate.

pub mod atomic;
pub mod rng;
pub mod text;

pub use atomic::AtomicError;
pub use text::{read_text, TextError};
