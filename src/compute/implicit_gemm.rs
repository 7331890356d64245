//! Fast CPU f32 convolutions for the Cosmos tokenizer.
//!
//! [`conv2d`] and [`pointwise`] compute the same thing as candle's `Tensor::conv2d` /
//! `broadcast_matmul` (plus bias), but for CPU f32 tensors that do not track gradients they run
//! a dedicated implicit-GEMM kernel that is several times faster than candle 0.11.1 on the
//! layer shapes of the tokenizer. Everything else (CUDA / Metal tensors, bf16 / f16, tensors that
//! are part of an autograd graph) goes through candle's own ops, so results and gradients stay
//! correct everywhere.
//!
//! # Algorithm
//!
//! The convolution is a GEMM `out[o, p] = sum_k w[o, k] * im2col[k, p]` with
//! `k = (ci, dy, dx)` and `p` an output pixel, computed without materialising `im2col`:
//!
//! * The output is cut into micro-tiles of `NR` output channels x `MR = 16` consecutive output
//!   pixels of one row, held in registers for the whole reduction chunk. With AVX-512 (detected
//!   at run time) NR = 12 and two tiles run together: 24 zmm accumulators, and for every `k`
//!   two 16-wide loads of input pixels and 12 broadcasts feed 24 FMAs. With AVX2+FMA NR = 6: 12 ymm accumulators, two 8-wide loads,
//!   six broadcasts, twelve FMAs. A portable scalar kernel covers other CPUs.
//! * The reduction is split into chunks of input channels (`KC_TARGET` values of `k` each).
//!   For a chunk and a block of pixel tiles, the input pixels the block needs are packed into
//!   an L2-resident buffer laid out `[tile][k][16]` (the implicit im2col: padding and stride are
//!   resolved here, so the kernel only ever streams contiguous, 64-byte aligned data). The
//!   weights are packed once per call as `[channel tile][k][NR]`, so the kernel's inner loop
//!   walks just two contiguous streams (a strided read of NR weight rows leaves the compiler
//!   short of registers and it spills the accumulators).
//! * The first chunk starts the accumulators from the bias (the bias costs nothing); later
//!   chunks accumulate into the output.
//! * Work is split over rayon into items (image, band of output rows or columns, range of
//!   output channels), each owning disjoint `&mut` slices of the output, so the parallel code
//!   is entirely safe Rust.
//!
//! 3x3, stride-1, pad-1 convolutions (most of the tokenizer's arithmetic) go through Winograd's
//! F(4x4, 3x3) instead (`winograd.rs`): four times fewer multiplies, computed as a batch of 36
//! pointwise GEMMs on the same micro-kernels ([`batched_pointwise_into`]).
//!
//! The only `unsafe` is (a) the calls into the AVX code after run-time feature detection and
//! (b) the two unaligned vector load/store helpers of the micro-kernel, whose pointers come
//! straight from references to 16-float arrays.
use candle_core::{
    bail, CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use super::scratch::Scratch;
use super::winograd::{self, Winograd};

/// Output pixels per micro-tile: two 8-lane AVX vectors.
pub(crate) const MR: usize = 16;
/// Target reduction depth (input channels x taps) per chunk. Each chunk loads and stores the
/// output tiles once, so deeper is cheaper; the packed weights of a channel tile (NR x 512 x 4 B:
/// 12 KiB for AVX2, 24 KiB for AVX-512) and the packed pixels stream from L2 in order, which the
/// prefetcher keeps up with (measured faster than 256 on the full networks).
const KC_TARGET: usize = 512;
/// Floats in a packed input block (192 KiB), sized for a 512 KiB L2 next to the output tile
/// rows and the weights.
const A_BLOCK_FLOATS: usize = 48 * 1024;
/// Aim for this many work items per rayon thread, for load balance on a busy machine.
const ITEMS_PER_THREAD: usize = 4;

/// The CPU micro-kernels, widest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuKernel {
    /// x86-64 AVX-512F: 24 output channels x 16 pixels per tile.
    Avx512,
    /// x86-64 AVX2 + FMA: 6 output channels x 16 pixels per tile.
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl CpuKernel {
    /// The kernels this CPU can run, widest first.
    pub fn available() -> Vec<CpuKernel> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                out.push(CpuKernel::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.push(CpuKernel::Avx2);
            }
        }
        out.push(CpuKernel::Portable);
        out
    }

    /// An error when this CPU cannot run the kernel.
    fn check_available(self) -> Result<()> {
        if !Self::available().contains(&self) {
            bail!("kernels: this CPU cannot run the {self:?} kernel");
        }
        Ok(())
    }

    /// The widest kernel this CPU can run.
    pub fn best() -> CpuKernel {
        Self::available()
            .first()
            .copied()
            .unwrap_or(CpuKernel::Portable)
    }
}

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
    with_f32_values(x, weight, bias, g.o, |xs, ws, bs| match algorithm {
        Conv3x3::WinogradF2 => winograd::F2::conv3x3(isa, shape, xs, ws, bs),
        Conv3x3::WinogradF4 => winograd::F4::conv3x3(isa, shape, xs, ws, bs),
        Conv3x3::Direct => conv_f32(isa, g, xs, ws, bs),
    })
}

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
                let mut stacked = Vec::with_capacity(head * kernel * frame);
                for ti in 0..head {
                    for tap in 0..kernel {
                        let src = (stride * ti + tap).saturating_sub(pad);
                        stacked.extend_from_slice(
                            xb.get(src * frame..(src + 1) * frame).ok_or_else(oob)?,
                        );
                    }
                }
                let g = Geom::pointwise(head, kc, pixels, o, kernel * frame);
                conv_into(isa, &g, &stacked, ws, bs, out_head)?;
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

/// The fast path handles CPU f32 tensors outside of any autograd graph (also the attention
/// kernel's condition).
pub(crate) fn fast_path_applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let ok = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op();
    ok(x) && ok(weight) && bias.is_none_or(ok)
}

