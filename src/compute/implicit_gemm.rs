//! The implicit-GEMM convolution engine on plain f32 slices: geometry, weight and input packing,
//! work partitioning over rayon, and the dispatch to the per-ISA micro-kernels (`avx512.rs`,
//! `avx2.rs`, `portable.rs`). The tensor-level entry points are in `conv.rs`.
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
//! F(4x4, 3x3) instead (`winograd.rs`, chosen in `conv.rs`): four times fewer multiplies,
//! computed as a batch of 36 pointwise GEMMs on the same micro-kernels
//! ([`batched_pointwise_into`]).
//!
//! The only `unsafe` here is the calls into the AVX code after run-time feature detection; in
//! the micro-kernels it is their unaligned vector load/store helpers, whose pointers come straight
//! from references to 16-float arrays.
use candle_core::{bail, Result};
use rayon::prelude::*;

use super::portable::{kernel_portable, PORTABLE_NR};
use super::scratch::Scratch;
use super::tile::{Lane16, MR};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

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
    pub(super) fn check_available(self) -> Result<()> {
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

/// Convolution geometry (all sizes in elements).
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    /// Elements from the start of one input image to the next: `c * h * w` for a batch, less
    /// when consecutive images overlap (the temporal convolution's windows of frames).
    pub(super) image_stride: usize,
    /// Elements from one input channel plane to the next: `h * w` unless the images are
    /// interleaved channel by channel (the Winograd transforms' layout).
    pub(super) channel_stride: usize,
}

impl Geom {
    /// A 1x1 convolution over `n` images of `c` channels of 1 x `s` pixels, `image_stride`
    /// elements apart.
    pub(super) fn pointwise(n: usize, c: usize, s: usize, o: usize, image_stride: usize) -> Self {
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
    pub(super) fn conv(
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

pub(super) fn oob() -> candle_core::Error {
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
pub(super) fn conv_f32(
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
pub(super) fn conv_into(
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
