//! The 2-D image networks (CI, DI): Haar patcher, residual levels with GroupNorm(32), a mid block
//! with one attention layer, and the mirror-image decoder.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::NetworkConfig;
use super::haar;
use super::layers::{attention_channels_first, Conv2d, Norm, Pointwise};

type Result<T> = candle_core::Result<T>;

/// `ResnetBlock`: norm → swish → conv → norm → swish → conv, plus a 1x1 shortcut when widths differ.
#[derive(Clone, Debug)]
struct ResnetBlock {
    norm1: Norm,
    conv1: Conv2d,
    norm2: Norm,
    conv2: Conv2d,
    nin_shortcut: Option<Pointwise>,
}

impl ResnetBlock {
    fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: Norm::new_2d(in_channels, vb.pp("norm1"))?,
            conv1: Conv2d::new(in_channels, out_channels, 3, 1, 1, vb.pp("conv1"))?,
            norm2: Norm::new_2d(out_channels, vb.pp("norm2"))?,
            conv2: Conv2d::new(out_channels, out_channels, 3, 1, 1, vb.pp("conv2"))?,
            nin_shortcut: if in_channels != out_channels {
                Some(Pointwise::new_2d(
                    in_channels,
                    out_channels,
                    vb.pp("nin_shortcut"),
                )?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_swish(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_swish(&h)?)?;
        let shortcut = match &self.nin_shortcut {
            Some(conv) => conv.forward_at(x, 1)?,
            None => x.clone(),
        };
        shortcut + h
    }
}

/// `AttnBlock`: single-head self-attention over all pixels.
#[derive(Clone, Debug)]
struct AttnBlock {
    norm: Norm,
    q: Pointwise,
    k: Pointwise,
    v: Pointwise,
    proj_out: Pointwise,
}

impl AttnBlock {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: Norm::new_2d(channels, vb.pp("norm"))?,
            q: Pointwise::new_2d(channels, channels, vb.pp("q"))?,
            k: Pointwise::new_2d(channels, channels, vb.pp("k"))?,
            v: Pointwise::new_2d(channels, channels, vb.pp("v"))?,
            proj_out: Pointwise::new_2d(channels, channels, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?.reshape((b, c, h * w))?;
        let q = self.q.forward_at(&normed, 1)?;
        let k = self.k.forward_at(&normed, 1)?;
        let v = self.v.forward_at(&normed, 1)?;
        let attended = attention_channels_first(&q, &k, &v, false)?;
        x + self
            .proj_out
            .forward_at(&attended, 1)?
            .reshape((b, c, h, w))?
    }
}

#[derive(Clone, Debug)]
struct MidBlock {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl MidBlock {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(channels, channels, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(channels, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(channels, channels, vb.pp("block_2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.block_2
            .forward(&self.attn_1.forward(&self.block_1.forward(x)?)?)
    }
}

/// Zero pad right and bottom by one, then a 3x3 stride-2 convolution.
#[derive(Clone, Debug)]
struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv
            .forward(&x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)
    }
}

/// Nearest-neighbour 2x, then a 3x3 convolution.
#[derive(Clone, Debug)]
struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

#[derive(Clone, Debug)]
struct Level<S> {
    blocks: Vec<ResnetBlock>,
    resample: Option<S>,
}

/// The image encoder, up to and including `conv_out` (the input of `quant_conv`).
#[derive(Clone, Debug)]
pub struct Encoder2d {
    patch_size: usize,
    haar_tap: f32,
    conv_in: Conv2d,
    down: Vec<Level<Downsample>>,
    mid: MidBlock,
    norm_out: Norm,
    conv_out: Conv2d,
}

impl Encoder2d {
    /// `vb` points at `encoder`; `haar_tap` comes from `encoder.patcher.wavelets` when present.
    pub fn new(cfg: &NetworkConfig, haar_tap: f32, vb: VarBuilder) -> Result<Self> {
        let ch = cfg.channels;
        let conv_in = Conv2d::new(cfg.patched_channels(), ch, 3, 1, 1, vb.pp("conv_in"))?;
        let mut down = Vec::with_capacity(cfg.channels_mult.len());
        let mut block_in = ch;
        for (level, &mult) in cfg.channels_mult.iter().enumerate() {
            let vb_level = vb.pp("down").pp(level);
            let block_out = ch * mult;
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            for b in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    vb_level.pp("block").pp(b),
                )?);
                block_in = block_out;
            }
            let resample = if cfg.encoder_downsample(level).0 {
                Some(Downsample {
                    conv: Conv2d::new(
                        block_in,
                        block_in,
                        3,
                        2,
                        0,
                        vb_level.pp("downsample").pp("conv"),
                    )?,
                })
            } else {
                None
            };
            down.push(Level { blocks, resample });
        }
        Ok(Self {
            patch_size: cfg.patch_size,
            haar_tap,
            conv_in,
            down,
            mid: MidBlock::new(block_in, vb.pp("mid"))?,
            norm_out: Norm::new_2d(block_in, vb.pp("norm_out"))?,
            conv_out: Conv2d::new(block_in, cfg.z_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    /// (B, 3, H, W) → (B, 3·ps², H/ps, W/ps).
    pub fn patch(&self, x: Tensor) -> crate::tokenizer::Result<Tensor> {
        haar::patch_2d(x, self.patch_size, self.haar_tap)
    }

    /// Patched input → encoder output (B, z, H/s, W/s).
    pub fn forward_patched(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            for block in &level.blocks {
                h = block.forward(&h)?;
            }
            if let Some(down) = &level.resample {
                h = down.forward(&h)?;
            }
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&self.norm_out.forward_swish(&h)?)
    }
}

/// The image decoder, from its `conv_in` (after `post_quant_conv`) to the unpatcher.
#[derive(Clone, Debug)]
pub struct Decoder2d {
    patch_size: usize,
    haar_tap: f32,
    conv_in: Conv2d,
    mid: MidBlock,
    /// Indexed by level; run from the last to level 0.
    up: Vec<Level<Upsample>>,
    norm_out: Norm,
    conv_out: Conv2d,
}

impl Decoder2d {
    pub fn new(cfg: &NetworkConfig, haar_tap: f32, vb: VarBuilder) -> Result<Self> {
        let ch = cfg.channels;
        let mults = &cfg.decoder_channels_mult;
        let mut block_in = ch * mults.last().copied().unwrap_or(1);
        let conv_in = Conv2d::new(cfg.z_channels, block_in, 3, 1, 1, vb.pp("conv_in"))?;
        let mid = MidBlock::new(block_in, vb.pp("mid"))?;
        let mut up_reversed = Vec::with_capacity(mults.len());
        for (level, &mult) in mults.iter().enumerate().rev() {
            let vb_level = vb.pp("up").pp(level);
            let block_out = ch * mult;
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks + 1);
            for b in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    vb_level.pp("block").pp(b),
                )?);
                block_in = block_out;
            }
            let resample = if cfg.decoder_upsample(level).0 {
                Some(Upsample {
                    conv: Conv2d::new(
                        block_in,
                        block_in,
                        3,
                        1,
                        1,
                        vb_level.pp("upsample").pp("conv"),
                    )?,
                })
            } else {
                None
            };
            up_reversed.push(Level { blocks, resample });
        }
        up_reversed.reverse();
        Ok(Self {
            patch_size: cfg.patch_size,
            haar_tap,
            conv_in,
            mid,
            up: up_reversed,
            norm_out: Norm::new_2d(block_in, vb.pp("norm_out"))?,
            conv_out: Conv2d::new(block_in, cfg.patched_channels(), 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    /// Decoder input (B, z, h, w) → unpatcher input (B, 3·ps², H/ps, W/ps).
    pub fn forward_to_patches(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for level in self.up.iter().rev() {
            for block in &level.blocks {
                h = block.forward(&h)?;
            }
            if let Some(up) = &level.resample {
                h = up.forward(&h)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_swish(&h)?)
    }

    pub fn unpatch(&self, x: Tensor) -> crate::tokenizer::Result<Tensor> {
        haar::unpatch_2d(x, self.patch_size, self.haar_tap)
    }
}
