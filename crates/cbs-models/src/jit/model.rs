use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{BottleneckPatchEmbed, FinalLayer, JitBlock};
use super::rope::Rope;
use super::JitConfig;
use crate::common::{pos_embed, LabelEmbedder, TimestepEmbedder};

/// The JiT network. `forward` returns the predicted clean image x̂ (not a velocity; see
/// [`super::x_to_velocity`]).
pub struct Jit {
    t_embedder: TimestepEmbedder,
    y_embedder: LabelEmbedder,
    x_embedder: BottleneckPatchEmbed,
    /// Fixed 2-D sin-cos buffer `[1, N, hidden]`; in the reference `state_dict` (a frozen
    /// parameter), never trained.
    pos_embed: Tensor,
    /// Learned positions of the class tokens `[1, in_context_len, hidden]` (absent when 0).
    in_context_posemb: Option<Tensor>,
    /// RoPE of the patch tokens alone (blocks before `in_context_start`).
    feat_rope: Rope,
    /// RoPE with `in_context_len` unrotated rows in front (blocks from `in_context_start`).
    feat_rope_incontext: Rope,
    blocks: Vec<JitBlock>,
    final_layer: FinalLayer,
    cfg: JitConfig,
}

impl Jit {
    pub fn new(cfg: &JitConfig, vb: VarBuilder) -> Result<Self> {
        let (g, h) = (cfg.grid_size(), cfg.hidden_size);
        let (dtype, dev) = (vb.dtype(), vb.device().clone());
        let pos_embed =
            Tensor::from_vec(pos_embed::sincos_2d(h, g), (1, g * g, h), &dev)?.to_dtype(dtype)?;
        let in_context_posemb = if cfg.in_context_len > 0 {
            Some(vb.get((1, cfg.in_context_len, h), "in_context_posemb")?)
        } else {
            None
        };
        let blocks = (0..cfg.depth)
            .map(|i| JitBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            t_embedder: TimestepEmbedder::new(h, cfg.kernels, vb.pp("t_embedder"))?,
            y_embedder: LabelEmbedder::new(cfg.label_rows(), cfg.hidden_size, vb.pp("y_embedder"))?,
            x_embedder: BottleneckPatchEmbed::new(cfg, vb.pp("x_embedder"))?,
            pos_embed,
            in_context_posemb,
            feat_rope: Rope::new(cfg.head_dim(), g, 0, dtype, &dev)?,
            feat_rope_incontext: Rope::new(cfg.head_dim(), g, cfg.in_context_len, dtype, &dev)?,
            blocks,
            final_layer: FinalLayer::new(cfg, vb.pp("final_layer"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &JitConfig {
        &self.cfg
    }

    /// The fixed positional buffer, saved under `pos_embed` like the reference.
    pub fn pos_embed(&self) -> &Tensor {
        &self.pos_embed
    }

    /// Fixed tensors of the reference `state_dict` (saved, never trained): `pos_embed`.
    /// The RoPE tables are not in the reference `state_dict` and are rebuilt instead.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        vec![("pos_embed".to_string(), self.pos_embed.clone())]
    }

    /// `x`: `[B, C, H, W]` (noisy image z_t), `t`: `[B]` in [0, 1] (0 noise, 1 data),
    /// `y`: `[B]` labels (the null class is `num_classes`). Returns x̂ `[B, C, H, W]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        let t_emb = self.t_embedder.forward(t)?; // [B, hidden]
        let y_emb = self.y_embedder.forward(y)?; // [B, hidden]
        let c = (&t_emb + &y_emb)?;
        let mut h = self.x_embedder.forward(x)?.broadcast_add(&self.pos_embed)?; // [B, N, hidden]
        let start = self.cfg.in_context_start;
        let mut prepended = 0;
        for (i, block) in self.blocks.iter().enumerate() {
            if let (Some(posemb), true) = (&self.in_context_posemb, i == start) {
                // Class tokens: the label embedding repeated, plus their own positions.
                let tokens = y_emb.unsqueeze(1)?.broadcast_add(posemb)?; // [B, L, hidden]
                h = Tensor::cat(&[&tokens, &h], 1)?; // [B, L + N, hidden]
                prepended = posemb.dim(1)?;
            }
            let rope = if i < start {
                &self.feat_rope
            } else {
                &self.feat_rope_incontext
            };
            h = block.forward(&h, &c, rope)?;
        }
        let h = h.narrow(1, prepended, self.cfg.num_patches())?; // strip the class tokens
        let out = self.final_layer.forward(&h, &c)?; // [B, N, p²·C]
        self.unpatchify(&out)
    }

    /// The stages of [`Jit::forward`] for activation checkpointing: the embeddings (`h0`, and
    /// the conditioning `[c, y_emb]`: the label embedding also makes the class tokens), block
    /// `i` (block `in_context_start` first prepends the class tokens), and the head (the class
    /// tokens stripped, final layer, unpatchify: x̂).
    pub(crate) fn stem(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let t_emb = self.t_embedder.forward(t)?; // [B, hidden]
        let y_emb = self.y_embedder.forward(y)?; // [B, hidden]
        let c = (&t_emb + &y_emb)?;
        let h = self.x_embedder.forward(x)?.broadcast_add(&self.pos_embed)?; // [B, N, hidden]
        Ok((h, vec![c, y_emb]))
    }

    pub(crate) fn stage(&self, i: usize, h: &Tensor, ctx: &[Tensor]) -> Result<Tensor> {
        let start = self.cfg.in_context_start;
        let mut h = h.clone();
        if let (Some(posemb), true) = (&self.in_context_posemb, i == start) {
            let tokens = ctx[1].unsqueeze(1)?.broadcast_add(posemb)?; // [B, L, hidden]
            h = Tensor::cat(&[&tokens, &h], 1)?; // [B, L + N, hidden]
        }
        let rope = if i < start {
            &self.feat_rope
        } else {
            &self.feat_rope_incontext
        };
        self.blocks[i].forward(&h, &ctx[0], rope)
    }

    pub(crate) fn head(&self, h: &Tensor, ctx: &[Tensor]) -> Result<Tensor> {
        let prepended = h.dim(1)? - self.cfg.num_patches();
        let h = h.narrow(1, prepended, self.cfg.num_patches())?; // strip the class tokens
        let out = self.final_layer.forward(&h, &ctx[0])?; // [B, N, p²·C]
        self.unpatchify(&out)
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
