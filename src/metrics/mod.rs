//! Image-quality metrics between a reference and a reconstruction: PSNR, SSIM and error maps.
//!
//! Frames are 8-bit RGB byte buffers, row-major and channels-last (`[r, g, b, r, g, b, ...]`,
//! `width * height * 3` bytes), the layout of one frame of
//! [`RgbFrames`](crate::frames::RgbFrames). A clip is frame-major.
//!
//! What is shown where:
//! - **per-frame PSNR** ([`psnr::psnr`], [`FrameMetrics::psnr`]): `10·log10(255² / mse)` of one
//!   frame; `+∞` for identical frames.
//! - **clip PSNR** ([`psnr::clip_psnr`], [`ClipSummary::psnr_clip`]): TokenBench's number, one
//!   MSE pooled over every frame of the clip, `20·log10(255 / (sqrt(mse) + eps))` with `eps` the
//!   float32 machine epsilon. Always finite. This is the number to compare with TokenBench's
//!   leaderboard.
//! - **mean PSNR** ([`ClipSummary::psnr_mean`]): the mean of the per-frame values. It weights a
//!   bad frame less than the clip PSNR does, so it is higher or equal; `+∞` if any frame is
//!   identical.
//! - **SSIM** ([`ssim::ssim`]): scikit-image's `structural_similarity` with TokenBench's settings,
//!   per frame; the clip value is the mean over frames (as TokenBench's `SSIM()` does).
//!
//! Differences are computed in wide integer types, never by wrapping `u8` subtraction.
//!
//! Non-finite PSNR values and JSON: see [`psnr::psnr_json`], [`psnr::psnr_capped`] and the serde
//! helpers [`psnr::inf_as_null`] / [`psnr::vec_inf_as_null`], which [`FrameMetrics`] and
//! [`ClipSummary`] already use (`+∞` is written as `null` and read back as `+∞`).
//!
//! Nothing here panics on bad input: sizes are checked and reported as [`MetricsError`].

pub mod psnr;
pub mod ssim;
pub mod tokens;

use serde::{Deserialize, Serialize};

use crate::frames::RgbFrames;

pub use psnr::{clip_psnr, mse, psnr, sse};
pub use ssim::ssim;
pub use tokens::{abs_diff_map, grid_dims, pool_error};

/// Bytes per pixel of the frames the metrics take.
pub const RGB: usize = 3;

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("nothing to measure: the frames are empty")]
    Empty,
    #[error("the two frames differ in size: {left} bytes vs {right} bytes")]
    SizeMismatch { left: usize, right: usize },
    #[error(
        "a {width}x{height} frame with {channels} channels does not fit a buffer of {len} bytes"
    )]
    Dimensions {
        width: usize,
        height: usize,
        channels: usize,
        len: usize,
    },
    #[error("SSIM needs frames of at least 7x7 pixels (its window), got {width}x{height}")]
    TooSmall { width: usize, height: usize },
    #[error("the error-pooling cell must be at least 1 pixel")]
    ZeroCell,
    #[error("the clip has no frames yet")]
    NoFrames,
    #[error("the clips differ in shape: {left:?} vs {right:?} (frames, height, width)")]
    ClipMismatch {
        left: (usize, usize, usize),
        right: (usize, usize, usize),
    },
}

/// Checks that `a` and `b` are two frames of `width x height x channels` bytes.
pub(crate) fn check_frames(
    a: &[u8],
    b: &[u8],
    width: usize,
    height: usize,
    channels: usize,
) -> Result<(), MetricsError> {
    if width == 0 || height == 0 || channels == 0 || a.is_empty() || b.is_empty() {
        return Err(MetricsError::Empty);
    }
    if a.len() != b.len() {
        return Err(MetricsError::SizeMismatch {
            left: a.len(),
            right: b.len(),
        });
    }
    let expected = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(channels));
    if expected != Some(a.len()) {
        return Err(MetricsError::Dimensions {
            width,
            height,
            channels,
            len: a.len(),
        });
    }
    Ok(())
}

/// The metrics of one frame, as the viewer plots them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameMetrics {
    /// `10·log10(255² / mse)` in dB; `+∞` for identical frames (`null` in JSON).
    #[serde(with = "psnr::inf_as_null")]
    pub psnr: f64,
    /// scikit-image SSIM with TokenBench's settings, in [-1, 1].
    pub ssim: f64,
    /// Mean squared error over all pixels and channels, in 8-bit units².
    pub mse: f64,
}

