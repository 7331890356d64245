//! One Haar wavelet level of the patcher or unpatcher in a single pass over CPU f32 memory.
//!
//! The tensor-op form splits every axis into strided views and adds them element by element on one
//! thread, then concatenates the bands: at 1080p that is several full-resolution copies and most of
//! a small model's time. Here each output value is computed from its 2×2(×2) input block directly,
//! in parallel, with the op form's arithmetic in the op form's order (`(a ± b)·s + 0` per step, as
//! candle's affine map computes it), so the outputs are bit-identical.

use candle_core::{bail, DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::storage;

/// The one-pass levels handle CPU f32 tensors outside of any autograd graph (training keeps the
/// op form, whose gradients candle knows).
pub fn haar_applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op()
}

/// One analysis or synthesis step on a pair: `(s·(a + b), s·(a − b))`, each as candle's
/// `affine(s, 0)` rounds it.
#[inline(always)]
fn pair(a: f32, b: f32, tap: f32) -> (f32, f32) {
    ((a + b) * tap + 0.0, (a - b) * tap + 0.0)
}

/// Scales by the level divisor or multiplier as candle's affine map does.
#[inline(always)]
fn scaled(v: f32, mul: f32) -> f32 {
    v * mul + 0.0
}

fn contiguous_values(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let x = x.contiguous()?;
    let dims = x.dims().to_vec();
    Ok((x, dims))
}

fn read<F: FnOnce(&[f32]) -> Result<Vec<f32>>>(x: &Tensor, f: F) -> Result<Vec<f32>> {
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        bail!("haar: expected a cpu tensor")
    };
    f(storage::contiguous_f32(cpu, layout)?)
}

fn plane(values: &[f32], index: usize, len: usize) -> Result<&[f32]> {
    match values.get(index * len..(index + 1) * len) {
        Some(p) => Ok(p),
        None => bail!("haar: plane {index} is outside the input"),
    }
}

/// The analysis levels' tasks: `out` is slabs of `bands·channels` planes of `plane` values
/// (band-major, channel `band·channels + c`); one task per (slab, channel) gets that channel's
/// planes in band order, so tasks write disjoint memory in parallel.
fn band_planes_per_channel(
    out: &mut [f32],
    bands: usize,
    channels: usize,
    plane: usize,
) -> Vec<(usize, usize, Vec<&mut [f32]>)> {
    let mut tasks = Vec::with_capacity(out.len() / (bands * plane).max(1));
    for (slab_index, slab) in out.chunks_mut(bands * channels * plane).enumerate() {
        let mut groups: Vec<Vec<&mut [f32]>> =
            (0..channels).map(|_| Vec::with_capacity(bands)).collect();
        for (i, band_plane) in slab.chunks_mut(plane).enumerate() {
            if let Some(group) = groups.get_mut(i % channels) {
                group.push(band_plane);
            }
        }
        for (ci, group) in groups.into_iter().enumerate() {
            tasks.push((slab_index, ci, group));
        }
    }
    tasks
}