/// CPU f32 tensors inside an autograd graph (training) take the custom op whose forward and
/// backward both run on the fast kernel; candle's own conv backward is far slower on the CPU.
fn trainable_path_applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    cpu_f32(x)
        && cpu_f32(weight)
        && bias.is_none_or(cpu_f32)
        && (x.track_op() || weight.track_op() || bias.is_some_and(Tensor::track_op))
}

/// Convolution geometry (all sizes in elements).
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
    /// Elements from the start of one input image to the next: `c * h * w` for a batch, less
    /// when consecutive images overlap (the temporal convolution's windows of frames).
    image_stride: usize,
    /// Elements from one input channel plane to the next: `h * w` unless the images are
    /// interleaved channel by channel (the Winograd transforms' layout).
    channel_stride: usize,
}

impl Geom {
    /// A 1x1 convolution over `n` images of `c` channels of 1 x `s` pixels, `image_stride`
    /// elements apart.
    fn pointwise(n: usize, c: usize, s: usize, o: usize, image_stride: usize) -> Self {
        Self {
            n,
            c,
            h: 1,
            w: s,
            o,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
            ho: 1,
            wo: s,
            image_stride,
            channel_stride: s,
        }
    }

    /// The geometry of a convolution of an (N, C, H, W) input with (O, C, kh, kw) weights.
    fn conv(
        (n, c, h, w): (usize, usize, usize, usize),
        (o, wc, kh, kw): (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        if wc != c {
            bail!("conv2d: weight expects {wc} input channels, x has {c}");
        }
        if stride == 0 {
            bail!("conv2d: stride must be positive");
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            bail!("conv2d: kernel {kh}x{kw} is larger than the padded {h}x{w} input (pad {pad})");
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (w + 2 * pad - kw) / stride + 1,
            image_stride: c * h * w,
            channel_stride: h * w,
        })
    }
}

/// 16 floats on their own cache line, so that the two 8-lane loads of a packed input tile never
/// straddle a line boundary (big allocations come back from malloc only 16-byte aligned).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct Lane16(pub(crate) [f32; MR]);

impl Lane16 {
    pub(crate) const ZERO: Lane16 = Lane16([0.0; MR]);

    /// `self[..src.len()] = src`. A whole tile is a fixed-size copy (one or two vector moves); a
    /// copy of variable length compiles to a call to memcpy, which cost about 4% of a network's
    /// time.
    #[inline(always)]
    pub(crate) fn load_prefix(&mut self, src: &[f32]) {
        match src.first_chunk::<MR>() {
            Some(whole) => self.0 = *whole,
            None => self.0.iter_mut().zip(src).for_each(|(d, &v)| *d = v),
        }
    }

    /// `dst = self[..dst.len()]` (see [`Self::load_prefix`]).
    #[inline(always)]
    pub(crate) fn store_prefix(&self, dst: &mut [f32]) {
        match dst.first_chunk_mut::<MR>() {
            Some(whole) => *whole = self.0,
            None => dst.iter_mut().zip(&self.0).for_each(|(d, &v)| *d = v),
        }
    }
}

/// The contiguous f32 data of a CPU tensor.
fn f32_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        bail!("kernels: expected a cpu tensor")
    };
    contiguous_f32(cpu, layout)
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

/// Calls `f` with the contiguous f32 values of the input, the weights and the bias, after
/// checking that the bias has one value per output channel (`outputs`).
pub(crate) fn with_f32_values<R>(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    outputs: usize,
    f: impl FnOnce(&[f32], &[f32], Option<&[f32]>) -> Result<R>,
) -> Result<R> {
    if let Some(b) = bias {
        let bo = b.dims1()?;
        if bo != outputs {
            bail!("kernels: bias has {bo} elements, expected {outputs}");
        }
    }
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.map(Tensor::contiguous).transpose()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = weight.storage_and_layout();
    let bias_guard = bias.as_ref().map(Tensor::storage_and_layout);
    let bs = match &bias_guard {
        Some((bs, bl)) => Some(f32_slice(bs, bl)?),
        None => None,
    };
    f(f32_slice(&xs, xl)?, f32_slice(&ws, wl)?, bs)
}

fn oob() -> candle_core::Error {
    candle_core::Error::Msg("kernels: internal index out of range".to_string())
}

/// Read-only state shared by all work items.
struct Ctx<'a, const NR: usize> {
    g: Geom,
    /// Input, NCHW.
    x: &'a [f32],
    /// Weights packed per channel tile, `[tile][set][k][NR]` with k = (ci, dy, dx): the kernel
    /// reads one contiguous stream; rows past O are zeros.
    w: PackedWeights<'a>,
    /// Weight sets interleaved in `w` per channel tile: 1 when the images share their weights,
    /// else one per image.
    sets: usize,
    /// Bias per channel tile (zeros past O, or everywhere without a bias).
    bias: Vec<[f32; NR]>,
    /// Input-channel ranges of the reduction chunks.
    chunks: Vec<(usize, usize)>,
    /// Largest chunk, in values of k.
    kc_max: usize,
    tiles_per_block: usize,
}

/// Packed weights: packed for this call, or handed over packed.
enum PackedWeights<'a> {
    Owned(Scratch),
    Borrowed(&'a [f32]),
}

impl PackedWeights<'_> {
    fn values(&self) -> &[f32] {
        match self {
            PackedWeights::Owned(s) => s,
            PackedWeights::Borrowed(s) => s,
        }
    }
}

/// One unit of parallel work: output pixels `(y0, x0) .. (y1 - 1, x1)` of image `n` (whole rows
/// unless y1 = y0 + 1), for the output channels `NR * ot0 ..` whose rows are in `rows`.
struct Item<'a> {
    n: usize,
    ot0: usize,
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
    /// Per output channel, the item's contiguous piece of the output plane.
    rows: Vec<&'a mut [f32]>,
}

