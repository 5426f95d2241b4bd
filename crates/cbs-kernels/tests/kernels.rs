//! The kernels crate's integration tests: the inference convolution and the poolings against
//! candle's ops, the parallel loops, the per-op CPU dispatch, and the optimizer passes with
//! their device-side control. (The training ops are tested
//! against their composed versions and finite differences through the models' layers:
//! crates/cbs-models/tests.)

#[path = "kernels/conv_infer.rs"]
mod conv_infer;
#[path = "kernels/dispatch.rs"]
mod dispatch;
#[path = "kernels/optim.rs"]
mod optim;
#[path = "kernels/par.rs"]
mod par;
#[path = "kernels/pool.rs"]
mod pool;
