//! The convolutions on tensors, and the choice of algorithm.
//!
//! [`conv2d`] and [`pointwise`] compute the same thing as candle's `Tensor::conv2d` /
//! `broadcast_matmul` (plus bias), but for CPU f32 tensors that do not track gradients they run
//! a dedicated implicit-GEMM kernel (`implicit_gemm.rs`) that is several times faster than candle
//! 0.11.1 on the layer shapes of the tokenizer; 3x3, stride-1, pad-1 convolutions take Winograd's
//! F(4x4, 3x3) (`winograd.rs`). CPU f32 tensors inside an autograd graph take a custom op whose
//! backward pass also runs on the fast kernel (`backward.rs`). Everything else (CUDA / Metal
//! tensors, bf16 / f16) goes through candle's own ops, so results and gradients stay correct
//! everywhere.
use candle_core::{bail, DType, Device, Result, Tensor};

use super::backward::TrainableConv2d;
use super::implicit_gemm::{conv_f32, conv_into, oob, CpuKernel, Geom};
use super::storage::{fast_path_applies, with_f32_values};
use super::winograd::{self, Winograd};

/// [`conv2d`] of CPU f32 tensors on a chosen micro-kernel (to test and compare them); an error
/// when this CPU cannot run it.
pub fn conv2d_using(
    kernel: CpuKernel,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    kernel.check_available()?;
    let g = Geom::conv(x.dims4()?, weight.dims4()?, stride, padding)?;
    let out = run_conv(kernel, &g, x, weight, bias)?;
    Tensor::from_vec(out, (g.n, g.o, g.ho, g.wo), &Device::Cpu)
}

/// out = conv2d(x, weight) + bias, NCHW, weight (O, I, kh, kw), symmetric zero padding, same
/// stride on both axes.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if fast_path_applies(x, weight, bias) {
        let g = Geom::conv(x.dims4()?, weight.dims4()?, stride, padding)?;
        let isa = CpuKernel::best();
        let out = match Conv3x3::for_geometry(&g) {
            Some(algorithm) => conv3x3_f32(isa, algorithm, &g, x, weight, bias)?,
            None => run_conv(isa, &g, x, weight, bias)?,
        };
        return Tensor::from_vec(out, (g.n, g.o, g.ho, g.wo), &Device::Cpu);
    }
    let y = if trainable_path_applies(x, weight, bias) {
        x.apply_op2(weight, TrainableConv2d { stride, padding })?
    } else {
        x.conv2d(weight, padding, stride, 1, 1)?
    };
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// How a 3x3, stride-1, pad-1 convolution is computed on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv3x3 {
    /// Implicit GEMM over the 9 taps, like every other convolution.
    Direct,
    /// Winograd F(2x2, 3x3): 2.25x fewer multiplies.
    WinogradF2,
    /// Winograd F(4x4, 3x3): 4x fewer multiplies; what [`conv2d`] uses. Its results differ
    /// from the direct convolution by float rounding only (the kernel tests bound it, and the
    /// parity tests hold to the reference README's tolerances).
    WinogradF4,
}

impl Conv3x3 {
    pub const ALL: [Conv3x3; 3] = [Conv3x3::Direct, Conv3x3::WinogradF2, Conv3x3::WinogradF4];

    /// Images of a batch to convolve per call so that the transformed input and output stay
    /// within [`WINOGRAD_TRANSFORM_BYTES`] (at least one; the direct form transforms nothing).
    fn images_per_call(self, g: &Geom) -> usize {
        let (m, a) = match self {
            Conv3x3::Direct => return g.n,
            Conv3x3::WinogradF2 => (2, 4),
            Conv3x3::WinogradF4 => (4, 6),
        };
        // The transformed input (c planes) and output (o planes) per image.
        let per_image = g.c.max(g.o) * a * a * g.h.div_ceil(m) * g.w.div_ceil(m) * 4;
        (WINOGRAD_TRANSFORM_BYTES / per_image.max(1)).clamp(1, g.n.max(1))
    }

    /// The algorithm [`conv2d`] uses for a geometry; `None` when it is not a 3x3, stride-1,
    /// pad-1 convolution.
    fn for_geometry(g: &Geom) -> Option<Self> {
        (g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1).then_some(Conv3x3::WinogradF4)
    }
}

