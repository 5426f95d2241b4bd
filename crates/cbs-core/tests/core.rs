//! Integration tests for cbs-core: the crash-safe writer, the random streams and the capped text reader.

#[path = "core/atomic.rs"]
mod atomic;
#[path = "core/rng.rs"]
mod rng;
#[path = "core/text.rs"]
mod text;
