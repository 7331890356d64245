//! The building blocks shared by the image and video networks: convolutions (plain 2-D, and the
//! factorized causal 3-D ones mapped onto 2-D convolutions over frames plus matrix products over
//! time), per-frame GroupNorm, SiLU.
//!
//! Video activations use the frame-major layout (B, T, C, H, W): spatial convolutions fold time into
//! the batch for free, and a (3,1,1) causal convolution becomes one matrix product over channels of
//! three time-shifted frames.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::compute;

type Result<T> = candle_core::Result<T>;

/// A plain 2-D convolution with bias: `<prefix>.weight` (O, I, k, k), `<prefix>.bias` (O).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// The spatial (1, k, k) half of a causal 3-D convolution: `<prefix>.conv3d.weight`
    /// (O, I, 1, k, k), applied to every frame.
    pub fn spatial_of_3d(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("conv3d");
        let weight = vb
            .get((out_channels, in_channels, 1, kernel, kernel), "weight")?
            .reshape((out_channels, in_channels, kernel, kernel))?;
        let bias = vb.get(out_channels, "bias")?;
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// NCHW in, NCHW out.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        compute::conv2d(x, &self.weight, Some(&self.bias), self.stride, self.padding)
    }

    /// Frame-major video (B, T, C, H, W): the same 2-D convolution on every frame.
    pub fn forward_frames(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let y = self.forward(&x.reshape((b * t, c, h, w))?)?;
        let (_, o, ho, wo) = y.dims4()?;
        y.reshape((b, t, o, ho, wo))
    }
}

/// A 1x1 (2-D) or 1x1x1 (3-D) convolution: a linear map over channels at every position.
#[derive(Clone, Debug)]
pub struct Pointwise {
    weight: Tensor,
    bias: Tensor,
}

impl Pointwise {
    /// 2-D 1x1 conv: `<prefix>.weight` (O, I, 1, 1).
    pub fn new_2d(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb
            .get((out_channels, in_channels, 1, 1), "weight")?
            .reshape((out_channels, in_channels))?;
        let bias = vb.get(out_channels, "bias")?;
        Ok(Self { weight, bias })
    }

    /// 3-D 1x1x1 causal conv: `<prefix>.conv3d.weight` (O, I, 1, 1, 1).
    pub fn new_3d(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv3d");
        let weight = vb
            .get((out_channels, in_channels, 1, 1, 1), "weight")?
            .reshape((out_channels, in_channels))?;
        let bias = vb.get(out_channels, "bias")?;
        Ok(Self { weight, bias })
    }

    /// Any tensor whose channel axis is `channel_dim` and is followed only by spatial axes.
    /// (N.., C, S..) → (N.., O, S..).
    pub fn forward_at(&self, x: &Tensor, channel_dim: usize) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let lead: usize = dims.iter().take(channel_dim).product();
        let channels = x.dim(channel_dim)?;
        let spatial: usize = dims.iter().skip(channel_dim + 1).product();
        let y = compute::pointwise(
            &x.reshape((lead, channels, spatial))?,
            &self.weight,
            Some(&self.bias),
        )?;
        let mut out_dims = dims;
        // `x.dim` above checked that `channel_dim` is an axis of `x`.
        out_dims[channel_dim] = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

/// The temporal (3,1,1) half of a causal 3-D convolution, with time stride 1 or 2.
///
/// Causal padding replicates frame 0 `time_pad = (k − 1) + (1 − stride)` times in front; output
/// frame `t` is `Σ_k W_k · x_pad[stride·t + k]`, one matrix product of the (O, k·I) weight with
/// the channel-stacked shifted frames. On the CPU in f32 the kernel reads the stacked frames in
/// place (see [`compute::causal_temporal_conv`]); elsewhere they are stacked with tensor ops.
#[derive(Clone, Debug)]
pub struct TemporalConv {
    /// (O, k·I): tap-major so that column block `k` multiplies frame `stride·t + k`.
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    stride: usize,
}

impl TemporalConv {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("conv3d");
        let weight = vb
            .get((out_channels, in_channels, kernel, 1, 1), "weight")?
            .reshape((out_channels, in_channels, kernel))?
            .transpose(1, 2)?
            .reshape((out_channels, kernel * in_channels))?
            .contiguous()?;
        let bias = vb.get(out_channels, "bias")?;
        Ok(Self {
            weight,
            bias,
            kernel,
            stride,
        })
    }