/// A 3x3, stride-1, pad-1 convolution of CPU f32 tensors (x (N, C, H, W), weight (O, C, 3, 3))
/// with a chosen algorithm on a chosen micro-kernel, to test and compare them; an error when
/// this CPU cannot run the kernel.
pub fn conv3x3_using(
    kernel: CpuKernel,
    algorithm: Conv3x3,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    kernel.check_available()?;
    let g = Geom::conv(x.dims4()?, weight.dims4()?, 1, 1)?;
    if (g.kh, g.kw) != (3, 3) {
        bail!(
            "conv3x3: the weight is {}x{} per channel pair, not 3x3",
            g.kh,
            g.kw
        );
    }
    let out = conv3x3_f32(kernel, algorithm, &g, x, weight, bias)?;
    Tensor::from_vec(out, (g.n, g.o, g.ho, g.wo), &Device::Cpu)
}

fn conv3x3_f32(
    isa: CpuKernel,
    algorithm: Conv3x3,
    g: &Geom,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Vec<f32>> {
    let shape = winograd::Shape {
        n: g.n,
        c: g.c,
        h: g.h,
        w: g.w,
        o: g.o,
    };
    let run = |shape: winograd::Shape, xs: &[f32], ws: &[f32], bs: Option<&[f32]>| match algorithm {
        Conv3x3::WinogradF2 => winograd::F2::conv3x3(isa, shape, xs, ws, bs),
        Conv3x3::WinogradF4 => winograd::F4::conv3x3(isa, shape, xs, ws, bs),
        Conv3x3::Direct => conv_f32(isa, g, xs, ws, bs),
    };
    let images = algorithm.images_per_call(g);
    with_f32_values(x, weight, bias, g.o, |xs, ws, bs| {
        if images >= g.n {
            return run(shape, xs, ws, bs);
        }
        // Images are independent: a few at a time give the same values in bounded memory.
        let image = g.c * g.h * g.w;
        let mut out = Vec::with_capacity(g.n * g.o * g.ho * g.wo);
        for part in xs.chunks(images * image) {
            let shape = winograd::Shape {
                n: part.len() / image,
                ..shape
            };
            out.extend_from_slice(&run(shape, part, ws, bs)?);
        }
        Ok(out)
    })
}

/// Most memory the Winograd transforms of one call's input or output may take (2.25x the
/// tensor for F4, 4x for F2); larger batches are split. At 1080p the video encoder's first and
/// the decoder's last convolution would otherwise transform 192 channels of five frames at once:
/// 1.1 GB each.
const WINOGRAD_TRANSFORM_BYTES: usize = 128 << 20;

/// 1x1 conv / pointwise linear map over channels: x (N, I, S) with S any flattened spatial
/// size, weight (O, I) -> (N, O, S) (+ bias (O)).
pub fn pointwise(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if !fast_path_applies(x, weight, bias) {
        let y = weight.broadcast_matmul(x)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1))?),
            None => Ok(y),
        };
    }
    let (n, i, s) = x.dims3()?;
    let (o, wi) = weight.dims2()?;
    if wi != i {
        bail!("pointwise: weight expects {wi} input channels, x has {i}");
    }
    let g = Geom::pointwise(n, i, s, o, i * s);
    let out = run_conv(CpuKernel::best(), &g, x, weight, bias)?;
    Tensor::from_vec(out, (n, o, s), &Device::Cpu)
}