/// `(O, K)` weight rows → `[tile][k][NR]` (as NR-float groups), zero-filled past O; in
/// parallel when there is enough.
fn pack_weights<const NR: usize>(w: &[f32], o: usize, k_total: usize) -> Result<Scratch> {
    let mut packed = Scratch::take(o.div_ceil(NR) * k_total * NR);
    let min_tiles = (1 << 16) / (k_total * NR).max(1);
    packed
        .par_chunks_mut((k_total * NR).max(1))
        .with_min_len(min_tiles.max(1))
        .enumerate()
        .try_for_each(|(tile, dst)| -> Result<()> {
            let (dst, _) = dst.as_chunks_mut::<NR>();
            for j in 0..NR {
                let oi = tile * NR + j;
                if oi >= o {
                    dst.iter_mut()
                        .filter_map(|d| d.get_mut(j..))
                        .for_each(|d| d.fill(0.0));
                    break;
                }
                let row = w.get(oi * k_total..(oi + 1) * k_total).ok_or_else(oob)?;
                for (d, &v) in dst.iter_mut().zip(row) {
                    if let Some(slot) = d.get_mut(j) {
                        *slot = v;
                    }
                }
            }
            Ok(())
        })?;
    Ok(packed)
}

/// The convolution on `kernel`, which the caller has checked this CPU can run.
fn conv_f32(
    kernel: CpuKernel,
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let mut out = vec![0f32; g.n * g.o * g.ho * g.wo];
    conv_into(kernel, g, x, w, bias, &mut out)?;
    Ok(out)
}

