//! The causal, factorized 3-D video networks (CV, DV). Activations are frame-major
//! (B, T, C, H, W); every convolution is causal in time (frame 0 replicated in front).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::NetworkConfig;
use super::haar;
use super::layers::{
    attention_channels_first, frames_strided, replicate_first_frame, Conv2d, FactorizedConv, Norm,
    Pointwise, TemporalConv,
};

type Result<T> = candle_core::Result<T>;

/// `CausalResnetBlockFactorized3d`.
#[derive(Clone, Debug)]
struct ResnetBlock {
    norm1: Norm,
    conv1: FactorizedConv,
    norm2: Norm,
    conv2: FactorizedConv,
    nin_shortcut: Option<Pointwise>,
}

impl ResnetBlock {
    fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: Norm::new_per_frame(in_channels, vb.pp("norm1"))?,
            conv1: FactorizedConv::new(in_channels, out_channels, vb.pp("conv1"))?,
            norm2: Norm::new_per_frame(out_channels, vb.pp("norm2"))?,
            conv2: FactorizedConv::new(out_channels, out_channels, vb.pp("conv2"))?,
            nin_shortcut: if in_channels != out_channels {
                Some(Pointwise::new_3d(
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
        let h = self.conv1.forward(&self.norm1.forward_frames_swish(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_frames_swish(&h)?)?;
        let shortcut = match &self.nin_shortcut {
            Some(conv) => conv.forward_at(x, 2)?,
            None => x.clone(),
        };
        shortcut + h
    }
}

/// Norm and the four pointwise maps of an attention block.
#[derive(Clone, Debug)]
struct Qkv {
    norm: Norm,
    q: Pointwise,
    k: Pointwise,
    v: Pointwise,
    proj_out: Pointwise,
}

impl Qkv {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: Norm::new_per_frame(channels, vb.pp("norm"))?,
            q: Pointwise::new_3d(channels, channels, vb.pp("q"))?,
            k: Pointwise::new_3d(channels, channels, vb.pp("k"))?,
            v: Pointwise::new_3d(channels, channels, vb.pp("v"))?,
            proj_out: Pointwise::new_3d(channels, channels, vb.pp("proj_out"))?,
        })
    }

    /// (q, k, v), each frame-major (B, T, C, H·W).
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, c, h, w) = x.dims5()?;
        let normed = self.norm.forward_frames(x)?.reshape((b, t, c, h * w))?;
        Ok((
            self.q.forward_at(&normed, 2)?,
            self.k.forward_at(&normed, 2)?,
            self.v.forward_at(&normed, 2)?,
        ))
    }
}

/// `CausalAttnBlock`: self-attention over the pixels of each frame.
#[derive(Clone, Debug)]
struct SpatialAttention(Qkv);

impl SpatialAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let (q, k, v) = self.0.project(x)?;
        let flat = |y: Tensor| y.reshape((b * t, c, h * w));
        let attended = attention_channels_first(&flat(q)?, &flat(k)?, &flat(v)?, false)?;
        let out = self.0.proj_out.forward_at(&attended, 1)?;
        x + out.reshape((b, t, c, h, w))?
    }
}

/// `CausalTemporalAttnBlock`: causal self-attention along time at every pixel.
#[derive(Clone, Debug)]
struct TemporalAttention(Qkv);

impl TemporalAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let (q, k, v) = self.0.project(x)?;
        // (B, T, C, S) → (B·S, C, T): one sequence of T vectors per pixel.
        let per_pixel = |y: Tensor| -> Result<Tensor> {
            y.permute((0, 3, 2, 1))?
                .contiguous()?
                .reshape((b * h * w, c, t))
        };
        let attended =
            attention_channels_first(&per_pixel(q)?, &per_pixel(k)?, &per_pixel(v)?, true)?;
        let back = attended
            .reshape((b, h * w, c, t))?
            .permute((0, 3, 2, 1))?
            .contiguous()?;
        let out = self.0.proj_out.forward_at(&back, 2)?;
        x + out.reshape((b, t, c, h, w))?
    }
}

#[derive(Clone, Debug)]
struct MidBlock {
    block_1: ResnetBlock,
    spatial_attn: SpatialAttention,
    temporal_attn: TemporalAttention,
    block_2: ResnetBlock,
}

