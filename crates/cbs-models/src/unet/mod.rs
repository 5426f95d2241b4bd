//! UNet (guided-diffusion, as torchcfm's `UNetModelWrapper` builds it), layer for layer with
//! the reference `state_dict` names: sinusoidal time embedding → MLP, optional label table,
//! an encoder of res blocks (+ attention at chosen resolutions) and strided-conv downsamples,
//! a res/attention/res middle block, a decoder consuming the encoder's outputs as skips with
//! nearest-neighbour + conv upsamples, and GroupNorm → SiLU → zero-initialised conv out.

mod config;
pub mod conv;
pub mod init;
pub mod layers;
mod model;

pub use config::UnetConfig;
pub use model::Unet;