/// The causal temporal convolution of frame-major video: x (B, T, C, S) with S the flattened
/// pixels, weight (O, k·C) tap-major (column block `j` multiplies padded frame `stride·t + j`),
/// frame 0 replicated `k − stride` times in front → (B, T', O, S). `None` when the fast path does
/// not apply (the caller then stacks the taps with tensor ops).
///
/// No copy of the input is made: output frame `t` reads the `k` consecutive frames from
/// `stride·t − pad` on, which in the contiguous frame-major layout are one block of `k·C`
/// channel rows, so each output frame is a 1x1 convolution over an "image" that overlaps its
/// neighbours. Only the first frames, which read the replicated frame 0, get a small stacked
/// input of their own.
pub fn causal_temporal_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    kernel: usize,
    stride: usize,
) -> Result<Option<Tensor>> {
    if !fast_path_applies(x, weight, bias) {
        return Ok(None);
    }
    let (b, t, c, pixels) = x.dims4()?;
    let (o, kc) = weight.dims2()?;
    if kc != kernel * c || stride == 0 || kernel < stride {
        bail!(
            "temporal conv: weight (O, {kc}) does not fit kernel {kernel}, stride {stride} and {c} channels"
        );
    }
    let pad = kernel - stride;
    if t + pad < kernel {
        bail!("temporal conv: {t} frames are fewer than the kernel's {kernel}");
    }
    let out_t = (t + pad - kernel) / stride + 1;
    // Output frames before `head` read the replicated frame 0.
    let head = pad.div_ceil(stride).min(out_t);
    let frame = c * pixels;
    let isa = CpuKernel::best();
    let mut out = vec![0f32; b * out_t * o * pixels];
    with_f32_values(x, weight, bias, o, |xs, ws, bs| {
        for (bi, out_b) in out.chunks_mut(out_t * o * pixels).enumerate() {
            let xb = xs
                .get(bi * t * frame..(bi + 1) * t * frame)
                .ok_or_else(oob)?;
            let (out_head, out_tail) = out_b
                .split_at_mut_checked(head * o * pixels)
                .ok_or_else(oob)?;
            if head > 0 {
                // These frames read frame 0 more than once, so their taps are stacked in a copy:
                // a band of pixels at a time, which keeps the copy small however large the frame
                // (whole frames cost kernel·head frames of memory: 600 MB at 1080p).
                let band = HEAD_BAND_PIXELS.min(pixels);
                let mut stacked = vec![0f32; kc * band];
                let mut part = vec![0f32; o * band];
                for (ti, out_frame) in out_head.chunks_exact_mut(o * pixels).enumerate() {
                    for p0 in (0..pixels).step_by(band) {
                        let n = band.min(pixels - p0);
                        for (row, slot) in stacked.chunks_exact_mut(n).take(kc).enumerate() {
                            let (tap, ch) = (row / c, row % c);
                            let src = (stride * ti + tap).saturating_sub(pad);
                            let at = src * frame + ch * pixels + p0;
                            slot.copy_from_slice(xb.get(at..at + n).ok_or_else(oob)?);
                        }
                        let g = Geom::pointwise(1, kc, n, o, kc * n);
                        let part = part.get_mut(..o * n).ok_or_else(oob)?;
                        conv_into(
                            isa,
                            &g,
                            stacked.get(..kc * n).ok_or_else(oob)?,
                            ws,
                            bs,
                            part,
                        )?;
                        for (oc, values) in part.chunks_exact(n).enumerate() {
                            let at = oc * pixels + p0;
                            out_frame
                                .get_mut(at..at + n)
                                .ok_or_else(oob)?
                                .copy_from_slice(values);
                        }
                    }
                }
            }
            if out_t > head {
                let first = stride * head - pad;
                let g = Geom::pointwise(out_t - head, kc, pixels, o, stride * frame);
                let window = xb.get(first * frame..).ok_or_else(oob)?;
                conv_into(isa, &g, window, ws, bs, out_tail)?;
            }
        }
        Ok(())
    })?;
    Tensor::from_vec(out, (b, out_t, o, pixels), &Device::Cpu).map(Some)
}

/// Pixels per band of the temporal convolution's first frames (see [`causal_temporal_conv`]).
const HEAD_BAND_PIXELS: usize = 16 * 1024;

/// CPU f32 tensors inside an autograd graph (training) take the custom op whose forward and
/// backward both run on the fast kernel; candle's own conv backward is far slower on the CPU.
fn trainable_path_applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    cpu_f32(x)
        && cpu_f32(weight)
        && bias.is_none_or(cpu_f32)
        && (x.track_op() || weight.track_op() || bias.is_some_and(Tensor::track_op))
}

fn run_conv(
    kernel: CpuKernel,
    g: &Geom,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Vec<f32>> {
    with_f32_values(x, weight, bias, g.o, |xs, ws, bs| {
        conv_f32(kernel, g, xs, ws, bs)
    })
}