/// [`conv_f32`] into `out` (N, O, Ho, Wo), which it overwrites.
fn conv_into(
    kernel: CpuKernel,
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<()> {
    conv_into_weights(kernel, g, x, Weights::Shared(w), bias, out)
}

/// The weights of a convolution: one (O, K) matrix for every image, or one per image already
/// packed for the micro-kernel (the Winograd transform's batch of GEMMs, each with the weights
/// of its own frequency).
#[derive(Clone, Copy)]
enum Weights<'a> {
    Shared(&'a [f32]),
    /// `[channel tile][image][k][nr]`, `nr` = [`CpuKernel::nr`], zeros past O.
    PackedPerImage(&'a [f32]),
}

impl CpuKernel {
    /// Output channels per micro-tile: the width of packed weights.
    pub(crate) fn nr(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            CpuKernel::Avx512 => avx512::NR,
            #[cfg(target_arch = "x86_64")]
            CpuKernel::Avx2 => avx2::NR,
            _ => PORTABLE_NR,
        }
    }
}

/// Batched pointwise maps with their own weights: image `i` of `x` has `c` channel rows of `s`
/// values, `channel_stride` apart (images `s` apart); `packed` holds the weights of all images
/// packed as `[channel tile][image][c][kernel.nr()]` (zeros past `o`); `out` (n, o, s) is
/// overwritten.
pub(crate) fn batched_pointwise_into(
    kernel: CpuKernel,
    (n, c, s, o): (usize, usize, usize, usize),
    channel_stride: usize,
    x: &[f32],
    packed: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let g = Geom {
        channel_stride,
        ..Geom::pointwise(n, c, s, o, s)
    };
    conv_into_weights(kernel, &g, x, Weights::PackedPerImage(packed), None, out)
}

/// [`conv_into`] with shared or per-image weights.
fn conv_into_weights(
    kernel: CpuKernel,
    g: &Geom,
    x: &[f32],
    weights: Weights,
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<()> {
    let k_total = g.c * g.kh * g.kw;
    let last_image_end = if g.n == 0 || g.c == 0 {
        0
    } else {
        (g.n - 1) * g.image_stride + (g.c - 1) * g.channel_stride + g.h * g.w
    };
    let weights_fit = match weights {
        Weights::Shared(w) => w.len() == g.o * k_total,
        Weights::PackedPerImage(w) => {
            w.len() == g.o.div_ceil(kernel.nr()) * g.n * k_total * kernel.nr()
        }
    };
    if x.len() < last_image_end || !weights_fit {
        bail!("kernels: tensor sizes do not match the convolution geometry");
    }
    let plane = g.ho * g.wo;
    if out.len() != g.n * g.o * plane {
        bail!("kernels: the output buffer does not match the convolution geometry");
    }
    if out.is_empty() {
        return Ok(());
    }
    if k_total == 0 {
        match bias {
            Some(b) => {
                for (o_plane, &bv) in out.chunks_mut(plane).zip(b.iter().cycle()) {
                    o_plane.fill(bv);
                }
            }
            None => out.fill(0.0),
        }
        return Ok(());
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        CpuKernel::Avx512 => {
            conv_with::<{ avx512::NR }, _>(g, x, weights, bias, out, |ctx, item| {
                // SAFETY: `run_item_avx512` only requires the avx512f target feature; callers
                // pass this kernel only when `CpuKernel::available` detected it at run time.
                unsafe { run_item_avx512(ctx, item) }
            })?
        }
        #[cfg(target_arch = "x86_64")]
        CpuKernel::Avx2 => conv_with::<{ avx2::NR }, _>(g, x, weights, bias, out, |ctx, item| {
            // SAFETY: `run_item_avx2` only requires the avx2 and fma target features; callers
            // pass this kernel only when `CpuKernel::available` detected them at run time.
            unsafe { run_item_avx2(ctx, item) }
        })?,
        #[cfg(not(target_arch = "x86_64"))]
        CpuKernel::Avx512 | CpuKernel::Avx2 => {
            bail!("kernels: the {kernel:?} kernel needs an x86-64 CPU")
        }
        CpuKernel::Portable => {
            let fma = cfg!(any(target_arch = "aarch64", target_feature = "fma"));
            conv_with::<PORTABLE_NR, _>(g, x, weights, bias, out, |ctx, item| {
                if fma {
                    run_item_tile_by_tile(ctx, item, kernel_portable::<true, PORTABLE_NR>)
                } else {
                    run_item_tile_by_tile(ctx, item, kernel_portable::<false, PORTABLE_NR>)
                }
            })?
        }
    }
    Ok(())
}

/// Splits the convolution into work items over disjoint pieces of `out` and runs them on rayon
/// with `run` (a micro-kernel with NR output channels per tile).
fn conv_with<const NR: usize, R>(
    g: &Geom,
    x: &[f32],
    weights: Weights,
    bias: Option<&[f32]>,
    out: &mut [f32],
    run: R,
) -> Result<()>
where
    R: Fn(&Ctx<NR>, Item) -> Result<()> + Sync,
{
    let khkw = g.kh * g.kw;
    let k_total = g.c * khkw;
    let plane = g.ho * g.wo;
    let n_chunks = k_total.div_ceil(KC_TARGET);
    let cb = g.c.div_ceil(n_chunks);
    let chunks: Vec<(usize, usize)> = (0..g.c)
        .step_by(cb)
        .map(|c0| (c0, (c0 + cb).min(g.c)))
        .collect();
    let kc_max = cb * khkw;
    let tiles_per_block = (A_BLOCK_FLOATS / (kc_max * MR)).max(1);

    let (ranges, o_parts) = partition(g, tiles_per_block, NR);
    let n_op = o_parts.len();
    let mut items: Vec<Item> = Vec::with_capacity(g.n * ranges.len() * n_op);
    for (n, img) in out.chunks_mut(g.o * plane).enumerate() {
        let base = items.len();
        for &(y0, y1, x0, x1) in &ranges {
            for &(ot0, ot1) in &o_parts {
                items.push(Item {
                    n,
                    ot0,
                    y0,
                    y1,
                    x0,
                    x1,
                    rows: Vec::with_capacity((ot1 - ot0) * NR),
                });
            }
        }
        for (o, o_plane) in img.chunks_mut(plane).enumerate() {
            let q = o_parts
                .iter()
                .position(|&(a, b)| (a..b).contains(&(o / NR)))
                .ok_or_else(oob)?;
            let mut rest = o_plane;
            for (pi, &(y0, y1, x0, x1)) in ranges.iter().enumerate() {
                let len = (y1 - y0 - 1) * g.wo + x1 - x0;
                let (head, tail) = rest.split_at_mut_checked(len).ok_or_else(oob)?;
                let item = items.get_mut(base + pi * n_op + q).ok_or_else(oob)?;
                item.rows.push(head);
                rest = tail;
            }
        }
    }
    let mut bias_tiles = vec![[0f32; NR]; g.o.div_ceil(NR)];
    if let Some(b) = bias {
        for (bt, bc) in bias_tiles.iter_mut().zip(b.chunks(NR)) {
            for (d, &v) in bt.iter_mut().zip(bc) {
                *d = v;
            }
        }
    }
    let (w, sets) = match weights {
        Weights::Shared(w) => (
            PackedWeights::Owned(pack_weights::<NR>(w, g.o, k_total)?),
            1,
        ),
        Weights::PackedPerImage(w) => (PackedWeights::Borrowed(w), g.n),
    };
    let ctx = Ctx {
        g: *g,
        x,
        w,
        sets,
        bias: bias_tiles,
        chunks,
        kc_max,
        tiles_per_block,
    };
    items.into_par_iter().try_for_each(|item| run(&ctx, item))
}

/// Splits the work for one image into pixel ranges `(y0, y1, x0, x1)` -- each a contiguous
/// piece of an output plane -- and output-channel tile ranges `(ot0, ot1)` of `nr` channels.
#[allow(clippy::type_complexity)]
fn partition(
    g: &Geom,
    tiles_per_block: usize,
    nr: usize,
) -> (Vec<(usize, usize, usize, usize)>, Vec<(usize, usize)>) {
    let threads = rayon::current_num_threads().max(1);
    let target = ITEMS_PER_THREAD * threads;
    let tiles_per_row = g.wo.div_ceil(MR);
    let total_tiles = g.ho * tiles_per_row;
    let n_ot = g.o.div_ceil(nr);
    // A pixel part should span at least two packed blocks and a channel part at least 144
    // channels, so that packing stays cheap relative to the arithmetic. Splitting pixels is
    // preferred (channel parts re-pack the same input).
    let max_pp = (total_tiles / (2 * tiles_per_block)).max(1);
    let max_op = (g.o / 144).max(1).min(n_ot);
    // Prefer an item count that is a multiple of the thread count, then one close to the
    // target, then fewer channel parts.
    let (pp, op) = (1..=max_pp)
        .flat_map(|pp| (1..=max_op).map(move |op| (pp, op)))
        .min_by_key(|&(pp, op)| {
            let items = g.n * pp * op;
            (!items.is_multiple_of(threads), items.abs_diff(target), op)
        })
        .unwrap_or((1, 1));
    let ranges = if g.ho >= pp {
        (0..pp)
            .map(|i| (i * g.ho / pp, (i + 1) * g.ho / pp, 0, g.wo))
            .filter(|r| r.1 > r.0)
            .collect()
    } else if g.ho == 1 {
        (0..pp)
            .map(|i| {
                let t0 = i * tiles_per_row / pp;
                let t1 = (i + 1) * tiles_per_row / pp;
                (0, 1, t0 * MR, (t1 * MR).min(g.wo))
            })
            .filter(|r| r.3 > r.2)
            .collect()
    } else {
        (0..g.ho).map(|y| (y, y + 1, 0, g.wo)).collect()
    };
    let o_parts = (0..op)
        .map(|i| (i * n_ot / op, (i + 1) * n_ot / op))
        .filter(|r| r.1 > r.0)
        .collect();
    (ranges, o_parts)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn run_item_avx512(ctx: &Ctx<{ avx512::NR }>, item: Item) -> Result<()> {
    run_item(
        ctx,
        item,
        |a, b, acc| avx512::kernel(a, b, acc),
        |a0, a1, b, acc0, acc1| avx512::kernel_pair(a0, a1, b, acc0, acc1),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_item_avx2(ctx: &Ctx<{ avx2::NR }>, item: Item) -> Result<()> {
    run_item_tile_by_tile(ctx, item, |a, b, acc| avx2::kernel(a, b, acc))
}

/// [`run_item`] for a micro-kernel that holds one tile at a time: a pair is two calls.
#[inline(always)]
fn run_item_tile_by_tile<const NR: usize, K>(ctx: &Ctx<NR>, item: Item, kern: K) -> Result<()>
where
    K: Fn(&[Lane16], &[[f32; NR]], &mut Acc<NR>),
{
    run_item(ctx, item, &kern, |a0, a1, b, acc0, acc1| {
        kern(a0, b, acc0);
        kern(a1, b, acc1);
    })
}

/// The accumulators of one micro-tile: NR output channels x MR pixels.
type Acc<const NR: usize> = [Lane16; NR];

/// Computes one work item: for each reduction chunk, for each block of pixel tiles, pack the
/// block's input and run the micro-kernel over all (channel tile, pixel tile) pairs. Pixel
/// tiles go to `kern2` two at a time (the AVX-512 kernel holds two tiles in registers, so each
/// broadcast weight feeds two FMAs); an odd last tile goes to `kern`.
#[inline(always)]
fn run_item<const NR: usize, K, K2>(ctx: &Ctx<NR>, item: Item, kern: K, kern2: K2) -> Result<()>
where
    K: Fn(&[Lane16], &[[f32; NR]], &mut Acc<NR>),
    K2: Fn(&[Lane16], &[Lane16], &[[f32; NR]], &mut Acc<NR>, &mut Acc<NR>),
{
    let g = &ctx.g;
    let khkw = g.kh * g.kw;
    let k_total = g.c * khkw;
    let Item {
        n,
        ot0,
        y0,
        y1,
        x0,
        x1,
        mut rows,
    } = item;
    let p_start = y0 * g.wo + x0;
    let tiles: Vec<(usize, usize)> = (y0..y1)
        .flat_map(|y| (x0..x1).step_by(MR).map(move |x| (y, x)))
        .collect();
    // This item's weights: its image's set when every image has its own.
    let (packed, _) = ctx.w.values().as_chunks::<NR>();
    let set = if ctx.sets > 1 { n } else { 0 };
    let mut a_buf = vec![Lane16::ZERO; ctx.tiles_per_block * ctx.kc_max];
    let (mut acc0, mut acc1) = ([Lane16::ZERO; NR], [Lane16::ZERO; NR]);
    for &(c0, c1) in &ctx.chunks {
        let kc = (c1 - c0) * khkw;
        let first = c0 == 0;
        for block in tiles.chunks(ctx.tiles_per_block) {
            pack_block(g, ctx.x, n, block, c0, c1, &mut a_buf)?;
            let tile_weights = packed
                .chunks_exact(k_total)
                .skip(ot0 * ctx.sets + set)
                .step_by(ctx.sets);
            let tile_bias = ctx.bias.iter().skip(ot0);
            for ((wt, orows), bias_tile) in tile_weights.zip(rows.chunks_mut(NR)).zip(tile_bias) {
                let b = wt.get(c0 * khkw..c1 * khkw).ok_or_else(oob)?;
                // Where tile (y, xt) sits in this item's rows, and how many of its lanes count.
                let span = |&(y, xt): &(usize, usize)| (y * g.wo + xt - p_start, MR.min(x1 - xt));
                for (pair, a) in block.chunks(2).zip(a_buf.chunks(2 * kc)) {
                    match (pair, a.split_at_checked(kc)) {
                        ([t0, t1], Some((a0, a1))) => {
                            load_acc(&mut acc0, first, bias_tile, orows, span(t0))?;
                            load_acc(&mut acc1, first, bias_tile, orows, span(t1))?;
                            kern2(a0, a1.get(..kc).ok_or_else(oob)?, b, &mut acc0, &mut acc1);
                            store_acc(&acc0, orows, span(t0))?;
                            store_acc(&acc1, orows, span(t1))?;
                        }
                        ([t0], Some((a0, _))) => {
                            load_acc(&mut acc0, first, bias_tile, orows, span(t0))?;
                            kern(a0, b, &mut acc0);
                            store_acc(&acc0, orows, span(t0))?;
                        }
                        _ => return Err(oob()),
                    }
                }
            }
        }
    }
    Ok(())
}

/// Sets the accumulators of one tile whose lanes sit at `off .. off + valid` of each output row:
/// the bias on the first reduction chunk, else what the earlier chunks stored. (They are filled
/// in place: returning the 768-byte array inside a `Result` compiled to three memcpy calls.)
#[inline(always)]
fn load_acc<const NR: usize>(
    acc: &mut Acc<NR>,
    first: bool,
    bias: &[f32; NR],
    orows: &[&mut [f32]],
    (off, valid): (usize, usize),
) -> Result<()> {
    if first {
        for (accr, &bv) in acc.iter_mut().zip(bias) {
            *accr = Lane16([bv; MR]);
        }
    } else {
        for (accr, orow) in acc.iter_mut().zip(orows) {
            accr.load_prefix(orow.get(off..off + valid).ok_or_else(oob)?);
        }
    }
    Ok(())
}

/// Writes the valid lanes of a tile's accumulators back (see [`load_acc`]).
#[inline(always)]
fn store_acc<const NR: usize>(
    acc: &Acc<NR>,
    orows: &mut [&mut [f32]],
    (off, valid): (usize, usize),
) -> Result<()> {
    for (accr, orow) in acc.iter().zip(orows.iter_mut()) {
        accr.store_prefix(orow.get_mut(off..off + valid).ok_or_else(oob)?);
    }
    Ok(())
}

/// Output channels per tile of the portable micro-kernel.
const PORTABLE_NR: usize = 6;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Lane16, MR};
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_storeu_ps,
    };

    /// Output channels per tile: 6 x 2 = 12 of the 16 ymm registers hold the accumulators.
    pub const NR: usize = 6;

    /// Loads lanes `8*H .. 8*H + 8` of a 16-float tile.
    #[target_feature(enable = "avx")]
    #[inline]
    fn load<const H: usize>(v: &Lane16) -> __m256 {
        const { assert!(H < 2 && MR == 16) };
        // SAFETY: `v` refers to 16 initialised floats and H <= 1, so the 8 floats read from
        // offset 8*H are in bounds; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_ps(v.0.as_ptr().wrapping_add(8 * H)) }
    }

    /// Stores into lanes `8*H .. 8*H + 8` of a 16-float tile.
    #[target_feature(enable = "avx")]
    #[inline]
    fn store<const H: usize>(v: &mut Lane16, x: __m256) {
        const { assert!(H < 2 && MR == 16) };
        // SAFETY: `v` is an exclusive reference to 16 floats and H <= 1, so the 8 floats
        // written from offset 8*H are in bounds; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(v.0.as_mut_ptr().wrapping_add(8 * H), x) }
    }

    /// `acc[j][i] += sum_k b[k][j] * a[k][i]`, the 6 x 16 accumulator tile in 12 registers.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn kernel(a: &[Lane16], b: &[[f32; NR]], acc: &mut [Lane16; NR]) {
        // One named variable per accumulator half (see the AVX-512 kernel).
        macro_rules! tile {
            ($(($r:ident, $lo:ident, $hi:ident, $w:ident)),+) => {{
                let [$($r),+] = acc;
                $(let (mut $lo, mut $hi) = (load::<0>($r), load::<1>($r));)+
                for (av, bv) in a.iter().zip(b) {
                    let (x0, x1) = (load::<0>(av), load::<1>(av));
                    let [$($w),+] = *bv;
                    $(
                        let w = _mm256_set1_ps($w);
                        $lo = _mm256_fmadd_ps(w, x0, $lo);
                        $hi = _mm256_fmadd_ps(w, x1, $hi);
                    )+
                }
                $(store::<0>($r, $lo); store::<1>($r, $hi);)+
            }};
        }
        tile!(
            (r0, c0, d0, w0),
            (r1, c1, d1, w1),
            (r2, c2, d2, w2),
            (r3, c3, d3, w3),
            (r4, c4, d4, w4),
            (r5, c5, d5, w5)
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Lane16, MR};
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps,
    };

    /// Output channels per tile. Two tiles (32 pixels) are computed together: 24 of the 32 zmm
    /// registers hold the accumulators, each broadcast weight feeds two FMAs and each `k`
    /// costs 2 vector loads + 12 broadcasts for 24 FMAs (the FMA ports, not the load ports, set
    /// the pace), and a channel tile's packed weights for a 512-deep chunk (24 KiB) stay in L1.
    pub const NR: usize = 12;

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load(v: &Lane16) -> __m512 {
        const { assert!(MR == 16) };
        // SAFETY: `v` refers to 16 initialised floats; `loadu` has no alignment requirement.
        unsafe { _mm512_loadu_ps(v.0.as_ptr()) }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn store(v: &mut Lane16, x: __m512) {
        const { assert!(MR == 16) };
        // SAFETY: `v` is an exclusive reference to 16 floats; `storeu` has no alignment
        // requirement.
        unsafe { _mm512_storeu_ps(v.0.as_mut_ptr(), x) }
    }

    // One named variable per accumulator: with an array LLVM keeps spilling some of them to the
    // stack inside the loop.
    macro_rules! channels {
        ($m:ident) => {
            $m!(
                (r0, c0, d0, w0),
                (r1, c1, d1, w1),
                (r2, c2, d2, w2),
                (r3, c3, d3, w3),
                (r4, c4, d4, w4),
                (r5, c5, d5, w5),
                (r6, c6, d6, w6),
                (r7, c7, d7, w7),
                (r8, c8, d8, w8),
                (r9, c9, d9, w9),
                (r10, c10, d10, w10),
                (r11, c11, d11, w11)
            )
        };
    }

    /// `acc[j][i] += sum_k b[k][j] * a[k][i]`: one 12 x 16 tile (an odd tile at a block's end).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn kernel(a: &[Lane16], b: &[[f32; NR]], acc: &mut [Lane16; NR]) {
        macro_rules! tile {
            ($(($r:ident, $c:ident, $d:ident, $w:ident)),+) => {{
                let [$($r),+] = acc;
                $(let mut $c = load($r);)+
                for (av, bv) in a.iter().zip(b) {
                    let x = load(av);
                    let [$($w),+] = *bv;
                    $($c = _mm512_fmadd_ps(_mm512_set1_ps($w), x, $c);)+
                }
                $(store($r, $c);)+
            }};
        }
        channels!(tile);
    }

    /// [`kernel`] on two tiles that share the weights: `acc0 += b·a0`, `acc1 += b·a1`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn kernel_pair(
        a0: &[Lane16],
        a1: &[Lane16],
        b: &[[f32; NR]],
        acc0: &mut [Lane16; NR],
        acc1: &mut [Lane16; NR],
    ) {
        macro_rules! tiles {
            ($(($r:ident, $c:ident, $d:ident, $w:ident)),+) => {{
                {
                    let [$($r),+] = &*acc0;
                    $(let mut $c = load($r);)+
                    let [$($r),+] = &*acc1;
                    $(let mut $d = load($r);)+
                    for ((x0, x1), bv) in a0.iter().zip(a1).zip(b) {
                        let (x0, x1) = (load(x0), load(x1));
                        let [$($w),+] = *bv;
                        $(
                            let w = _mm512_set1_ps($w);
                            $c = _mm512_fmadd_ps(w, x0, $c);
                            $d = _mm512_fmadd_ps(w, x1, $d);
                        )+
                    }
                    let [$($r),+] = acc0;
                    $(store($r, $c);)+
                    let [$($r),+] = acc1;
                    $(store($r, $d);)+
                }
            }};
        }
        channels!(tiles);
    }
}

