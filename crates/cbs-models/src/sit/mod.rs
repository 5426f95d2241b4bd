//! SiT (Scalable Interpolant Transformer), layer for layer as the reference implementation:
//! patch embedding + fixed 2-D sin-cos positions, adaLN-Zero transformer blocks conditioned on
//! `c = t_embed(t) + y_embed(y)`, a final adaLN layer and unpatchify.

mod config;
pub mod init;
pub(crate) mod layers;
mod model;

pub use config::SitConfig;
pub use model::Sit;
