use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::conv::Conv3x3;

use super::layers::{
    AttentionBlock, Downsample, Dropout, GroupNorm32, ResBlock, TimestepEmbed, Upsample,
};
use super::UnetConfig;

/// One entry of a `TimestepEmbedSequential`.
enum Layer {
    Conv(Conv3x3),
    Res(ResBlock),
    Attn(AttentionBlock),
    Down(Downsample),
    Up(Upsample),
}

/// `TimestepEmbedSequential`: layers applied in order; res blocks also see the embedding.
struct Sequential(Vec<Layer>);

impl Sequential {
    fn forward(&self, x: &Tensor, emb: &Tensor, drop: &mut Dropout) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.0 {
            h = match layer {
                Layer::Conv(m) => m.forward(&h)?,
                Layer::Res(m) => m.forward(&h, emb, drop)?,
                Layer::Attn(m) => m.forward(&h)?,
                Layer::Down(m) => m.forward(&h)?,
                Layer::Up(m) => m.forward(&h)?,
            };
        }
        Ok(h)
    }
}

/// The guided-diffusion UNet as torchcfm's `UNetModelWrapper` builds it. Parameter names are
/// the reference `state_dict` keys (`time_embed.0.weight`, `input_blocks.1.0.in_layers.2.weight`,
/// `middle_block.1.qkv.weight`, `out.2.bias`, `label_emb.weight`, …).
pub struct Unet {
    time_embed: TimestepEmbed,
    label_emb: Option<Tensor>, // [label_rows, 4mc]
    input_blocks: Vec<Sequential>,
    middle_block: Sequential,
    output_blocks: Vec<Sequential>,
    out_norm: GroupNorm32, // out.0
    out_conv: Conv3x3,     // out.2
    cfg: UnetConfig,
}

impl Unet {
    /// Builds the layers in the reference order with its channel bookkeeping. Expects a
    /// validated config.
    pub fn new(cfg: &UnetConfig, vb: VarBuilder) -> Result<Self> {
        let ted = cfg.time_embed_dim();
        let attn_ds = cfg.attention_ds();
        let levels = cfg.channel_mult.len();

        let label_emb = if cfg.num_classes > 0 {
            Some(vb.pp("label_emb").get((cfg.label_rows(), ted), "weight")?)
        } else {
            None
        };

        // Encoder.
        let vbi = vb.pp("input_blocks");
        let mut ch = cfg.level_channels(0);
        let first = Conv3x3::new(cfg.in_channels, ch, 1, cfg.kernels, vbi.pp("0").pp("0"))?;
        let mut input_blocks = vec![Sequential(vec![Layer::Conv(first)])];
        let mut skip_chans = vec![ch];
        let mut ds = 1;
        for level in 0..levels {
            let c_out = cfg.level_channels(level);
            for _ in 0..cfg.num_res_blocks {
                let vbb = vbi.pp(input_blocks.len());
                let mut layers = vec![Layer::Res(ResBlock::new(cfg, ch, c_out, vbb.pp("0"))?)];
                ch = c_out;
                if attn_ds.contains(&ds) {
                    layers.push(Layer::Attn(AttentionBlock::new(cfg, ch, vbb.pp("1"))?));
                }
                input_blocks.push(Sequential(layers));
                skip_chans.push(ch);
            }
            if level + 1 != levels {
                let vbb = vbi.pp(input_blocks.len());
                let down = Downsample::new(ch, cfg.kernels, vbb.pp("0"))?;
                input_blocks.push(Sequential(vec![Layer::Down(down)]));
                skip_chans.push(ch);
                ds *= 2;
            }
        }

        let vbm = vb.pp("middle_block");
        let middle_block = Sequential(vec![
            Layer::Res(ResBlock::new(cfg, ch, ch, vbm.pp("0"))?),
            Layer::Attn(AttentionBlock::new(cfg, ch, vbm.pp("1"))?),
            Layer::Res(ResBlock::new(cfg, ch, ch, vbm.pp("2"))?),
        ]);

        // Decoder: every block consumes one skip (concatenated on channels).
        let vbo = vb.pp("output_blocks");
        let mut output_blocks = Vec::new();
        for level in (0..levels).rev() {
            let c_out = cfg.level_channels(level);
            for i in 0..=cfg.num_res_blocks {
                let vbb = vbo.pp(output_blocks.len());
                let skip = skip_chans.pop().expect("one skip per input block");
                let mut layers = vec![Layer::Res(ResBlock::new(
                    cfg,
                    ch + skip,
                    c_out,
                    vbb.pp("0"),
                )?)];
                ch = c_out;
                if attn_ds.contains(&ds) {
                    let j = layers.len();
                    layers.push(Layer::Attn(AttentionBlock::new(cfg, ch, vbb.pp(j))?));
                }
                if level > 0 && i == cfg.num_res_blocks {
                    let j = layers.len();
                    layers.push(Layer::Up(Upsample::new(ch, cfg.kernels, vbb.pp(j))?));
                    ds /= 2;
                }
                output_blocks.push(Sequential(layers));
            }
        }

        let vbout = vb.pp("out");
        let out_norm = GroupNorm32::new(ch, cfg.kernels, vbout.pp("0"))?;
        let out_conv = Conv3x3::new(ch, cfg.out_channels(), 1, cfg.kernels, vbout.pp("2"))?;
        Ok(Self {
            time_embed: TimestepEmbed::new(cfg, vb.pp("time_embed"))?,
            label_emb,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &UnetConfig {
        &self.cfg
    }

    /// Evaluation forward (no dropout). `x`: `[B, C, H, W]`, `t`: `[B]` in [0, 1] (t = 0
    /// noise, t = 1 data), `y`: `[B]` labels, required iff the model is class-conditional
    /// (`None` on a conditional model with a null row means the null class). Returns the
    /// velocity `[B, C, H, W]` (the first `in_channels` outputs when `learn_sigma`).
    /// What to pass as labels for the callers that always carry some (the trainer, the
    /// velocity-field trait): `y` for a class-conditional model, none for an unconditional one.
    pub fn labels<'a>(&self, y: &'a Tensor) -> Option<&'a Tensor> {
        (self.config().num_classes > 0).then_some(y)
    }

    pub fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        self.run(x, t, y, &mut Dropout::off())
    }