/// Portable micro-kernel, used where AVX2/FMA is unavailable: same contract as `avx2::kernel`.
#[inline(always)]
fn kernel_portable<const FMA: bool, const NR: usize>(
    a: &[Lane16],
    b: &[[f32; NR]],
    acc: &mut [Lane16; NR],
) {
    for (av, bv) in a.iter().zip(b) {
        for (accr, &wv) in acc.iter_mut().zip(bv) {
            for (e, &xv) in accr.0.iter_mut().zip(av.0.iter()) {
                *e = if FMA {
                    wv.mul_add(xv, *e)
                } else {
                    *e + wv * xv
                };
            }
        }
    }
}

/// Packs the implicit im2col matrix of `block` (tiles of MR output pixels) for input channels
/// `c0..c1` into `a`, laid out `[tile][k][MR]` with `k = (ci - c0, dy, dx)`. Lane i of tile
/// (yo, xt) for tap (dy, dx) is input pixel (yo*s + dy - pad, (xt + i)*s + dx - pad), zero
/// outside the image.
#[inline(always)]
fn pack_block(
    g: &Geom,
    x: &[f32],
    n: usize,
    block: &[(usize, usize)],
    c0: usize,
    c1: usize,
    a: &mut [Lane16],
) -> Result<()> {
    let khkw = g.kh * g.kw;
    let kc = (c1 - c0) * khkw;
    let s = g.stride;
    let pad = g.pad as isize;
    // Runs of tiles that share an output row read each input row sequentially.
    let mut start = 0;
    while let Some(&(yo, _)) = block.get(start) {
        let run = block.iter().skip(start).take_while(|t| t.0 == yo).count();
        let seg = block.get(start..start + run).ok_or_else(oob)?;
        let a_seg = a.get_mut(start * kc..(start + run) * kc).ok_or_else(oob)?;
        for ci in c0..c1 {
            let plane_base = n * g.image_stride + ci * g.channel_stride;
            for dy in 0..g.kh {
                let yi = (yo * s + dy) as isize - pad;
                let row = if yi >= 0 && (yi as usize) < g.h {
                    let r0 = plane_base + yi as usize * g.w;
                    x.get(r0..r0 + g.w)
                } else {
                    None
                };
                let k0 = (ci - c0) * khkw + dy * g.kw;
                for (dx, k) in (0..g.kw).zip(k0..) {
                    for (&(_, xt), a_tile) in seg.iter().zip(a_seg.chunks_exact_mut(kc)) {
                        let d = a_tile.get_mut(k).ok_or_else(oob)?;
                        match row {
                            Some(row) => pack_lanes(&mut d.0, row, (xt * s + dx) as isize - pad, s),
                            None => d.0 = [0.0; MR],
                        }
                    }
                }
            }
        }
        start += run;
    }
    Ok(())
}

