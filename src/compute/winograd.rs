//! Winograd convolution F(m×m, 3×3) for the 3x3, stride-1, pad-1 convolutions that make up
//! most of the tokenizer's arithmetic (every spatial convolution of every residual block).
//!
//! Winograd's minimal filtering algorithm computes an m×m block of outputs of a 3x3 convolution
//! from the (m+2)×(m+2) block `d` of inputs around it as `y = Aᵀ[Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)]A`.
//! The element-wise products summed over the input channels are (m+2)² independent GEMMs, one
//! per transform coefficient ("frequency"), each (O × C)·(C × tiles). With m = 4 that is 36
//! multiply-adds per input channel for 16 outputs where the direct convolution needs 144: four
//! times less arithmetic, and the GEMMs run on the same micro-kernels as every other
//! convolution. The transforms are additions and multiplications by small constants, so the
//! results differ from the direct convolution only by float rounding (the tests bound it).
//!
//! Three passes, each parallel:
//! 1. input transform, per input channel: `V[c][f][s] = (Bᵀ d B)[f]` for every tile `s`
//!    (images × tile rows × tile columns), sixteen tiles at a time in vector lanes;
//! 2. one GEMM per frequency: `M[f][o][s] = Σ_c U[f][o][c] V[c][f][s]`, with the weight transform
//!    `U = G g Gᵀ` written straight into the micro-kernel's packed weight layout (per call: a
//!    cache of transformed weights would take 4x the model's memory);
//! 3. output transform, per output plane: `y = Aᵀ M A + bias`, cropped to the image.
//!
//! The temporaries (V, M, U: 2.25x the input, 2.25x the output, 4x the weights) come from the
//! kernels' scratch pool, so that their pages are not faulted in again for every layer.
use candle_core::{bail, Result};
use rayon::prelude::*;

use super::implicit_gemm::{batched_pointwise_into, CpuKernel};
use super::scratch::Scratch;
use super::tile::{Lane16, MR};

/// Tiles handled together in the vector lanes of the transforms.
const LANES: usize = MR;
/// The largest output tile side supported (F(4×4, 3×3)).
const MAX_M: usize = 4;
/// Input columns read by `LANES` tiles of at most `MAX_M` outputs: the tiles' columns plus the
/// two of the 3x3 filter's border.
const WINDOW: usize = LANES * MAX_M + 2;

/// One value of each of `LANES` tiles (or, for the weights, of up to `LANES` filters).
type Lanes = Lane16;

const ZERO: Lanes = Lane16::ZERO;

/// The matrices of F(M×M, 3×3), with `A = M + 2` inputs per tile side.
pub(crate) struct Transform<const M: usize, const A: usize> {
    /// Bᵀ: input tile → frequencies.
    bt: [[f32; A]; A],
    /// G: 3 filter taps → frequencies.
    g: [[f32; 3]; A],
    /// Aᵀ: frequencies → output tile.
    at: [[f32; A]; M],
}

/// F(2×2, 3×3): 16 multiplies for 4 outputs (2.25x fewer than direct).
pub(crate) struct F2;

impl Winograd<2, 4> for F2 {
    const T: Transform<2, 4> = Transform {
        bt: [
            [1.0, 0.0, -1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, -1.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, -1.0],
        ],
        g: [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ],
        at: [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]],
    };
}

/// F(4×4, 3×3) with the interpolation points 0, ±1, ±2 (Lavin & Gray): 36 multiplies for 16
/// outputs (4x fewer than direct).
pub(crate) struct F4;