/// 3-D analysis level on frame-major video (B, T, C, H, W), with `repeat_first` extra copies of
/// frame 0 in front (the patcher's causal padding, never materialised). Bands are ordered
/// `4·bt + 2·bh + bw` (T, then H, then W), each holding all C channels, and every value is
/// multiplied by `mul` (the level's 1/(2√2)). Output (B, (T + repeat_first)/2, 8C, H/2, W/2).
pub fn analysis_3d(x: &Tensor, repeat_first: usize, tap: f32, mul: f64) -> Result<Tensor> {
    let (x, dims) = contiguous_values(x)?;
    let &[b, t, c, h, w] = dims.as_slice() else {
        bail!("haar: expected (B, T, C, H, W), got {dims:?}")
    };
    let frames = t + repeat_first;
    if t == 0 || !frames.is_multiple_of(2) || !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        bail!("haar: (T + {repeat_first}, H, W) must be even, got {dims:?}")
    }
    let (t2, h2, w2) = (frames / 2, h / 2, w / 2);
    let (p, p2) = (h * w, h2 * w2);
    let mul = mul as f32;
    let out = read(&x, |input| {
        let mut out = vec![0f32; b * t2 * 8 * c * p2];
        band_planes_per_channel(&mut out, 8, c, p2)
            .into_par_iter()
            .try_for_each(|(slab_index, ci, mut bands)| -> Result<()> {
                let (bi, ti) = (slab_index / t2, slab_index % t2);
                let real = |v: usize| v.saturating_sub(repeat_first);
                let f0 = plane(input, (bi * t + real(2 * ti)) * c + ci, p)?;
                let f1 = plane(input, (bi * t + real(2 * ti + 1)) * c + ci, p)?;
                let [b0, b1, b2, b3, b4, b5, b6, b7] = bands.as_mut_slice() else {
                    bail!("haar: expected 8 band planes")
                };
                for y in 0..h2 {
                    let (r0, r1) = (2 * y * w, (2 * y + 1) * w);
                    for xo in 0..w2 {
                        let (i00, i01, i10, i11) =
                            (r0 + 2 * xo, r0 + 2 * xo + 1, r1 + 2 * xo, r1 + 2 * xo + 1);
                        // T first: low and high in time for each of the four pixels.
                        let (l00, h00) = pair(f0[i00], f1[i00], tap);
                        let (l01, h01) = pair(f0[i01], f1[i01], tap);
                        let (l10, h10) = pair(f0[i10], f1[i10], tap);
                        let (l11, h11) = pair(f0[i11], f1[i11], tap);
                        // Then H, then W.
                        let (ll0, lh0) = pair(l00, l10, tap);
                        let (ll1, lh1) = pair(l01, l11, tap);
                        let (hl0, hh0) = pair(h00, h10, tap);
                        let (hl1, hh1) = pair(h01, h11, tap);
                        let o = y * w2 + xo;
                        let (lll, llh) = pair(ll0, ll1, tap);
                        let (lhl, lhh) = pair(lh0, lh1, tap);
                        let (hll, hlh) = pair(hl0, hl1, tap);
                        let (hhl, hhh) = pair(hh0, hh1, tap);
                        b0[o] = scaled(lll, mul);
                        b1[o] = scaled(llh, mul);
                        b2[o] = scaled(lhl, mul);
                        b3[o] = scaled(lhh, mul);
                        b4[o] = scaled(hll, mul);
                        b5[o] = scaled(hlh, mul);
                        b6[o] = scaled(hhl, mul);
                        b7[o] = scaled(hhh, mul);
                    }
                }
                Ok(())
            })?;
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, t2, 8 * c, h2, w2), &Device::Cpu)
}

/// Inverse of [`analysis_3d`] on (B, t, 8C, h, w): undoes W, then H, then T, multiplies by `mul`
/// (the level's 2√2) and leaves out the first `skip_frames` output frames.
/// Output (B, 2t − skip_frames, C, 2h, 2w).
pub fn synthesis_3d(x: &Tensor, skip_frames: usize, tap: f32, mul: f64) -> Result<Tensor> {
    let (x, dims) = contiguous_values(x)?;
    let &[b, t2, c8, h2, w2] = dims.as_slice() else {
        bail!("haar: expected (B, t, 8C, h, w), got {dims:?}")
    };
    if !c8.is_multiple_of(8) || 2 * t2 <= skip_frames {
        bail!("haar: cannot synthesise {dims:?} and drop {skip_frames} frames")
    }
    let c = c8 / 8;
    let frames = 2 * t2 - skip_frames;
    let (h, w, p2) = (2 * h2, 2 * w2, h2 * w2);
    let mul = mul as f32;
    let out = read(&x, |input| {
        let mut out = vec![0f32; b * frames * c * h * w];
        out.par_chunks_mut(h * w)
            .enumerate()
            .try_for_each(|(index, target)| -> Result<()> {
                let (bf, ci) = (index / c, index % c);
                let (bi, fo) = (bf / frames, bf % frames);
                let f = fo + skip_frames;
                let (ti, odd_frame) = (f / 2, f % 2 == 1);
                let band = |k: usize| plane(input, (bi * t2 + ti) * c8 + k * c + ci, p2);
                let bands = [
                    band(0)?,
                    band(1)?,
                    band(2)?,
                    band(3)?,
                    band(4)?,
                    band(5)?,
                    band(6)?,
                    band(7)?,
                ];
                for y in 0..h2 {
                    for xo in 0..w2 {
                        let i = y * w2 + xo;
                        let v = bands.map(|plane| plane[i]);
                        // W: pairs (0,1) (2,3) (4,5) (6,7) → even and odd columns.
                        let (a0, a1) = pair(v[0], v[1], tap);
                        let (b0, b1) = pair(v[2], v[3], tap);
                        let (c0, c1) = pair(v[4], v[5], tap);
                        let (d0, d1) = pair(v[6], v[7], tap);
                        // H: (a, b) and (c, d) → even and odd rows, per column.
                        let (lo00, lo10) = pair(a0, b0, tap);
                        let (lo01, lo11) = pair(a1, b1, tap);
                        let (hi00, hi10) = pair(c0, d0, tap);
                        let (hi01, hi11) = pair(c1, d1, tap);
                        // T: this task's frame of the pair.
                        let pick = |lo: f32, hi: f32| {
                            let (even, odd) = pair(lo, hi, tap);
                            scaled(if odd_frame { odd } else { even }, mul)
                        };
                        let (r0, r1) = (2 * y * w + 2 * xo, (2 * y + 1) * w + 2 * xo);
                        target[r0] = pick(lo00, hi00);
                        target[r0 + 1] = pick(lo01, hi01);
                        target[r1] = pick(lo10, hi10);
                        target[r1 + 1] = pick(lo11, hi11);
                    }
                }
                Ok(())
            })?;
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, frames, c, h, w), &Device::Cpu)
}

