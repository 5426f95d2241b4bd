//! Layers and tables that several backbones share: the timestep and label embedders of
//! SiT/DiT (JiT uses the same ones, with the same keys), the fixed 2-D sin-cos positions and the
//! initialisation rules.

mod embed;
pub mod init;
pub mod pos_embed;

pub use embed::{LabelEmbedder, TimestepEmbedder};
