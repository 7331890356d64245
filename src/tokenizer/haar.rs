//! The Haar wavelet patcher and unpatcher (2-D for images, 3-D for videos).
//!
//! Band and channel order follow the official code: 2-D transforms W then H and concatenates
//! `[LL, LH, HL, HH]` (first letter = W filter); 3-D transforms T, H, W and concatenates the eight
//! bands with index `4·bt + 2·bh + bw`. Each band holds all input channels, so the output channel is
//! `band · C + c`. The forward transform divides by 2 (2-D) or 2√2 (3-D) per level, the inverse
//! multiplies back. The tap `s` is read from the checkpoint (0.70703125 in bf16 files), not assumed.
//!
//! Video tensors here use Tokenscope's frame-major layout (B, T, C, H, W).
//!
//! On CPU f32 tensors outside autograd, each level is one pass of `compute::haar` (bit-identical
//! to the op form kept for other devices, dtypes and training). The transforms take their input by
//! value, so a level's input is released as soon as the next level exists: at 1080p each is as
//! large as the clip in f32.

use candle_core::Tensor;

use crate::compute::haar as one_pass;

use super::Result;

/// The exact float32 Haar tap a freshly built official module uses (1/√2 rounded to f32).
pub const HAAR_TAP_F32: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// 3-D level divisor: the official code divides by 2·√2 as a float32 constant.
const SCALE_3D: f64 = 2.0 * std::f64::consts::SQRT_2;

fn odd_length(dim: usize, len: usize) -> super::TokenizerError {
    super::TokenizerError::InvalidInput(format!(
        "the wavelet transform needs an even length on axis {dim}, got {len}"
    ))
}

/// The one-pass levels' input checks, with the op form's messages: every level halves `dims`.
fn check_even(x: &Tensor, dims: &[usize]) -> Result<()> {
    for &dim in dims {
        let len = x.dim(dim)?;
        if len % 2 != 0 {
            return Err(odd_length(dim, len));
        }
    }
    Ok(())
}

fn check_bands(x: &Tensor, dim: usize, bands: usize) -> Result<()> {
    if x.dim(dim)? % bands != 0 {
        return Err(super::TokenizerError::InvalidInput(format!(
            "unpatcher input channels must be a multiple of {bands}"
        )));
    }
    Ok(())
}

/// Splits dimension `dim` (even length) into its even and odd samples.
fn split_pairs(x: &Tensor, dim: usize) -> Result<(Tensor, Tensor)> {
    let len = x.dim(dim)?;
    let mut dims = x.dims().to_vec();
    if len % 2 != 0 {
        return Err(odd_length(dim, len));
    }
    dims.splice(dim..=dim, [len / 2, 2]);
    let paired = x.reshape(dims)?;
    let even = paired.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?;
    let odd = paired.narrow(dim + 1, 1, 1)?.squeeze(dim + 1)?;
    Ok((even, odd))
}

/// Inverse of [`split_pairs`]: interleaves `even` and `odd` along `dim`.
fn interleave(even: &Tensor, odd: &Tensor, dim: usize) -> Result<Tensor> {
    let mut dims = even.dims().to_vec();
    let stacked = Tensor::stack(&[even, odd], dim + 1)?;
    if let Some(len) = dims.get_mut(dim) {
        *len *= 2;
    }
    Ok(stacked.reshape(dims)?)
}

/// One analysis step along `dim`: (low, high) = (s·(even + odd), s·(even − odd)).
fn analyse(x: &Tensor, dim: usize, tap: f64) -> Result<(Tensor, Tensor)> {
    let (even, odd) = split_pairs(x, dim)?;
    let low = ((&even + &odd)? * tap)?;
    let high = ((even - odd)? * tap)?;
    Ok((low, high))
}

/// One synthesis step along `dim`: even = s·(low + high), odd = s·(low − high).
fn synthesise(low: &Tensor, high: &Tensor, dim: usize, tap: f64) -> Result<Tensor> {
    let even = ((low + high)? * tap)?;
    let odd = ((low - high)? * tap)?;
    interleave(&even, &odd, dim)
}

/// Number of Haar levels for a patch size (4 → 2, 2 → 1).
fn levels(patch_size: usize) -> usize {
    patch_size.max(1).trailing_zeros() as usize
}

