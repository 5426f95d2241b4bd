//! The one integration-test binary of cbs-torch.

#[path = "torch/fixtures.rs"]
mod fixtures;
#[path = "torch/hostile.rs"]
mod hostile;
#[path = "torch/pickles.rs"]
mod pickles;
#[path = "torch/roundtrip.rs"]
mod roundtrip;
