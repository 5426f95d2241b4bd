//! The Stable Diffusion VAE (diffusers's `AutoencoderKL`, as `stabilityai/sd-vae-ft-mse` and
//! `-ema`): encoder and decoder for inference, loaded from a diffusers model directory.
//!
//! SiT and DiT train on its latents of ImageNet-256 (4×32×32, multiplied by 0.18215): `cbs
//! encode-latents` writes them, `cbs sample --vae` and `cbs decode` turn latent samples back
//! into images. Written here rather than taken from candle-transformers's Stable Diffusion
//! VAE so that it runs on this crate's kernels (the forward-only im2col convolution, the fused
//! GroupNorm + SiLU and attention: the VAE is convolution-bound), reads both attention key
//! layouts of published files and validates the config instead of assuming it.

mod config;
mod layers;
mod model;

pub use config::{VaeConfig, SD_VAE_SCALING_FACTOR};
pub use layers::NORM_EPS;
pub use model::{AutoencoderKl, Decoder, Encoder, Posterior, WEIGHT_FILES};
