use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{FinalLayer, PatchEmbed, SitBlock};
use super::SitConfig;
use crate::common::{pos_embed, LabelEmbedder, TimestepEmbedder};

/// The SiT network. `forward` returns the velocity (the first half of the channels when
/// `learn_sigma` is set, as the reference does).
pub struct Sit {
    x_embedder: PatchEmbed,
    /// Fixed buffer `[1, N, hidden]`; part of the reference `state_dict` but not trained.
    pos_embed: Tensor,
    t_embedder: TimestepEmbedder,
    y_embedder: LabelEmbedder,
    blocks: Vec<SitBlock>,
    final_layer: FinalLayer,
    cfg: SitConfig,
}

impl Sit {
    pub fn new(cfg: &SitConfig, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..cfg.depth)
            .map(|i| SitBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let (g, h) = (cfg.grid_size(), cfg.hidden_size);
        let pos_embed = Tensor::from_vec(pos_embed::sincos_2d(h, g), (1, g * g, h), vb.device())?
            .to_dtype(vb.dtype())?;
        Ok(Self {
            x_embedder: PatchEmbed::new(cfg, vb.pp("x_embedder"))?,
            pos_embed,
            t_embedder: TimestepEmbedder::new(h, cfg.kernels, vb.pp("t_embedder"))?,
            y_embedder: LabelEmbedder::new(cfg.label_rows(), h, vb.pp("y_embedder"))?,
            blocks,
            final_layer: FinalLayer::new(cfg, vb.pp("final_layer"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &SitConfig {
        &self.cfg
    }

    /// The fixed positional buffer, saved under `pos_embed` like the reference.
    pub fn pos_embed(&self) -> &Tensor {
        &self.pos_embed
    }

    /// `x`: `[B, C, H, W]`, `t`: `[B]` in [0, 1], `y`: `[B]` labels (the null class is
    /// `num_classes`). Returns the velocity `[B, C, H, W]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        let img = self.forward_raw(x, t, y)?;
        if self.cfg.learn_sigma {
            img.narrow(1, 0, self.cfg.in_channels)
        } else {
            Ok(img)
        }
    }

    /// The whole final layer `[B, out_channels, H, W]`: the velocity and, with `learn_sigma`,
    /// the variance channels (DiT's `forward` returns them; SiT's drops them).
    pub fn forward_raw(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        let mut h = self.x_embedder.forward(x)?.broadcast_add(&self.pos_embed)?; // [B, N, hidden]
        let c = (self.t_embedder.forward(t)? + self.y_embedder.forward(y)?)?; // [B, hidden]
        for block in &self.blocks {
            h = block.forward(&h, &c)?;
        }
        let out = self.final_layer.forward(&h, &c)?; // [B, N, p²·out_channels]
        self.unpatchify(&out) // [B, out_channels, H, W]
    }

    /// The stages of [`Sit::forward`] for activation checkpointing: the embeddings
    /// (`h0` `[B, N, hidden]` and the conditioning `[c]`), block `i`, and the head (final layer,
    /// unpatchify, the velocity channels).
    pub(crate) fn stem(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let h = self.x_embedder.forward(x)?.broadcast_add(&self.pos_embed)?; // [B, N, hidden]
        let c = (self.t_embedder.forward(t)? + self.y_embedder.forward(y)?)?; // [B, hidden]
        Ok((h, vec![c]))
    }

    pub(crate) fn stage(&self, i: usize, h: &Tensor, ctx: &[Tensor]) -> Result<Tensor> {
        self.blocks[i].forward(h, &ctx[0])
    }

    pub(crate) fn head(&self, h: &Tensor, ctx: &[Tensor]) -> Result<Tensor> {
        let out = self.final_layer.forward(h, &ctx[0])?; // [B, N, p²·out_channels]
        let img = self.unpatchify(&out)?; // [B, out_channels, H, W]
        if self.cfg.learn_sigma {
            img.narrow(1, 0, self.cfg.in_channels)
        } else {
            Ok(img)
        }
    }

    pub(crate) fn num_stages(&self) -> usize {
        self.blocks.len()
    }

    /// `[B, N, p²·c]` → `[B, c, H, W]` (the reference's `nhwpqc → nchpwq`).
    fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, _) = x.dims3()?;
        let c = self.cfg.out_channels();
        let p = self.cfg.patch_size;
        let g = self.cfg.grid_size();
        x.reshape((b, g, g, p, p, c))? // [B, gh, gw, p, q, c]
            .permute((0, 5, 1, 3, 2, 4))? // [B, c, gh, p, gw, q]
            .contiguous()?
            .reshape((b, c, g * p, g * p)) // [B, c, H, W]
    }
}
