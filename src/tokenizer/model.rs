//! A whole tokenizer: encoder + `quant_conv` (+ FSQ), `post_quant_conv` + decoder, built from
//! a checkpoint, with the official tensor conventions at its boundary (channel-first,
//! values in [-1, 1]).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::NetworkConfig;
use super::image::{Decoder2d, Encoder2d};
use super::layers::Pointwise;
use super::video::{Decoder3d, Encoder3d};
use super::{fsq, haar, Result, TokenizerError};

/// What an encoder produces.
#[derive(Clone, Debug)]
pub enum Tokens {
    /// (B, 16, [t,] h, w) latent of a continuous tokenizer.
    Continuous { latent: Tensor },
    /// Discrete tokens: indices (B, [t,] h, w) in 0..64000 (i64) and their codes (B, 6, [t,] h, w).
    Discrete { indices: Tensor, codes: Tensor },
}

impl Tokens {
    /// The tensor the decoder consumes (the latent, or the codes).
    pub fn decoder_input(&self) -> &Tensor {
        match self {
            Tokens::Continuous { latent } => latent,
            Tokens::Discrete { codes, .. } => codes,
        }
    }

    /// (t, h, w) of the token grid (t = 1 for images).
    pub fn grid(&self) -> (usize, usize, usize) {
        let dims = self.decoder_input().dims();
        match dims {
            [_, _, t, h, w] => (*t, *h, *w),
            [_, _, h, w] => (1, *h, *w),
            _ => (0, 0, 0),
        }
    }
}

/// Intermediate tensors of one encode pass, in the official layout (for parity checks and the UI).
#[derive(Clone, Debug)]
pub struct EncodeTrace {
    pub patcher_out: Tensor,
    pub encoder_out: Tensor,
    /// `quant_conv` output: the latent (continuous) or the FSQ input `pre_quant` (discrete).
    pub quant_conv_out: Tensor,
    pub tokens: Tokens,
}

/// Intermediate tensors of one decode pass, in the official layout.
#[derive(Clone, Debug)]
pub struct DecodeTrace {
    pub decoder_in: Tensor,
    pub unpatcher_in: Tensor,
    pub reconstruction: Tensor,
}

#[derive(Clone, Debug)]
enum EncoderNet {
    Image(Box<Encoder2d>),
    Video(Box<Encoder3d>),
}

#[derive(Clone, Debug)]
enum DecoderNet {
    Image(Box<Decoder2d>),
    Video(Box<Decoder3d>),
}

/// Haar taps stored in the checkpoint's `wavelets` buffers (absent in safetensors files).
#[derive(Clone, Copy, Debug)]
pub struct HaarTaps {
    pub encoder: f32,
    pub decoder: f32,
}

impl Default for HaarTaps {
    fn default() -> Self {
        Self {
            encoder: haar::HAAR_TAP_F32,
            decoder: haar::HAAR_TAP_F32,
        }
    }
}

/// A Cosmos tokenizer ready to run. Either half may be absent (e.g. only `decoder.jit` given).
#[derive(Clone, Debug)]
pub struct Tokenizer {
    config: NetworkConfig,
    encoder: Option<(EncoderNet, Pointwise)>,
    decoder: Option<(Pointwise, DecoderNet)>,
    device: Device,
    dtype: DType,
}

/// Which halves of a network to build: checkpoints may hold only one (an `encoder.jit` without
/// its `decoder.jit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halves {
    Both,
    EncoderOnly,
    DecoderOnly,
}

impl Halves {
    /// The halves present, `None` when neither is.
    pub fn present(encoder: bool, decoder: bool) -> Option<Self> {
        match (encoder, decoder) {
            (true, true) => Some(Halves::Both),
            (true, false) => Some(Halves::EncoderOnly),
            (false, true) => Some(Halves::DecoderOnly),
            (false, false) => None,
        }
    }

    pub fn encoder(self) -> bool {
        self != Halves::DecoderOnly
    }

    pub fn decoder(self) -> bool {
        self != Halves::EncoderOnly
    }
}