/// 2-D patcher: (B, C, H, W) → (B, C·4^L, H/2^L, W/2^L).
pub fn patch_2d(x: Tensor, patch_size: usize, tap: f32) -> Result<Tensor> {
    if one_pass::haar_applies(&x) {
        let mut x = x;
        for _ in 0..levels(patch_size) {
            check_even(&x, &[2, 3])?;
            x = one_pass::analysis_2d(&x, tap, 1.0 / 2.0)?;
        }
        return Ok(x);
    }
    patch_2d_ops(&x, patch_size, tap)
}

/// The op form of [`patch_2d`]: candle ops, for every device, dtype and autograd.
fn patch_2d_ops(x: &Tensor, patch_size: usize, tap: f32) -> Result<Tensor> {
    let tap = f64::from(tap);
    let mut x = x.clone();
    for _ in 0..levels(patch_size) {
        let (low_w, high_w) = analyse(&x, 3, tap)?;
        let (ll, lh) = analyse(&low_w, 2, tap)?;
        let (hl, hh) = analyse(&high_w, 2, tap)?;
        x = (Tensor::cat(&[ll, lh, hl, hh], 1)? / 2.0)?;
    }
    Ok(x)
}

/// 2-D unpatcher: inverse of [`patch_2d`].
pub fn unpatch_2d(x: Tensor, patch_size: usize, tap: f32) -> Result<Tensor> {
    if one_pass::haar_applies(&x) {
        let mut x = x;
        for _ in 0..levels(patch_size) {
            check_bands(&x, 1, 4)?;
            x = one_pass::synthesis_2d(&x, tap, 2.0)?;
        }
        return Ok(x);
    }
    unpatch_2d_ops(&x, patch_size, tap)
}

/// The op form of [`unpatch_2d`]: candle ops, for every device, dtype and autograd.
fn unpatch_2d_ops(x: &Tensor, patch_size: usize, tap: f32) -> Result<Tensor> {
    let tap = f64::from(tap);
    let mut x = x.clone();
    for _ in 0..levels(patch_size) {
        let bands = x.chunk(4, 1)?;
        let [ll, lh, hl, hh] = bands.as_slice() else {
            return Err(super::TokenizerError::InvalidInput(
                "unpatcher input channels must be a multiple of 4".into(),
            ));
        };
        let low_w = synthesise(ll, lh, 2, tap)?;
        let high_w = synthesise(hl, hh, 2, tap)?;
        x = (synthesise(&low_w, &high_w, 3, tap)? * 2.0)?;
    }
    Ok(x)
}

/// 3-D patcher on frame-major video (B, T, C, H, W): repeats frame 0 so the clip has
/// `T − 1 + patch_size` frames, then applies the 3-D Haar levels.
/// Output: (B, 1 + (T−1)/ps, C·8^L, H/ps, W/ps).
pub fn patch_3d(x: Tensor, patch_size: usize, tap: f32) -> Result<Tensor> {
    if one_pass::haar_applies(&x) && levels(patch_size) > 0 {
        // The causal padding (frame 0 repeated) is read in place, not concatenated.
        let mut repeat = patch_size - 1;
        let mut x = x;
        for _ in 0..levels(patch_size) {
            check_even(&x, &[3, 4])?;
            let frames = x.dim(1)? + repeat;
            if !frames.is_multiple_of(2) {
                return Err(odd_length(1, frames));
            }
            x = one_pass::analysis_3d(&x, repeat, tap, 1.0 / SCALE_3D)?;
            repeat = 0;
        }
        return Ok(x);
    }
    patch_3d_ops(&x, patch_size, tap)
}

/// The op form of [`patch_3d`]: candle ops, for every device, dtype and autograd.
fn patch_3d_ops(x: &Tensor, patch_size: usize, tap: f32) -> Result<Tensor> {
    let tap = f64::from(tap);
    let first = x.narrow(1, 0, 1)?;
    let mut parts = vec![first; patch_size.saturating_sub(1)];
    parts.push(x.clone());
    let mut x = Tensor::cat(&parts, 1)?;
    for _ in 0..levels(patch_size) {
        // T (dim 1), then H (dim 3), then W (dim 4).
        let (lt, ht) = analyse(&x, 1, tap)?;
        let mut bands = Vec::with_capacity(8);
        for by_t in [lt, ht] {
            let (lh, hh) = analyse(&by_t, 3, tap)?;
            for by_h in [lh, hh] {
                let (lw, hw) = analyse(&by_h, 4, tap)?;
                bands.push(lw);
                bands.push(hw);
            }
        }
        x = (Tensor::cat(&bands, 2)? / SCALE_3D)?;
    }
    Ok(x)
}