/// Returns the exact sum of squared errors along with the frame's metrics.
fn measure_frame(
    a: &[u8],
    b: &[u8],
    width: usize,
    height: usize,
) -> Result<(u64, FrameMetrics), MetricsError> {
    check_frames(a, b, width, height, RGB)?;
    let ssim = ssim::ssim(a, b, width, height)?;
    let sse = psnr::sse(a, b)?;
    let mse = sse as f64 / a.len() as f64;
    Ok((
        sse,
        FrameMetrics {
            psnr: psnr::psnr_from_mse(mse),
            ssim,
            mse,
        },
    ))
}

/// PSNR, SSIM and MSE of one RGB frame pair (`width * height * 3` bytes each).
///
/// Errors: [`MetricsError::Empty`], [`MetricsError::SizeMismatch`],
/// [`MetricsError::Dimensions`], or [`MetricsError::TooSmall`] below 7x7 pixels (SSIM's window).
pub fn frame_metrics(
    reference: &[u8],
    reconstruction: &[u8],
    width: usize,
    height: usize,
) -> Result<FrameMetrics, MetricsError> {
    measure_frame(reference, reconstruction, width, height).map(|(_, m)| m)
}

/// Clip-level numbers; see the [module docs](self) for which PSNR is which.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipSummary {
    /// Number of frames measured.
    pub frames: usize,
    /// TokenBench's clip PSNR: `20·log10(255 / (sqrt(mse_clip) + f32::EPSILON))`. Always finite
    /// (about 186.6 dB for an identical clip).
    pub psnr_clip: f64,
    /// Mean of the per-frame PSNR values; `+∞` if any frame is identical.
    #[serde(with = "psnr::inf_as_null")]
    pub psnr_mean: f64,
    /// Worst (lowest) per-frame PSNR; `+∞` only if every frame is identical.
    #[serde(with = "psnr::inf_as_null")]
    pub psnr_min: f64,
    /// Mean of the per-frame SSIM values (TokenBench's clip SSIM).
    pub ssim_mean: f64,
    /// Worst (lowest) per-frame SSIM.
    pub ssim_min: f64,
    /// MSE pooled over all frames (the one behind `psnr_clip`).
    pub mse_clip: f64,
    /// Per-frame PSNR, in frame order (`+∞` written as `null`).
    #[serde(with = "psnr::vec_inf_as_null")]
    pub psnr_frames: Vec<f64>,
    /// Per-frame SSIM, in frame order.
    pub ssim_frames: Vec<f64>,
    /// Per-frame MSE, in frame order.
    pub mse_frames: Vec<f64>,
}

/// Accumulates per-frame metrics as frames arrive (for live plots) and summarises the clip.
///
/// ```
/// # use tokenscope::metrics::ClipMetrics;
/// let (w, h) = (8, 8);
/// let reference = vec![100u8; w * h * 3];
/// let reconstruction = vec![101u8; w * h * 3];
/// let mut clip = ClipMetrics::new(w, h);
/// let frame = clip.push(&reference, &reconstruction)?;
/// assert!((frame.psnr - 48.1308).abs() < 1e-4);
/// let summary = clip.finish()?;
/// assert_eq!(summary.frames, 1);
/// # Ok::<(), tokenscope::metrics::MetricsError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClipMetrics {
    width: usize,
    height: usize,
    sse: u128,
    samples: u128,
    per_frame: Vec<FrameMetrics>,
}

impl ClipMetrics {
    /// An empty accumulator for RGB frames of `width x height` pixels.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            sse: 0,
            samples: 0,
            per_frame: Vec::new(),
        }
    }

    /// Measures the next frame pair and returns its metrics; frames of the wrong size are
    /// rejected and leave the accumulator unchanged.
    pub fn push(
        &mut self,
        reference: &[u8],
        reconstruction: &[u8],
    ) -> Result<FrameMetrics, MetricsError> {
        let (sse, metrics) = measure_frame(reference, reconstruction, self.width, self.height)?;
        self.sse += u128::from(sse);
        self.samples += reference.len() as u128;
        self.per_frame.push(metrics);
        Ok(metrics)
    }

    /// The metrics of the frames pushed so far, in order.
    pub fn per_frame(&self) -> &[FrameMetrics] {
        &self.per_frame
    }

    /// Number of frames pushed so far.
    pub fn len(&self) -> usize {
        self.per_frame.len()
    }

    /// Whether no frame has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.per_frame.is_empty()
    }

    /// The summary of the frames pushed so far (the clip can keep growing).
    pub fn summary(&self) -> Result<ClipSummary, MetricsError> {
        if self.per_frame.is_empty() || self.samples == 0 {
            return Err(MetricsError::NoFrames);
        }
        let n = self.per_frame.len() as f64;
        let mse_clip = self.sse as f64 / self.samples as f64;
        let psnr_frames: Vec<f64> = self.per_frame.iter().map(|m| m.psnr).collect();
        let ssim_frames: Vec<f64> = self.per_frame.iter().map(|m| m.ssim).collect();
        let mse_frames: Vec<f64> = self.per_frame.iter().map(|m| m.mse).collect();
        Ok(ClipSummary {
            frames: self.per_frame.len(),
            psnr_clip: psnr::tokenbench_psnr_from_mse(mse_clip),
            psnr_mean: psnr_frames.iter().sum::<f64>() / n,
            psnr_min: psnr_frames.iter().copied().fold(f64::INFINITY, f64::min),
            ssim_mean: ssim_frames.iter().sum::<f64>() / n,
            ssim_min: ssim_frames.iter().copied().fold(f64::INFINITY, f64::min),
            mse_clip,
            psnr_frames,
            ssim_frames,
            mse_frames,
        })
    }

    /// The summary of the whole clip; [`MetricsError::NoFrames`] if nothing was pushed.
    pub fn finish(self) -> Result<ClipSummary, MetricsError> {
        self.summary()
    }
}