impl Tokenizer {
    /// Builds `halves` from the weights `vb` holds. `vb` is rooted at the checkpoint's top level
    /// (`encoder.*`, `quant_conv.*`, `post_quant_conv.*`, `decoder.*`).
    pub fn new(
        config: &NetworkConfig,
        taps: HaarTaps,
        halves: Halves,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let video = config.family.is_video();
        let new_pointwise = |i, o, vb: VarBuilder| {
            if video {
                Pointwise::new_3d(i, o, vb)
            } else {
                Pointwise::new_2d(i, o, vb)
            }
        };
        let encoder = if halves.encoder() {
            let net = if video {
                EncoderNet::Video(Box::new(Encoder3d::new(
                    config,
                    taps.encoder,
                    vb.pp("encoder"),
                )?))
            } else {
                EncoderNet::Image(Box::new(Encoder2d::new(
                    config,
                    taps.encoder,
                    vb.pp("encoder"),
                )?))
            };
            let quant_conv = new_pointwise(
                config.z_channels,
                config.latent_channels,
                vb.pp("quant_conv"),
            )?;
            Some((net, quant_conv))
        } else {
            None
        };
        let decoder = if halves.decoder() {
            let post_quant_conv = new_pointwise(
                config.latent_channels,
                config.z_channels,
                vb.pp("post_quant_conv"),
            )?;
            let net = if video {
                DecoderNet::Video(Box::new(Decoder3d::new(
                    config,
                    taps.decoder,
                    vb.pp("decoder"),
                )?))
            } else {
                DecoderNet::Image(Box::new(Decoder2d::new(
                    config,
                    taps.decoder,
                    vb.pp("decoder"),
                )?))
            };
            Some((post_quant_conv, net))
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            encoder,
            decoder,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    pub fn has_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    /// Checks a channel-first input's shape against what this network accepts.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let video = self.config.family.is_video();
        let (frames, height, width) = match (x.dims(), video) {
            ([_, 3, t, h, w], true) => (*t, *h, *w),
            ([_, 3, h, w], false) => (1, *h, *w),
            (dims, true) => {
                return Err(TokenizerError::InvalidInput(format!(
                    "video tokenizers take (B, 3, T, H, W) inputs, got {dims:?}"
                )))
            }
            (dims, false) => {
                return Err(TokenizerError::InvalidInput(format!(
                    "image tokenizers take (B, 3, H, W) inputs, got {dims:?}"
                )))
            }
        };
        self.config.check_input_size(frames, height, width)
    }

    /// Encodes a channel-first input in [-1, 1] and keeps every intermediate tensor.
    pub fn encode_traced(&self, x: &Tensor) -> Result<EncodeTrace> {
        self.encode_traced_with(x, fsq_tokens)
    }

    /// The encoder and its `quant_conv`, or why there are none.
    fn encoder_half(&self) -> Result<(&EncoderNet, &Pointwise)> {
        let Some((net, quant_conv)) = &self.encoder else {
            return Err(TokenizerError::InvalidInput(
                "this checkpoint has no encoder (only decoder weights were loaded)".into(),
            ));
        };
        Ok((net, quant_conv))
    }

    /// The decoder's `post_quant_conv` and network, or why there are none.
    fn decoder_half(&self) -> Result<(&Pointwise, &DecoderNet)> {
        let Some((post_quant_conv, net)) = &self.decoder else {
            return Err(TokenizerError::InvalidInput(
                "this checkpoint has no decoder (only encoder weights were loaded)".into(),
            ));
        };
        Ok((post_quant_conv, net))
    }

    /// [`Tokenizer::encode_traced`] with the discrete bottleneck given by `quantize`.
    fn encode_traced_with(
        &self,
        x: &Tensor,
        quantize: impl Fn(&Tensor) -> Result<Tokens>,
    ) -> Result<EncodeTrace> {
        let (net, quant_conv) = self.encoder_half()?;
        self.check_input(x)?;
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        let (patcher_out, encoder_out, quant_conv_out) = match net {
            EncoderNet::Image(enc) => {
                let patched = enc.patch(x.clone())?;
                let encoded = enc.forward_patched(&patched)?;
                let latent = quant_conv.forward_at(&encoded, 1)?;
                (patched, encoded, latent)
            }
            EncoderNet::Video(enc) => {
                let patched = enc.patch(haar::frames_from_channels(&x)?)?;
                let encoded = enc.forward_patched(&patched)?;
                let latent = quant_conv.forward_at(&encoded, 2)?;
                (
                    haar::channels_from_frames(&patched)?,
                    haar::channels_from_frames(&encoded)?,
                    haar::channels_from_frames(&latent)?,
                )
            }
        };
        let tokens = if self.config.family.is_discrete() {
            quantize(&quant_conv_out)?
        } else {
            Tokens::Continuous {
                latent: quant_conv_out.clone(),
            }
        };
        Ok(EncodeTrace {
            patcher_out,
            encoder_out,
            quant_conv_out,
            tokens,
        })
    }

    /// Encodes a channel-first input in [-1, 1]: (B, 3, T, H, W) video or (B, 3, H, W) images.
    pub fn encode(&self, x: &Tensor) -> Result<Tokens> {
        self.check_input(x)?;
        if self.config.family.is_video() {
            self.encode_frame_major(haar::frames_from_channels(x)?)
        } else {
            self.encode_frame_major(x.clone())
        }
    }

    /// Encodes the layout the wrapper builds from decoded frames: frame-major (B, T, 3, H, W) for
    /// video networks, (B, 3, H, W) for image ones. Keeps no intermediate tensor, and takes the
    /// input by value so that its memory is free once the patcher has read it (at 1080p the
    /// input and the patcher's levels are most of a small model's memory).
    pub fn encode_frame_major(&self, x: Tensor) -> Result<Tokens> {
        let (net, quant_conv) = self.encoder_half()?;
        let latent = match net {
            EncoderNet::Image(enc) => {
                self.check_input(&x)?;
                let patched = enc.patch(self.on_device(x)?)?;
                let encoded = enc.forward_patched(&patched)?;
                drop(patched);
                quant_conv.forward_at(&encoded, 1)?
            }
            EncoderNet::Video(enc) => {
                let [_, frames, 3, height, width] = *x.dims() else {
                    return Err(TokenizerError::InvalidInput(format!(
                        "frame-major video input must be (B, T, 3, H, W), got {:?}",
                        x.dims()
                    )));
                };
                self.config.check_input_size(frames, height, width)?;
                let patched = enc.patch(self.on_device(x)?)?;
                let encoded = enc.forward_patched(&patched)?;
                drop(patched);
                haar::channels_from_frames(&quant_conv.forward_at(&encoded, 2)?)?
            }
        };
        if self.config.family.is_discrete() {
            fsq_tokens(&latent)
        } else {
            Ok(Tokens::Continuous { latent })
        }
    }

    /// `x` on the model's device in its dtype; the caller's tensor is released here, so a
    /// conversion does not keep both copies alive.
    fn on_device(&self, x: Tensor) -> Result<Tensor> {
        Ok(x.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    /// Rebuilds tokens from stored indices (discrete) or a latent (continuous).
    pub fn tokens_from_tensor(&self, tensor: &Tensor) -> Result<Tokens> {
        if self.config.family.is_discrete() {
            let codes = fsq::codes_from_indices(tensor, self.dtype)?.to_device(&self.device)?;
            Ok(Tokens::Discrete {
                indices: tensor.to_dtype(DType::I64)?,
                codes,
            })
        } else {
            Ok(Tokens::Continuous {
                latent: tensor.to_device(&self.device)?.to_dtype(self.dtype)?,
            })
        }
    }

    /// The tokens' decoder input (codes or latent) on the model's device, its shape checked.
    fn checked_decoder_input(&self, tokens: &Tokens) -> Result<Tensor> {
        let z = tokens
            .decoder_input()
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        let want_channels = self.config.latent_channels;
        let rank = if self.config.family.is_video() { 5 } else { 4 };
        if z.rank() != rank || z.dim(1)? != want_channels {
            return Err(TokenizerError::InvalidInput(format!(
                "the decoder expects tokens of shape (B, {want_channels}, {}), got {:?}",
                if rank == 5 { "t, h, w" } else { "h, w" },
                z.dims()
            )));
        }
        Ok(z)
    }

    /// Decodes tokens and keeps the intermediate tensors.
    pub fn decode_traced(&self, tokens: &Tokens) -> Result<DecodeTrace> {
        let (post_quant_conv, net) = self.decoder_half()?;
        let z = self.checked_decoder_input(tokens)?;
        match net {
            DecoderNet::Image(dec) => {
                let decoder_in = post_quant_conv.forward_at(&z, 1)?;
                let unpatcher_in = dec.forward_to_patches(&decoder_in)?;
                let reconstruction = dec.unpatch(unpatcher_in.clone())?;
                Ok(DecodeTrace {
                    decoder_in,
                    unpatcher_in,
                    reconstruction,
                })
            }
            DecoderNet::Video(dec) => {
                let z = haar::frames_from_channels(&z)?;
                let decoder_in = post_quant_conv.forward_at(&z, 2)?;
                let unpatcher_in = dec.forward_to_patches(&decoder_in)?;
                let reconstruction = dec.unpatch(unpatcher_in.clone())?;
                Ok(DecodeTrace {
                    decoder_in: haar::channels_from_frames(&decoder_in)?,
                    unpatcher_in: haar::channels_from_frames(&unpatcher_in)?,
                    reconstruction: haar::channels_from_frames(&reconstruction)?,
                })
            }
        }
    }

    /// Decodes to the official channel-first layout: (B, 3, T, H, W) video or (B, 3, H, W) images.
    pub fn decode(&self, tokens: &Tokens) -> Result<Tensor> {
        let reconstruction = self.decode_frame_major(tokens)?;
        if self.config.family.is_video() {
            haar::channels_from_frames(&reconstruction)
        } else {
            Ok(reconstruction)
        }
    }

    /// Decodes to the layout the wrapper turns into frames: frame-major (B, T, 3, H, W) for video
    /// networks, (B, 3, H, W) for image ones, keeping no intermediate tensor.
    pub fn decode_frame_major(&self, tokens: &Tokens) -> Result<Tensor> {
        let (post_quant_conv, net) = self.decoder_half()?;
        let z = self.checked_decoder_input(tokens)?;
        match net {
            DecoderNet::Image(dec) => {
                let patches = dec.forward_to_patches(&post_quant_conv.forward_at(&z, 1)?)?;
                dec.unpatch(patches)
            }
            DecoderNet::Video(dec) => {
                let z = haar::frames_from_channels(&z)?;
                let patches = dec.forward_to_patches(&post_quant_conv.forward_at(&z, 2)?)?;
                dec.unpatch(patches)
            }
        }
    }

    /// Encode then decode, differentiably: discrete models quantise with the straight-through
    /// estimator. Used for training; inference goes through [`Tokenizer::encode`].
    pub fn autoencode(&self, x: &Tensor) -> Result<Tensor> {
        let trace = self.encode_traced_with(x, |pre| {
            let codes = fsq::quantize_straight_through(pre)?;
            Ok(Tokens::Continuous { latent: codes })
        })?;
        let Tokens::Continuous { latent } = trace.tokens else {
            return Err(TokenizerError::InvalidInput("unexpected token kind".into()));
        };
        let decoder_input = if self.config.family.is_discrete() {
            Tokens::Discrete {
                indices: Tensor::zeros(1, DType::I64, &self.device)?,
                codes: latent,
            }
        } else {
            Tokens::Continuous { latent }
        };
        self.decode(&decoder_input)
    }
}

/// Discrete tokens of an FSQ input: its indices and codes.
fn fsq_tokens(pre_quant: &Tensor) -> Result<Tokens> {
    let (indices, codes) = fsq::quantize(pre_quant)?;
    Ok(Tokens::Discrete { indices, codes })
}