/// `d[i] = row[col0 + i*s]`, zero where that column is outside the row.
#[inline(always)]
fn pack_lanes(d: &mut [f32; MR], row: &[f32], col0: isize, s: usize) {
    let last = col0 + ((MR - 1) * s) as isize;
    if col0 >= 0 && last < row.len() as isize {
        let tail = row.get(col0 as usize..).unwrap_or_default();
        if s == 1 {
            if let Some(v) = tail.first_chunk::<MR>() {
                *d = *v;
            }
        } else {
            for (e, &v) in d.iter_mut().zip(tail.iter().step_by(s)) {
                *e = v;
            }
        }
    } else if s == 1 {
        // A tile overlapping the left/right edge: copy the part inside, zero the padding.
        *d = [0.0; MR];
        let lo = (-col0).clamp(0, MR as isize) as usize;
        let hi = (row.len() as isize - col0).clamp(lo as isize, MR as isize) as usize;
        let from = (col0 + lo as isize).max(0) as usize;
        let Some(src) = row.get(from..from + (hi - lo)) else {
            return;
        };
        // The edge tiles of a 3x3, pad-1 convolution over rows of whole tiles (most tiles of a
        // 32-pixel-wide layer) are one lane short: fixed-size copies stay inline, where a copy of
        // variable length is a call to memcpy.
        const SHORT: usize = MR - 1;
        match (lo, hi) {
            (1, MR) => {
                if let (Some(dst), Some(src)) = (d.last_chunk_mut::<SHORT>(), src.first_chunk()) {
                    *dst = *src;
                }
            }
            (0, SHORT) => {
                if let (Some(dst), Some(src)) = (d.first_chunk_mut::<SHORT>(), src.first_chunk()) {
                    *dst = *src;
                }
            }
            _ => {
                if let Some(dst) = d.get_mut(lo..hi) {
                    dst.copy_from_slice(src);
                }
            }
        }
    } else {
        for (e, c) in d.iter_mut().zip((col0..).step_by(s)) {
            *e = if c >= 0 {
                row.get(c as usize).copied().unwrap_or(0.0)
            } else {
                0.0
            };
        }
    }
}