/// Measures every frame of two clips of the same shape (frame by frame, as [`ClipMetrics`]).
pub fn clip_metrics(
    reference: &RgbFrames,
    reconstruction: &RgbFrames,
) -> Result<ClipSummary, MetricsError> {
    let shape = |c: &RgbFrames| (c.frames, c.height, c.width);
    if shape(reference) != shape(reconstruction) {
        return Err(MetricsError::ClipMismatch {
            left: shape(reference),
            right: shape(reconstruction),
        });
    }
    let frame_bytes = reference
        .height
        .checked_mul(reference.width)
        .and_then(|n| n.checked_mul(RGB))
        .filter(|&n| n > 0)
        .ok_or(MetricsError::Empty)?;
    for c in [reference, reconstruction] {
        if frame_bytes.checked_mul(c.frames) != Some(c.data.len()) {
            return Err(MetricsError::Dimensions {
                width: c.width,
                height: c.height,
                channels: RGB,
                len: c.data.len(),
            });
        }
    }
    let mut clip = ClipMetrics::new(reference.width, reference.height);
    for (a, b) in reference
        .data
        .chunks_exact(frame_bytes)
        .zip(reconstruction.data.chunks_exact(frame_bytes))
        .take(reference.frames)
    {
        clip.push(a, b)?;
    }
    clip.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_summary_pools_mse() {
        let (w, h) = (8, 8);
        let a = vec![100u8; w * h * 3];
        let b1 = vec![101u8; w * h * 3]; // mse 1
        let b2 = vec![110u8; w * h * 3]; // mse 100
        let mut clip = ClipMetrics::new(w, h);
        clip.push(&a, &b1).unwrap();
        clip.push(&a, &b2).unwrap();
        let s = clip.finish().unwrap();
        assert_eq!(s.frames, 2);
        assert_eq!(s.mse_clip, 50.5);
        let want_clip = 20.0 * (255.0 / (50.5f64.sqrt() + f64::from(f32::EPSILON))).log10();
        assert_eq!(s.psnr_clip, want_clip);
        let p1 = 10.0 * (65025.0f64).log10();
        let p2 = 10.0 * (650.25f64).log10();
        assert!((s.psnr_mean - (p1 + p2) / 2.0).abs() < 1e-12);
        assert!((s.psnr_min - p2).abs() < 1e-12);
        assert!(s.psnr_mean > s.psnr_clip);
        assert_eq!(s.ssim_frames.len(), 2);
    }

    #[test]
    fn push_rejects_wrong_sizes_and_keeps_state() {
        let mut clip = ClipMetrics::new(8, 8);
        assert_eq!(clip.clone().finish().unwrap_err(), MetricsError::NoFrames);
        let a = vec![0u8; 8 * 8 * 3];
        assert!(matches!(
            clip.push(&a, &a[1..]),
            Err(MetricsError::SizeMismatch { .. })
        ));
        assert!(matches!(
            clip.push(&a[3..], &a[3..]),
            Err(MetricsError::Dimensions { .. })
        ));
        assert!(clip.is_empty());
        clip.push(&a, &a).unwrap();
        assert_eq!(clip.len(), 1);
        let s = clip.summary().unwrap();
        assert_eq!(s.psnr_mean, f64::INFINITY);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"psnr_mean\":null"), "{json}");
        let back: ClipSummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn clip_metrics_checks_shapes() {
        let a = RgbFrames::new(2, 8, 8, vec![1u8; 2 * 8 * 8 * 3]).unwrap();
        let b = RgbFrames::new(1, 8, 8, vec![1u8; 8 * 8 * 3]).unwrap();
        assert!(matches!(
            clip_metrics(&a, &b),
            Err(MetricsError::ClipMismatch { .. })
        ));
        let s = clip_metrics(&a, &a).unwrap();
        assert_eq!(s.frames, 2);
        assert_eq!(s.ssim_mean, 1.0);
    }
}
