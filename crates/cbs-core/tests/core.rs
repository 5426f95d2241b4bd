//! Integration tests for cbs-core: the crash-safe writer and the random streams.

#[path = "core/atomic.rs"]
mod atomic;
#[path = "core/rng.rs"]
mod rng;