/// 2-D analysis level on (B, C, H, W): W first, then H; bands `[LL, LH, HL, HH]` (first letter the
/// W filter), each holding all C channels, every value multiplied by `mul` (the level's 1/2).
/// Output (B, 4C, H/2, W/2).
pub fn analysis_2d(x: &Tensor, tap: f32, mul: f64) -> Result<Tensor> {
    let (x, dims) = contiguous_values(x)?;
    let &[b, c, h, w] = dims.as_slice() else {
        bail!("haar: expected (B, C, H, W), got {dims:?}")
    };
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        bail!("haar: (H, W) must be even, got {dims:?}")
    }
    let (h2, w2, p, p2) = (h / 2, w / 2, h * w, h * w / 4);
    let mul = mul as f32;
    let out = read(&x, |input| {
        let mut out = vec![0f32; b * 4 * c * p2];
        band_planes_per_channel(&mut out, 4, c, p2)
            .into_par_iter()
            .try_for_each(|(bi, ci, mut bands)| -> Result<()> {
                let source = plane(input, bi * c + ci, p)?;
                let [ll, lh, hl, hh] = bands.as_mut_slice() else {
                    bail!("haar: expected 4 band planes")
                };
                for y in 0..h2 {
                    let (r0, r1) = (2 * y * w, (2 * y + 1) * w);
                    for xo in 0..w2 {
                        let (lw0, hw0) = pair(source[r0 + 2 * xo], source[r0 + 2 * xo + 1], tap);
                        let (lw1, hw1) = pair(source[r1 + 2 * xo], source[r1 + 2 * xo + 1], tap);
                        let (vll, vlh) = pair(lw0, lw1, tap);
                        let (vhl, vhh) = pair(hw0, hw1, tap);
                        let o = y * w2 + xo;
                        ll[o] = scaled(vll, mul);
                        lh[o] = scaled(vlh, mul);
                        hl[o] = scaled(vhl, mul);
                        hh[o] = scaled(vhh, mul);
                    }
                }
                Ok(())
            })?;
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, 4 * c, h2, w2), &Device::Cpu)
}

/// Inverse of [`analysis_2d`] on (B, 4C, h, w): undoes H, then W, multiplies by `mul` (the level's
/// 2). Output (B, C, 2h, 2w).
pub fn synthesis_2d(x: &Tensor, tap: f32, mul: f64) -> Result<Tensor> {
    let (x, dims) = contiguous_values(x)?;
    let &[b, c4, h2, w2] = dims.as_slice() else {
        bail!("haar: expected (B, 4C, h, w), got {dims:?}")
    };
    if !c4.is_multiple_of(4) {
        bail!("haar: cannot synthesise {dims:?}: channels are not a multiple of 4")
    }
    let c = c4 / 4;
    let (h, w, p2) = (2 * h2, 2 * w2, h2 * w2);
    let mul = mul as f32;
    let out = read(&x, |input| {
        let mut out = vec![0f32; b * c * h * w];
        out.par_chunks_mut(h * w)
            .enumerate()
            .try_for_each(|(index, target)| -> Result<()> {
                let (bi, ci) = (index / c, index % c);
                let band = |k: usize| plane(input, bi * c4 + k * c + ci, p2);
                let (ll, lh, hl, hh) = (band(0)?, band(1)?, band(2)?, band(3)?);
                for y in 0..h2 {
                    for xo in 0..w2 {
                        let i = y * w2 + xo;
                        // H: rows of the W-low and the W-high halves.
                        let (lw0, lw1) = pair(ll[i], lh[i], tap);
                        let (hw0, hw1) = pair(hl[i], hh[i], tap);
                        // W: columns.
                        let (e0, o0) = pair(lw0, hw0, tap);
                        let (e1, o1) = pair(lw1, hw1, tap);
                        let (r0, r1) = (2 * y * w + 2 * xo, (2 * y + 1) * w + 2 * xo);
                        target[r0] = scaled(e0, mul);
                        target[r0 + 1] = scaled(o0, mul);
                        target[r1] = scaled(e1, mul);
                        target[r1 + 1] = scaled(o1, mul);
                    }
                }
                Ok(())
            })?;
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, c, h, w), &Device::Cpu)
}