/// conv2d without bias (NCHW, weight (O, I, kh, kw), symmetric zero padding) as a custom op with
/// a backward pass:
/// * input gradient: the gradient is scattered onto a zero canvas at the output positions'
///   strided offsets, then correlated with the spatially flipped, in/out-swapped kernel (a plain
///   stride-1 convolution on the fast kernel, whatever the forward stride and padding);
/// * weight gradient: `dW = G · im2col(x)ᵀ`, one GEMM per image, summed.
#[derive(Clone, Copy, Debug)]
struct TrainableConv2d {
    stride: usize,
    padding: usize,
}

impl TrainableConv2d {
    fn geom(&self, x: &Layout, w: &Layout) -> Result<Geom> {
        Geom::conv(
            x.shape().dims4()?,
            w.shape().dims4()?,
            self.stride,
            self.padding,
        )
    }
}

/// The contiguous f32 values of CPU storage under `layout`.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("kernels: expected a contiguous tensor")
    };
    match storage.as_slice::<f32>()?.get(start..end) {
        Some(s) => Ok(s),
        None => bail!("kernels: tensor layout is out of its storage's bounds"),
    }
}

/// The contiguous values of a CPU f32 tensor, detached from any graph.
fn values_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()
}

impl CustomOp2 for TrainableConv2d {
    fn name(&self) -> &'static str {
        "tokenscope-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geom(l1, l2)?;
        let out = conv_f32(
            CpuKernel::best(),
            &g,
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            None,
        )?;
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.geom(x.layout(), weight.layout())?;
        let grad_values = values_f32(grad)?;
        let w_values = values_f32(weight)?;
        let x_values = values_f32(x)?;
        let grad_x = input_gradient(&g, &grad_values, &w_values)?;
        let grad_w = weight_gradient(&g, &grad_values, &x_values)?;
        Ok((
            Some(Tensor::from_vec(
                grad_x,
                (g.n, g.c, g.h, g.w),
                &Device::Cpu,
            )?),
            Some(Tensor::from_vec(
                grad_w,
                (g.o, g.c, g.kh, g.kw),
                &Device::Cpu,
            )?),
        ))
    }
}