    /// Frame-major (B, T, C, H, W) → (B, T', O, H, W) with T' = ⌊(T + pad − k)/stride⌋ + 1.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let o = self.weight.dim(0)?;
        if let Some(y) = compute::causal_temporal_conv(
            &x.reshape((b, t, c, h * w))?,
            &self.weight,
            Some(&self.bias),
            self.kernel,
            self.stride,
        )? {
            let out_t = y.dim(1)?;
            return y.reshape((b, out_t, o, h, w));
        }
        // (k − 1) + (1 − stride), as the official CausalConv3d.
        let time_pad = self.kernel.saturating_sub(self.stride);
        let padded = replicate_first_frame(x, time_pad)?;
        let padded_t = t + time_pad;
        let out_t = (padded_t - self.kernel) / self.stride + 1;
        let mut taps = Vec::with_capacity(self.kernel);
        for k in 0..self.kernel {
            taps.push(frames_strided(&padded, k, out_t, self.stride)?);
        }
        // (B, T', k·C, H·W): tap-major channel stacking.
        let stacked = Tensor::cat(&taps, 2)?.reshape((b * out_t, self.kernel * c, h * w))?;
        let y = compute::pointwise(&stacked, &self.weight, Some(&self.bias))?;
        y.reshape((b, out_t, o, h, w))
    }
}

/// Frames `start, start + stride, …` (`count` of them) of a frame-major tensor.
pub fn frames_strided(x: &Tensor, start: usize, count: usize, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return x.narrow(1, start, count);
    }
    let index: Vec<u32> = (0..count).map(|i| (start + i * stride) as u32).collect();
    let index = Tensor::from_vec(index, count, x.device())?;
    x.index_select(&index, 1)
}

/// Prepends `copies` copies of frame 0 (causal padding; never zeros).
pub fn replicate_first_frame(x: &Tensor, copies: usize) -> Result<Tensor> {
    if copies == 0 {
        return Ok(x.clone());
    }
    let first = x.narrow(1, 0, 1)?;
    let mut parts = vec![first; copies];
    parts.push(x.clone());
    Tensor::cat(&parts, 1)
}

/// The official "factorized" convolution pair: `.0` spatial (1,3,3), then `.1` causal (3,1,1).
#[derive(Clone, Debug)]
pub struct FactorizedConv {
    spatial: Conv2d,
    temporal: TemporalConv,
}

impl FactorizedConv {
    pub fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            spatial: Conv2d::spatial_of_3d(in_channels, out_channels, 3, 1, 1, vb.pp("0"))?,
            temporal: TemporalConv::new(out_channels, out_channels, 3, 1, vb.pp("1"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.temporal.forward(&self.spatial.forward_frames(x)?)
    }
}

/// GroupNorm with eps 1e-6: 32 groups over (C, H, W) for images, one group per frame for video.
#[derive(Clone, Debug)]
pub struct Norm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

impl Norm {
    const EPS: f64 = 1e-6;

    fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {groups} groups do not divide {channels} channels");
        }
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?,
            groups,
        })
    }

    /// 2-D: GroupNorm(32) with keys `<prefix>.weight`, `<prefix>.bias`.
    pub fn new_2d(channels: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(channels, 32, vb)
    }

    /// 3-D: `CausalNormalize` with one group, keys `<prefix>.norm.weight`, `<prefix>.norm.bias`.
    pub fn new_per_frame(channels: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(channels, 1, vb.pp("norm"))
    }

    /// NCHW (or any (N, C, ...)) input.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        compute::group_norm(x, self.groups, &self.weight, &self.bias, Self::EPS, false)
    }

    /// `swish(norm(x))` in one pass where possible.
    pub fn forward_swish(&self, x: &Tensor) -> Result<Tensor> {
        compute::group_norm(x, self.groups, &self.weight, &self.bias, Self::EPS, true)
    }

    /// Frame-major video: every frame normalised on its own.
    pub fn forward_frames(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        self.forward(&x.reshape((b * t, c, h, w))?)?
            .reshape((b, t, c, h, w))
    }

    /// `swish(norm(x))` on frame-major video.
    pub fn forward_frames_swish(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        self.forward_swish(&x.reshape((b * t, c, h, w))?)?
            .reshape((b, t, c, h, w))
    }
}

pub use crate::compute::{attention_channels_first, softmax_last};