    /// Training forward: dropout `cfg.dropout` in every res block, masks drawn from
    /// `dropout_seed` (see [`Dropout`]); identical to [`Unet::forward`] when the probability
    /// is 0.
    pub fn forward_train(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        dropout_seed: u64,
    ) -> Result<Tensor> {
        self.run(x, t, y, &mut Dropout::new(self.cfg.dropout, dropout_seed))
    }

    fn run(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        drop: &mut Dropout,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        let mut emb = self.time_embed.forward(t)?; // [B, 4mc]
        match (&self.label_emb, y) {
            (Some(table), y) => {
                let y = match (y, self.cfg.null_class()) {
                    (Some(y), _) => y.to_dtype(DType::U32)?,
                    (None, Some(null)) => Tensor::full(null, b, x.device())?,
                    (None, None) => bail!("class-conditional UNet needs labels (no null class)"),
                };
                emb = (emb + table.index_select(&y, 0)?)?;
            }
            (None, Some(_)) => bail!("unconditional UNet was given labels"),
            (None, None) => {}
        }

        let mut skips = Vec::with_capacity(self.input_blocks.len());
        let mut h = x.clone();
        for block in &self.input_blocks {
            h = block.forward(&h, &emb, drop)?;
            skips.push(h.clone());
        }
        h = self.middle_block.forward(&h, &emb, drop)?;
        for block in &self.output_blocks {
            let skip = skips.pop().expect("one skip per output block");
            h = block.forward(&Tensor::cat(&[&h, &skip], 1)?, &emb, drop)?;
        }
        let out = self.out_conv.forward(&self.out_norm.forward_silu(&h)?)?;
        if self.cfg.learn_sigma {
            out.narrow(1, 0, self.cfg.in_channels)
        } else {
            Ok(out)
        }
    }
}