/// dL/dx of a convolution, given dL/dy (N, O, Ho, Wo) and the weights (O, C, kh, kw).
fn input_gradient(g: &Geom, grad: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    // x[i] receives g[o]·w[t] wherever o·s + t − p = i. On a canvas z of size H + k − 1 holding
    // g[o] at o·s + k − 1 − p, that is x[i] = Σ_t' z[i + t']·w[k − 1 − t']: a valid convolution.
    let (ch, cw) = (g.h + g.kh - 1, g.w + g.kw - 1);
    let mut canvas = vec![0f32; g.n * g.o * ch * cw];
    canvas
        .par_chunks_mut(ch * cw)
        .zip(grad.par_chunks(g.ho * g.wo))
        .for_each(|(plane, src)| {
            for oy in 0..g.ho {
                let Some(y) = (oy * g.stride + g.kh - 1).checked_sub(g.pad) else {
                    continue;
                };
                if y >= ch {
                    continue;
                }
                for ox in 0..g.wo {
                    let Some(x) = (ox * g.stride + g.kw - 1).checked_sub(g.pad) else {
                        continue;
                    };
                    if let (true, Some(dst), Some(&v)) =
                        (x < cw, plane.get_mut(y * cw + x), src.get(oy * g.wo + ox))
                    {
                        *dst = v;
                    }
                }
            }
        });
    // Flipped kernel with input and output channels swapped: (C, O, kh, kw).
    let mut flipped = vec![0f32; w.len()];
    for o in 0..g.o {
        for c in 0..g.c {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let src = ((o * g.c + c) * g.kh + ky) * g.kw + kx;
                    let dst = ((c * g.o + o) * g.kh + (g.kh - 1 - ky)) * g.kw + (g.kw - 1 - kx);
                    if let (Some(d), Some(&v)) = (flipped.get_mut(dst), w.get(src)) {
                        *d = v;
                    }
                }
            }
        }
    }
    let back = Geom {
        n: g.n,
        c: g.o,
        h: ch,
        w: cw,
        o: g.c,
        kh: g.kh,
        kw: g.kw,
        stride: 1,
        pad: 0,
        ho: g.h,
        wo: g.w,
        image_stride: g.o * ch * cw,
        channel_stride: ch * cw,
    };
    conv_f32(CpuKernel::best(), &back, &canvas, &flipped, None)
}

/// dL/dW of a convolution, given dL/dy (N, O, Ho, Wo) and the input (N, C, H, W).
fn weight_gradient(g: &Geom, grad: &[f32], x: &[f32]) -> Result<Vec<f32>> {
    let k_total = g.c * g.kh * g.kw;
    let plane = g.ho * g.wo;
    let per_image: Vec<Result<Vec<f32>>> = (0..g.n)
        .into_par_iter()
        .map(|n| {
            // im2col of image n stored (K, P): for every tap each output row reads one input
            // row segment, so filling it is row copies (the GEMM reads it transposed).
            let mut cols = vec![0f32; plane * k_total];
            let image = x
                .get(n * g.c * g.h * g.w..(n + 1) * g.c * g.h * g.w)
                .ok_or_else(oob)?;
            for c in 0..g.c {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let k = (c * g.kh + ky) * g.kw + kx;
                        let dst_plane = cols.get_mut(k * plane..(k + 1) * plane).ok_or_else(oob)?;
                        // Output columns whose input column lies inside the image.
                        let ox_lo = g.pad.saturating_sub(kx).div_ceil(g.stride);
                        let ox_hi = (g.w + g.pad)
                            .saturating_sub(kx)
                            .div_ceil(g.stride)
                            .min(g.wo);
                        if ox_lo >= ox_hi {
                            continue;
                        }
                        let ix0 = ox_lo * g.stride + kx - g.pad;
                        for (oy, dst_row) in dst_plane.chunks_exact_mut(g.wo).enumerate() {
                            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                            if iy < 0 || iy >= g.h as isize {
                                continue;
                            }
                            let src_row = (c * g.h + iy as usize) * g.w + ix0;
                            let Some(dst) = dst_row.get_mut(ox_lo..ox_hi) else {
                                continue;
                            };
                            if g.stride == 1 {
                                if let Some(src) = image.get(src_row..src_row + dst.len()) {
                                    dst.copy_from_slice(src);
                                }
                            } else {
                                for (j, d) in dst.iter_mut().enumerate() {
                                    *d = image.get(src_row + j * g.stride).copied().unwrap_or(0.0);
                                }
                            }
                        }
                    }
                }
            }
            let g_n = grad
                .get(n * g.o * plane..(n + 1) * g.o * plane)
                .ok_or_else(oob)?;
            let mut dw = vec![0f32; g.o * k_total];
            // SAFETY: gemm reads m×k and k×n matrices and writes m×n through the given strides;
            // the slices above have exactly those sizes.
            unsafe {
                gemm::gemm(
                    g.o,
                    k_total,
                    plane,
                    dw.as_mut_ptr(),
                    1,
                    k_total as isize,
                    false,
                    g_n.as_ptr(),
                    1,
                    plane as isize,
                    cols.as_ptr(),
                    plane as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            Ok(dw)
        })
        .collect();
    let mut total = vec![0f32; g.o * k_total];
    for dw in per_image {
        for (t, v) in total.iter_mut().zip(dw?) {
            *t += v;
        }
    }
    Ok(total)
}