impl Winograd<4, 6> for F4 {
    const T: Transform<4, 6> = Transform {
        bt: [
            [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
            [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
            [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
            [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
            [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
            [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
        ],
        g: [
            [1.0 / 4.0, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ],
        at: [
            [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
            [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
            [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
            [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
        ],
    };
}

/// Sizes of one convolution: input (n, c, h, w), `o` output channels, output (n, o, h, w).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
}

/// A Winograd algorithm F(M×M, 3×3), `A = M + 2`: its matrices are compile-time constants, so
/// the transforms compile to straight-line code without the zero terms.
pub(crate) trait Winograd<const M: usize, const A: usize>: Sized {
    const T: Transform<M, A>;

    /// The 3x3, stride-1, pad-1 convolution of `x` (n, c, h, w) with `weight` (o, c, 3, 3) plus
    /// `bias`, on `kernel`'s GEMM micro-kernel → (n, o, h, w).
    fn conv3x3(
        kernel: CpuKernel,
        shape: Shape,
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        const { assert!(M <= MAX_M && A == M + 2) };
        let Shape { n, c, h, w, o } = shape;
        if x.len() != n * c * h * w || weight.len() != o * c * 9 {
            bail!("winograd: tensor sizes do not match a 3x3 convolution of {shape:?}");
        }
        if bias.is_some_and(|b| b.len() != o) {
            bail!("winograd: the bias does not have {o} values");
        }
        let mut out = vec![0f32; n * o * h * w];
        if out.is_empty() {
            return Ok(out);
        }
        let tiles = Tiles::new(shape, M);
        let freqs = A * A;
        let u = Self::weights(kernel, weight, o, c)?;
        let mut v = Scratch::take(c * freqs * tiles.total);
        v.par_chunks_mut(freqs * tiles.total)
            .enumerate()
            .try_for_each(|(ci, v_c)| {
                let pass = Pass::Inputs {
                    shape,
                    tiles: &tiles,
                    x,
                    ci,
                    v_c,
                };
                run::<M, A, Self>(kernel, pass)
            })?;
        let mut m = Scratch::take(freqs * o * tiles.total);
        batched_pointwise_into(
            kernel,
            (freqs, c, tiles.total, o),
            freqs * tiles.total,
            &v,
            &u,
            &mut m,
        )?;
        drop(v);
        out.par_chunks_mut(h * w)
            .enumerate()
            .try_for_each(|(plane, y)| {
                let (ni, oi) = (plane / o, plane % o);
                let bias = bias.and_then(|b| b.get(oi)).copied().unwrap_or(0.0);
                let pass = Pass::Outputs {
                    shape,
                    tiles: &tiles,
                    m: &m,
                    ni,
                    oi,
                    bias,
                    y,
                };
                run::<M, A, Self>(kernel, pass)
            })?;
        Ok(out)
    }

    /// `U[f][o][c] = (G g Gᵀ)[f]` for every filter `g = weight[o][c]`, packed for `kernel`'s
    /// GEMM as `[o tile][f][c][nr]` (see [`batched_pointwise_into`]), in parallel over the tiles.
    fn weights(kernel: CpuKernel, weight: &[f32], o: usize, c: usize) -> Result<Scratch> {
        let nr = kernel.nr();
        if nr > LANES {
            bail!("winograd: {nr} output channels per tile do not fit the {LANES} lanes");
        }
        let mut packed = Scratch::take(o.div_ceil(nr) * A * A * c * nr);
        packed
            .par_chunks_mut((A * A * c * nr).max(1))
            .enumerate()
            .try_for_each(|(tile, dst)| {
                let pass = Pass::Weights {
                    weight,
                    sizes: (o, c, nr),
                    tile,
                    dst,
                };
                run::<M, A, Self>(kernel, pass)
            })?;
        Ok(packed)
    }

    /// [`Self::weights`] of output channel tile `tile`: the `nr` filters of each input channel
    /// sit in the vector lanes, so that each frequency's result is one contiguous store.
    #[inline(always)]
    fn weights_of_tile(
        weight: &[f32],
        (o, c, nr): (usize, usize, usize),
        tile: usize,
        dst: &mut [f32],
    ) -> Result<()> {
        let outputs = tile * nr..(tile * nr + nr).min(o);
        let filters = weight
            .get(outputs.start * c * 9..outputs.end * c * 9)
            .ok_or_else(oob)?;
        for ci in 0..c {
            // Lanes past O stay zero: those channels multiply by zero weights.
            let mut taps = [[ZERO; 3]; 3];
            for (l, per_output) in filters.chunks_exact(c * 9).enumerate() {
                let filter = per_output.get(ci * 9..ci * 9 + 9).ok_or_else(oob)?;
                for (tap, &value) in taps.iter_mut().flatten().zip(filter) {
                    if let Some(lane) = tap.0.get_mut(l) {
                        *lane = value;
                    }
                }
            }
            let freqs = times_transposed(&times(&Self::T.g, &taps), &Self::T.g);
            for (f, value) in freqs.iter().flatten().enumerate() {
                let start = (f * c + ci) * nr;
                let d = dst.get_mut(start..start + nr).ok_or_else(oob)?;
                d.iter_mut().zip(&value.0).for_each(|(d, &v)| *d = v);
            }
        }
        Ok(())
    }

    /// Pass 1 for input channel `ci`: `v_c[f][s]` for every tile `s` of every image.
    #[inline(always)]
    fn transform_inputs(
        shape: Shape,
        tiles: &Tiles,
        x: &[f32],
        ci: usize,
        v_c: &mut [f32],
    ) -> Result<()> {
        let Shape { c, h, w, .. } = shape;
        for ni in 0..shape.n {
            let plane_start = (ni * c + ci) * h * w;
            let plane = x.get(plane_start..plane_start + h * w).ok_or_else(oob)?;
            for ty in 0..tiles.rows {
                for tx0 in (0..tiles.cols).step_by(LANES) {
                    let valid = LANES.min(tiles.cols - tx0);
                    // The group's input rows, zero-padded, in a fixed-size window: the lanes are
                    // then gathered at constant offsets, without bounds checks per value.
                    let mut window = [[0f32; WINDOW]; A];
                    let x0 = (tx0 * M) as isize - 1;
                    for (i, win_row) in window.iter_mut().enumerate() {
                        let Some(yi) = (ty * M + i).checked_sub(1).filter(|&y| y < h) else {
                            continue;
                        };
                        let row = plane.get(yi * w..(yi + 1) * w).ok_or_else(oob)?;
                        let lo = x0.max(0) as usize;
                        let hi = (x0 + WINDOW as isize).clamp(0, w as isize) as usize;
                        let at = (lo as isize - x0) as usize;
                        if let (Some(dst), Some(src)) = (
                            win_row.get_mut(at..at + hi.saturating_sub(lo)),
                            row.get(lo..hi),
                        ) {
                            dst.copy_from_slice(src);
                        }
                    }
                    let mut d = [[ZERO; A]; A];
                    for (d_row, win_row) in d.iter_mut().zip(&window) {
                        for (j, dv) in d_row.iter_mut().enumerate() {
                            for (l, lane) in dv.0.iter_mut().enumerate() {
                                *lane = win_row.get(l * M + j).copied().unwrap_or(0.0);
                            }
                        }
                    }
                    let freqs = times_transposed(&times(&Self::T.bt, &d), &Self::T.bt);
                    let s0 = tiles.index(ni, ty, tx0);
                    for (f, value) in freqs.iter().flatten().enumerate() {
                        let start = f * tiles.total + s0;
                        value.store_prefix(v_c.get_mut(start..start + valid).ok_or_else(oob)?);
                    }
                }
            }
        }
        Ok(())
    }

    /// Pass 3 for output plane (`ni`, `oi`): `y = Aᵀ M A + bias` for each of its tiles.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn transform_outputs(
        shape: Shape,
        tiles: &Tiles,
        m: &[f32],
        ni: usize,
        oi: usize,
        bias: f32,
        y: &mut [f32],
    ) -> Result<()> {
        let Shape { h, w, o, .. } = shape;
        for ty in 0..tiles.rows {
            for tx0 in (0..tiles.cols).step_by(LANES) {
                let valid = LANES.min(tiles.cols - tx0);
                let s0 = tiles.index(ni, ty, tx0);
                let mut freqs = [[ZERO; A]; A];
                for (f, value) in freqs.iter_mut().flatten().enumerate() {
                    let start = (f * o + oi) * tiles.total + s0;
                    value.load_prefix(m.get(start..start + valid).ok_or_else(oob)?);
                }
                let out = times_transposed(&times(&Self::T.at, &freqs), &Self::T.at);
                // Interleave the lanes into output rows in a fixed-size window, then copy the
                // part inside the image.
                let x0 = tx0 * M;
                let len = (valid * M).min(w - x0);
                for (r, out_row) in out.iter().enumerate() {
                    let yi = ty * M + r;
                    if yi >= h {
                        break;
                    }
                    let mut window = [0f32; LANES * MAX_M];
                    for (j, value) in out_row.iter().enumerate() {
                        for (l, &v) in value.0.iter().enumerate() {
                            if let Some(slot) = window.get_mut(l * M + j) {
                                *slot = v + bias;
                            }
                        }
                    }
                    let dst = y.get_mut(yi * w + x0..yi * w + x0 + len).ok_or_else(oob)?;
                    dst.copy_from_slice(window.get(..len).ok_or_else(oob)?);
                }
            }
        }
        Ok(())
    }
}

/// How the output is cut into M×M tiles; tile `s` of the GEMMs is (image, tile row, tile column)
/// in row-major order.
pub(crate) struct Tiles {
    rows: usize,
    cols: usize,
    total: usize,
}

impl Tiles {
    fn new(shape: Shape, m: usize) -> Self {
        let (rows, cols) = (shape.h.div_ceil(m), shape.w.div_ceil(m));
        Self {
            rows,
            cols,
            total: shape.n * rows * cols,
        }
    }

    fn index(&self, ni: usize, ty: usize, tx: usize) -> usize {
        (ni * self.rows + ty) * self.cols + tx
    }
}

/// `m · x` for a constant matrix `m` (R × K) and a matrix of lanes `x` (K × C).
#[inline(always)]
fn times<const R: usize, const K: usize, const C: usize>(
    m: &[[f32; K]; R],
    x: &[[Lanes; C]; K],
) -> [[Lanes; C]; R] {
    let mut out = [[ZERO; C]; R];
    for (out_row, m_row) in out.iter_mut().zip(m) {
        for (&coef, x_row) in m_row.iter().zip(x) {
            if coef == 0.0 {
                continue;
            }
            for (o, xv) in out_row.iter_mut().zip(x_row) {
                for (a, &b) in o.0.iter_mut().zip(&xv.0) {
                    *a += coef * b;
                }
            }
        }
    }
    out
}

/// `x · mᵀ` for a matrix of lanes `x` (R × K) and a constant matrix `m` (C × K).
#[inline(always)]
fn times_transposed<const R: usize, const K: usize, const C: usize>(
    x: &[[Lanes; K]; R],
    m: &[[f32; K]; C],
) -> [[Lanes; C]; R] {
    let mut out = [[ZERO; C]; R];
    for (out_row, x_row) in out.iter_mut().zip(x) {
        for (o, m_row) in out_row.iter_mut().zip(m) {
            for (&coef, xv) in m_row.iter().zip(x_row) {
                if coef == 0.0 {
                    continue;
                }
                for (a, &b) in o.0.iter_mut().zip(&xv.0) {
                    *a += coef * b;
                }
            }
        }
    }
    out
}

/// One piece of one of the three passes.
enum Pass<'a> {
    Weights {
        weight: &'a [f32],
        sizes: (usize, usize, usize),
        tile: usize,
        dst: &'a mut [f32],
    },
    Inputs {
        shape: Shape,
        tiles: &'a Tiles,
        x: &'a [f32],
        ci: usize,
        v_c: &'a mut [f32],
    },
    Outputs {
        shape: Shape,
        tiles: &'a Tiles,
        m: &'a [f32],
        ni: usize,
        oi: usize,
        bias: f32,
        y: &'a mut [f32],
    },
}

/// Runs `pass` compiled for the widest vector unit `kernel` says this CPU has (the transforms
/// are lane-parallel loops that the compiler vectorises to the enabled width).
fn run<const M: usize, const A: usize, W: Winograd<M, A>>(
    kernel: CpuKernel,
    pass: Pass,
) -> Result<()> {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel` is Avx512 only when `CpuKernel::available` detected avx512f.
        CpuKernel::Avx512 => unsafe { run_avx512::<M, A, W>(pass) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel` is Avx2 only when `CpuKernel::available` detected avx2 and fma.
        CpuKernel::Avx2 => unsafe { run_avx2::<M, A, W>(pass) },
        _ => run_pass::<M, A, W>(pass),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn run_avx512<const M: usize, const A: usize, W: Winograd<M, A>>(pass: Pass) -> Result<()> {
    run_pass::<M, A, W>(pass)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<const M: usize, const A: usize, W: Winograd<M, A>>(pass: Pass) -> Result<()> {
    run_pass::<M, A, W>(pass)
}

#[inline(always)]
fn run_pass<const M: usize, const A: usize, W: Winograd<M, A>>(pass: Pass) -> Result<()> {
    match pass {
        Pass::Weights {
            weight,
            sizes,
            tile,
            dst,
        } => W::weights_of_tile(weight, sizes, tile, dst),
        Pass::Inputs {
            shape,
            tiles,
            x,
            ci,
            v_c,
        } => W::transform_inputs(shape, tiles, x, ci, v_c),
        Pass::Outputs {
            shape,
            tiles,
            m,
            ni,
            oi,
            bias,
            y,
        } => W::transform_outputs(shape, tiles, m, ni, oi, bias, y),
    }
}

fn oob() -> candle_core::Error {
    candle_core::Error::Msg("winograd: internal index out of range".to_string())
}