/// 3-D unpatcher on frame-major latents-of-pixels (B, t, C·8^L, h, w): inverse Haar, then drops the
/// first `patch_size − 1` frames. Output (B, ps·t − ps + 1, C, h·ps, w·ps).
pub fn unpatch_3d(x: Tensor, patch_size: usize, tap: f32) -> Result<Tensor> {
    let steps = levels(patch_size);
    if one_pass::haar_applies(&x) && steps > 0 {
        let drop = patch_size - 1;
        let mut x = x;
        for level in 0..steps {
            check_bands(&x, 2, 8)?;
            // The first frames (the patcher's padding) are never written.
            let skip = if level + 1 == steps { drop } else { 0 };
            let frames = 2 * x.dim(1)?;
            if frames <= skip {
                return Err(super::TokenizerError::InvalidInput(format!(
                    "unpatcher produced {frames} frames, fewer than the {drop} it must drop"
                )));
            }
            x = one_pass::synthesis_3d(&x, skip, tap, SCALE_3D)?;
        }
        return Ok(x);
    }
    unpatch_3d_ops(&x, patch_size, tap)
}

/// The op form of [`unpatch_3d`]: candle ops, for every device, dtype and autograd.
fn unpatch_3d_ops(x: &Tensor, patch_size: usize, tap: f32) -> Result<Tensor> {
    let tap = f64::from(tap);
    let mut x = x.clone();
    for _ in 0..levels(patch_size) {
        let bands = x.chunk(8, 2)?;
        if bands.len() != 8 {
            return Err(super::TokenizerError::InvalidInput(
                "unpatcher input channels must be a multiple of 8".into(),
            ));
        }
        // Undo W, then H, then T.
        let mut by_th = Vec::with_capacity(4);
        for pair in bands.chunks(2) {
            if let [low, high] = pair {
                by_th.push(synthesise(low, high, 4, tap)?);
            }
        }
        let mut by_t = Vec::with_capacity(2);
        for pair in by_th.chunks(2) {
            if let [low, high] = pair {
                by_t.push(synthesise(low, high, 3, tap)?);
            }
        }
        let [low, high] = by_t.as_slice() else {
            return Err(super::TokenizerError::InvalidInput(
                "malformed unpatcher bands".into(),
            ));
        };
        x = (synthesise(low, high, 1, tap)? * SCALE_3D)?;
    }
    let drop = patch_size.saturating_sub(1);
    let frames = x.dim(1)?;
    if frames <= drop {
        return Err(super::TokenizerError::InvalidInput(format!(
            "unpatcher produced {frames} frames, fewer than the {drop} it must drop"
        )));
    }
    Ok(x.narrow(1, drop, frames - drop)?)
}

/// Channel-first video (B, C, T, H, W) → frame-major (B, T, C, H, W), contiguous.
pub fn frames_from_channels(x: &Tensor) -> Result<Tensor> {
    Ok(x.permute((0, 2, 1, 3, 4))?.contiguous()?)
}

/// Frame-major (B, T, C, H, W) → channel-first video (B, C, T, H, W), contiguous.
pub fn channels_from_frames(x: &Tensor) -> Result<Tensor> {
    Ok(x.permute((0, 2, 1, 3, 4))?.contiguous()?)
}