impl MidBlock {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let attn = vb.pp("attn_1");
        Ok(Self {
            block_1: ResnetBlock::new(channels, channels, vb.pp("block_1"))?,
            spatial_attn: SpatialAttention(Qkv::new(channels, attn.pp("0"))?),
            temporal_attn: TemporalAttention(Qkv::new(channels, attn.pp("1"))?),
            block_2: ResnetBlock::new(channels, channels, vb.pp("block_2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.block_1.forward(x)?;
        let h = self.spatial_attn.forward(&h)?;
        let h = self.temporal_attn.forward(&h)?;
        self.block_2.forward(&h)
    }
}

/// `CausalHybridDownsample3d`: (strided conv + average pool) in space and/or time, then a 1x1x1 conv.
/// Only the convolutions of the enabled halves are loaded (released files may carry others).
#[derive(Clone, Debug)]
struct HybridDownsample {
    spatial: Option<Conv2d>,
    temporal: Option<TemporalConv>,
    conv3: Pointwise,
}

impl HybridDownsample {
    fn new(channels: usize, spatial: bool, temporal: bool, vb: VarBuilder) -> Result<Option<Self>> {
        if !spatial && !temporal {
            return Ok(None);
        }
        Ok(Some(Self {
            spatial: if spatial {
                Some(Conv2d::spatial_of_3d(
                    channels,
                    channels,
                    3,
                    2,
                    0,
                    vb.pp("conv1"),
                )?)
            } else {
                None
            },
            temporal: if temporal {
                Some(TemporalConv::new(channels, channels, 3, 2, vb.pp("conv2"))?)
            } else {
                None
            },
            conv3: Pointwise::new_3d(channels, channels, vb.pp("conv3"))?,
        }))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        if let Some(conv) = &self.spatial {
            let (b, t, c, h, w) = x.dims5()?;
            let frames = x.reshape((b * t, c, h, w))?;
            let padded = frames.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            // For even sizes (always, after the wrapper's padding) no pooling window reaches the
            // pad, so pooling the unpadded frames gives the same values, and a gradient candle
            // gets right: its average-pool backward upsamples to the input's size, which
            // misplaces every gradient for the odd size of the padded frames.
            let pooled = if h % 2 == 0 && w % 2 == 0 {
                frames.avg_pool2d(2)?
            } else {
                padded.avg_pool2d(2)?
            };
            let y = (conv.forward(&padded)? + pooled)?;
            let (_, _, ho, wo) = y.dims4()?;
            x = y.reshape((b, t, c, ho, wo))?;
        }
        if let Some(conv) = &self.temporal {
            let padded = replicate_first_frame(&x, 1)?;
            let pairs = padded.dim(1)? / 2;
            let pooled = ((frames_strided(&padded, 0, pairs, 2)?
                + frames_strided(&padded, 1, pairs, 2)?)?
                * 0.5)?;
            x = (conv.forward(&padded)? + pooled)?;
        }
        self.conv3.forward_at(&x, 2)
    }
}

/// `CausalHybridUpsample3d`: residual repeat-and-drop in time and/or nearest 2x in space, then a
/// 1x1x1 conv.
#[derive(Clone, Debug)]
struct HybridUpsample {
    temporal: Option<TemporalConv>,
    spatial: Option<Conv2d>,
    conv3: Pointwise,
}

impl HybridUpsample {
    fn new(channels: usize, spatial: bool, temporal: bool, vb: VarBuilder) -> Result<Option<Self>> {
        if !spatial && !temporal {
            return Ok(None);
        }
        Ok(Some(Self {
            temporal: if temporal {
                Some(TemporalConv::new(channels, channels, 3, 1, vb.pp("conv1"))?)
            } else {
                None
            },
            spatial: if spatial {
                Some(Conv2d::spatial_of_3d(
                    channels,
                    channels,
                    3,
                    1,
                    1,
                    vb.pp("conv2"),
                )?)
            } else {
                None
            },
            conv3: Pointwise::new_3d(channels, channels, vb.pp("conv3"))?,
        }))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        if let Some(conv) = &self.temporal {
            let t = x.dim(1)?;
            if t > 1 {
                // Every frame twice, the first copy of frame 0 dropped: 2T − 1 frames.
                let index: Vec<u32> = (0..2 * t - 1).map(|i| i.div_ceil(2) as u32).collect();
                let index = Tensor::from_vec(index, 2 * t - 1, x.device())?;
                x = x.index_select(&index, 1)?;
            }
            x = (conv.forward(&x)? + &x)?;
        }
        if let Some(conv) = &self.spatial {
            let (b, t, c, h, w) = x.dims5()?;
            let up = x
                .reshape((b * t, c, h, w))?
                .upsample_nearest2d(2 * h, 2 * w)?;
            x = (conv.forward(&up)? + up)?.reshape((b, t, c, 2 * h, 2 * w))?;
        }
        self.conv3.forward_at(&x, 2)
    }
}

#[derive(Clone, Debug)]
struct Level<S> {
    blocks: Vec<ResnetBlock>,
    resample: Option<S>,
}

/// The video encoder up to and including `conv_out` (the input of `quant_conv`).
#[derive(Clone, Debug)]
pub struct Encoder3d {
    patch_size: usize,
    haar_tap: f32,
    conv_in: FactorizedConv,
    down: Vec<Level<HybridDownsample>>,
    mid: MidBlock,
    norm_out: Norm,
    conv_out: FactorizedConv,
}

impl Encoder3d {
    /// `vb` points at `encoder`.
    pub fn new(cfg: &NetworkConfig, haar_tap: f32, vb: VarBuilder) -> Result<Self> {
        let ch = cfg.channels;
        let conv_in = FactorizedConv::new(cfg.patched_channels(), ch, vb.pp("conv_in"))?;
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
            let (spatial, temporal) = cfg.encoder_downsample(level);
            let resample =
                HybridDownsample::new(block_in, spatial, temporal, vb_level.pp("downsample"))?;
            down.push(Level { blocks, resample });
        }
        Ok(Self {
            patch_size: cfg.patch_size,
            haar_tap,
            conv_in,
            down,
            mid: MidBlock::new(block_in, vb.pp("mid"))?,
            norm_out: Norm::new_per_frame(block_in, vb.pp("norm_out"))?,
            conv_out: FactorizedConv::new(block_in, cfg.z_channels, vb.pp("conv_out"))?,
        })
    }

    /// Frame-major (B, T, 3, H, W) → (B, 1+(T−1)/ps, 3·ps³, H/ps, W/ps).
    pub fn patch(&self, x: Tensor) -> crate::tokenizer::Result<Tensor> {
        haar::patch_3d(x, self.patch_size, self.haar_tap)
    }

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
        self.conv_out
            .forward(&self.norm_out.forward_frames_swish(&h)?)
    }
}

/// The video decoder from its `conv_in` (after `post_quant_conv`) to the unpatcher.
#[derive(Clone, Debug)]
pub struct Decoder3d {
    patch_size: usize,
    haar_tap: f32,
    conv_in: FactorizedConv,
    mid: MidBlock,
    up: Vec<Level<HybridUpsample>>,
    norm_out: Norm,
    conv_out: FactorizedConv,
}

impl Decoder3d {
    pub fn new(cfg: &NetworkConfig, haar_tap: f32, vb: VarBuilder) -> Result<Self> {
        let ch = cfg.channels;
        let mults = &cfg.decoder_channels_mult;
        let mut block_in = ch * mults.last().copied().unwrap_or(1);
        let conv_in = FactorizedConv::new(cfg.z_channels, block_in, vb.pp("conv_in"))?;
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
            let (spatial, temporal) = cfg.decoder_upsample(level);
            let resample =
                HybridUpsample::new(block_in, spatial, temporal, vb_level.pp("upsample"))?;
            up_reversed.push(Level { blocks, resample });
        }
        up_reversed.reverse();
        Ok(Self {
            patch_size: cfg.patch_size,
            haar_tap,
            conv_in,
            mid,
            up: up_reversed,
            norm_out: Norm::new_per_frame(block_in, vb.pp("norm_out"))?,
            conv_out: FactorizedConv::new(block_in, cfg.patched_channels(), vb.pp("conv_out"))?,
        })
    }

    /// Decoder input (B, t, z, h, w) → unpatcher input (B, t', 3·ps³, H/ps, W/ps).
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
        self.conv_out
            .forward(&self.norm_out.forward_frames_swish(&h)?)
    }

    pub fn unpatch(&self, x: Tensor) -> crate::tokenizer::Result<Tensor> {
        haar::unpatch_3d(x, self.patch_size, self.haar_tap)
    }
}