/// Reads the Haar tap from a checkpoint's `wavelets` buffer ([s, s]); the f32 value otherwise.
pub fn tap_from_buffer(buffer: Option<&Tensor>) -> Result<f32> {
    match buffer {
        Some(t) => {
            let values = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok(values.first().copied().unwrap_or(HAAR_TAP_F32))
        }
        None => Ok(HAAR_TAP_F32),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Largest absolute element difference (f32 tensors); other modules' tests use it too.
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The one-pass CPU levels are the op form's arithmetic in its order: every output bit
    /// matches, forward and inverse, 2-D and 3-D, for both taps, odd multiples of the block
    /// size, several batch items and the frame counts the causal padding allows.
    #[test]
    fn one_pass_levels_match_the_op_form_bit_for_bit() {
        let cpu = Device::Cpu;
        for tap in [HAAR_TAP_F32, 0.70703125] {
            for ps in [1, 2, 4] {
                let x = Tensor::randn(0f32, 1.0, (2, 3, 4 * 3, 4 * 5), &cpu).unwrap();
                let fast = patch_2d(x.clone(), ps, tap).unwrap();
                assert_eq!(
                    bits(&fast),
                    bits(&patch_2d_ops(&x, ps, tap).unwrap()),
                    "2-D ps {ps}"
                );
                let p = Tensor::randn(0f32, 1.0, fast.dims(), &cpu).unwrap();
                assert_eq!(
                    bits(&unpatch_2d(p.clone(), ps, tap).unwrap()),
                    bits(&unpatch_2d_ops(&p, ps, tap).unwrap()),
                    "2-D inverse ps {ps}"
                );
                for frames in [1, 1 + ps, 1 + 3 * ps] {
                    let x = Tensor::randn(0f32, 1.0, (2, frames, 3, 4 * 3, 4 * 5), &cpu).unwrap();
                    let fast = patch_3d(x.clone(), ps, tap).unwrap();
                    let ops = patch_3d_ops(&x, ps, tap).unwrap();
                    assert_eq!(fast.dims(), ops.dims());
                    assert_eq!(bits(&fast), bits(&ops), "3-D ps {ps} frames {frames}");
                    let p = Tensor::randn(0f32, 1.0, fast.dims(), &cpu).unwrap();
                    let back = unpatch_3d(p.clone(), ps, tap).unwrap();
                    let back_ops = unpatch_3d_ops(&p, ps, tap).unwrap();
                    assert_eq!(back.dims(), back_ops.dims());
                    assert_eq!(
                        bits(&back),
                        bits(&back_ops),
                        "3-D inverse ps {ps} frames {frames}"
                    );
                }
            }
        }
    }

    #[test]
    fn odd_sizes_are_refused_with_the_axis_named() {
        let cpu = Device::Cpu;
        let x = Tensor::zeros((1, 3, 6, 10), candle_core::DType::F32, &cpu).unwrap();
        let e = patch_2d(x.clone(), 4, HAAR_TAP_F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("even length"), "{e}");
        let v = Tensor::zeros((1, 2, 3, 8, 8), candle_core::DType::F32, &cpu).unwrap();
        let e = patch_3d(v.clone(), 4, HAAR_TAP_F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("axis 1"), "{e}");
    }

    #[test]
    fn inverse_after_forward_is_identity_2d() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 16, 24), &Device::Cpu).unwrap();
        for ps in [2, 4] {
            for tap in [HAAR_TAP_F32, 0.70703125] {
                let p = patch_2d(x.clone(), ps, tap).unwrap();
                assert_eq!(p.dims(), &[2, 3 * ps * ps, 16 / ps, 24 / ps]);
                let back = unpatch_2d(p.clone(), ps, tap).unwrap();
                // With the bf16 tap the round trip has the gain (0.70703125·√2)^(4·levels).
                let gain = (f64::from(tap) * std::f64::consts::SQRT_2).powi(4 * levels(ps) as i32);
                let expected = (&x * gain).unwrap();
                assert!(max_abs_diff(&back, &expected) < 1e-5, "ps {ps} tap {tap}");
            }
        }
    }

    #[test]
    fn inverse_after_forward_is_identity_3d() {
        let x = Tensor::randn(0f32, 1.0, (1, 9, 3, 8, 16), &Device::Cpu).unwrap();
        for ps in [2, 4] {
            let t = x.dim(1).unwrap();
            let p = patch_3d(x.clone(), ps, HAAR_TAP_F32).unwrap();
            assert_eq!(
                p.dims(),
                &[1, 1 + (t - 1) / ps, 3 * ps * ps * ps, 8 / ps, 16 / ps]
            );
            let back = unpatch_3d(p.clone(), ps, HAAR_TAP_F32).unwrap();
            assert!(max_abs_diff(&back, &x) < 1e-5, "ps {ps}");
        }
    }

    #[test]
    fn first_channel_is_the_block_mean() {
        let x = Tensor::randn(0f32, 1.0, (1, 1, 4, 4), &Device::Cpu).unwrap();
        let p = patch_2d(x.clone(), 4, HAAR_TAP_F32).unwrap();
        let mean = x.mean_all().unwrap().to_scalar::<f32>().unwrap();
        let ll = p.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((ll - mean).abs() < 1e-6);
    }
}
