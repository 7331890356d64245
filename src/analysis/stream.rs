//! One model over a clip, window by window: read a window of frames, run the official wrapper on
//! it (tiled if the plan says so), measure it, drop it. Peak memory is one
//! window's, however long the clip.

use std::sync::atomic::AtomicBool;

use crate::frames::RgbFrames;
use crate::metrics::{ClipMetrics, ClipSummary, MetricsError};
use crate::tokenizer::fsq::CODEBOOK_SIZE;
use crate::tokenizer::model::{Tokenizer, Tokens};
use crate::tokenizer::runner::{self, RunOptions, RunResult};
use crate::tokenizer::TokenizerError;

use super::plan::Plan;

/// Why a clip could not be analysed.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("cancelled")]
    Cancelled,
    #[error("reading frames: {0}")]
    Source(String),
    #[error("frame {index} is {got_w}x{got_h}, the clip started at {want_w}x{want_h}")]
    SizeChanged {
        index: usize,
        want_w: usize,
        want_h: usize,
        got_w: usize,
        got_h: usize,
    },
    #[error("the clip has no frames")]
    Empty,
    #[error(transparent)]
    Tokenizer(TokenizerError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Frames(#[from] crate::frames::FramesError),
    /// Reading the input or writing an output as the windows arrive.
    #[cfg(feature = "media")]
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    /// Spooling an output as the windows arrive.
    #[error(transparent)]
    Write(#[from] crate::io::WriteError),
}

impl From<TokenizerError> for AnalysisError {
    fn from(e: TokenizerError) -> Self {
        match e {
            TokenizerError::Cancelled => AnalysisError::Cancelled,
            other => AnalysisError::Tokenizer(other),
        }
    }
}

/// Frames handed out a window at a time.
pub trait FrameSource {
    /// Frame size (width, height); every frame has it.
    fn size(&self) -> (usize, usize);
    /// How many frames the source expects to give, when it knows.
    fn frames_hint(&self) -> Option<usize>;
    /// Up to `count` next frames; `None` at the end.
    fn next_frames(&mut self, count: usize) -> Result<Option<RgbFrames>, AnalysisError>;
}

/// A clip already in memory, or a range of its frames.
pub struct InMemory<'a> {
    clip: &'a RgbFrames,
    next: usize,
    end: usize,
}

impl<'a> InMemory<'a> {
    pub fn new(clip: &'a RgbFrames) -> Self {
        Self::range(clip, 0, clip.frames)
    }

    /// Frames `start .. start + count` of `clip` (fewer where the clip ends first).
    pub fn range(clip: &'a RgbFrames, start: usize, count: usize) -> Self {
        let end = start.saturating_add(count).min(clip.frames);
        Self {
            clip,
            next: start.min(end),
            end,
        }
    }
}

impl FrameSource for InMemory<'_> {
    fn size(&self) -> (usize, usize) {
        (self.clip.width, self.clip.height)
    }

    fn frames_hint(&self) -> Option<usize> {
        Some(self.end - self.next)
    }

    fn next_frames(&mut self, count: usize) -> Result<Option<RgbFrames>, AnalysisError> {
        let count = count.min(self.end.saturating_sub(self.next));
        if count == 0 {
            return Ok(None);
        }
        let window = self.clip.slice(self.next, count)?;
        self.next += count;
        Ok(Some(window))
    }
}

/// Frames decoded from a video file as they are asked for.
#[cfg(feature = "media")]
pub struct Decoded {
    decoder: crate::media::VideoDecoder,
    given: usize,
}

#[cfg(feature = "media")]
impl Decoded {
    pub fn new(decoder: crate::media::VideoDecoder) -> Self {
        Self { decoder, given: 0 }
    }

    /// Problems the decoder recovered from so far.
    pub fn warnings(&self) -> Vec<String> {
        self.decoder.warnings()
    }

    pub fn info(&self) -> crate::media::VideoInfo {
        self.decoder.info()
    }
}

#[cfg(feature = "media")]
impl FrameSource for Decoded {
    fn size(&self) -> (usize, usize) {
        let info = self.decoder.info();
        (info.width, info.height)
    }

    fn frames_hint(&self) -> Option<usize> {
        self.decoder.info().frame_count_estimate
    }

    fn next_frames(&mut self, count: usize) -> Result<Option<RgbFrames>, AnalysisError> {
        let (width, height) = self.size();
        let mut data = Vec::with_capacity(count * width * height * 3);
        let mut frames = 0;
        while frames < count {
            let Some(frame) = self
                .decoder
                .next_frame()
                .map_err(|e| AnalysisError::Source(e.to_string()))?
            else {
                break;
            };
            if (frame.width, frame.height) != (width, height) {
                return Err(AnalysisError::SizeChanged {
                    index: self.given + frames,
                    want_w: width,
                    want_h: height,
                    got_w: frame.width,
                    got_h: frame.height,
                });
            }
            data.extend_from_slice(&frame.data);
            frames += 1;
        }
        if frames == 0 {
            return Ok(None);
        }
        self.given += frames;
        Ok(Some(RgbFrames::new(frames, height, width, data)?))
    }
}

/// An image or video file opened to be read window by window: a still is read once (its
/// orientation, bit depth and alpha handled by `media::open`), a video decoded as it goes.
#[cfg(feature = "media")]
pub enum MediaInput {
    Still {
        clip: crate::media::Clip,
        /// Frames handed out so far.
        next: usize,
    },
    Video {
        // Boxed: a decoder is large beside a still.
        decoded: Box<Decoded>,
        /// Where it was opened from and how, to open it again in [`MediaInput::rewind`].
        path: std::path::PathBuf,
        options: crate::media::DecodeOptions,
    },
}

#[cfg(feature = "media")]
impl MediaInput {
    pub fn open(
        path: &std::path::Path,
        options: &crate::media::DecodeOptions,
    ) -> Result<Self, crate::media::MediaError> {
        if crate::media::is_still_image(path)? {
            let clip = crate::media::open(path, options)?;
            return Ok(MediaInput::Still { clip, next: 0 });
        }
        let decoder = crate::media::VideoDecoder::open(path, options)?;
        Ok(MediaInput::Video {
            decoded: Box::new(Decoded::new(decoder)),
            path: path.to_path_buf(),
            options: options.clone(),
        })
    }

    /// Starts again at the first frame, for the next model: a still is held and only rewound, a
    /// video is opened again (a decoder cannot seek back cheaply on every container).
    pub fn rewind(&mut self) -> Result<(), crate::media::MediaError> {
        match self {
            MediaInput::Still { next, .. } => *next = 0,
            MediaInput::Video {
                decoded,
                path,
                options,
            } => {
                let decoder = crate::media::VideoDecoder::open(path, options)?;
                **decoded = Decoded::new(decoder);
            }
        }
        Ok(())
    }

    /// Frames per second to play it back at.
    pub fn fps(&self) -> f64 {
        match self {
            MediaInput::Still { clip, .. } => clip.playback_fps(),
            MediaInput::Video { decoded, .. } => decoded.info().fps,
        }
    }

    /// Problems the reader recovered from so far.
    pub fn warnings(&self) -> Vec<String> {
        match self {
            MediaInput::Still { clip, .. } => clip.warnings.clone(),
            MediaInput::Video { decoded, .. } => decoded.warnings(),
        }
    }
}

#[cfg(feature = "media")]
impl FrameSource for MediaInput {
    fn size(&self) -> (usize, usize) {
        match self {
            MediaInput::Still { clip, .. } => (clip.frames.width, clip.frames.height),
            MediaInput::Video { decoded, .. } => decoded.size(),
        }
    }

    fn frames_hint(&self) -> Option<usize> {
        match self {
            MediaInput::Still { clip, .. } => Some(clip.frames.frames),
            MediaInput::Video { decoded, .. } => decoded.frames_hint(),
        }
    }

    fn next_frames(&mut self, count: usize) -> Result<Option<RgbFrames>, AnalysisError> {
        match self {
            MediaInput::Still { clip, next } => {
                let count = count.min(clip.frames.frames.saturating_sub(*next));
                if count == 0 {
                    return Ok(None);
                }
                let window = clip.frames.slice(*next, count)?;
                *next += count;
                Ok(Some(window))
            }
            MediaInput::Video { decoded, .. } => decoded.next_frames(count),
        }
    }
}

/// What is kept of one window.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowStats {
    pub start: usize,
    pub frames: usize,
    /// Token grid (t, h, w); for a tiled window, the untiled grid it stands for.
    pub grid: (usize, usize, usize),
    pub encode_seconds: f64,
    pub decode_seconds: f64,
}

/// Everything measured of one model over one clip.
#[derive(Clone, Debug)]
pub struct ClipAnalysis {
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    pub summary: ClipSummary,
    pub windows: Vec<WindowStats>,
    /// Token positions over all windows (a continuous position holds the latent's channels).
    pub token_positions: usize,
    pub plan: Plan,
}

impl ClipAnalysis {
    pub fn encode_seconds(&self) -> f64 {
        self.windows.iter().map(|w| w.encode_seconds).sum()
    }

    pub fn decode_seconds(&self) -> f64 {
        self.windows.iter().map(|w| w.decode_seconds).sum()
    }

    /// Token grid of the first window (the untiled grid when tiled).
    pub fn first_grid(&self) -> Option<(usize, usize, usize)> {
        self.windows.first().map(|w| w.grid)
    }

    /// What `model`'s tokens of the clip cost per source pixel (see [`bits_per_pixel`]).
    pub fn bits_per_pixel(&self, model: &Tokenizer) -> f64 {
        let config = model.config();
        bits_per_pixel(
            self.token_positions,
            config.family.is_discrete(),
            config.latent_channels,
            model.dtype().size_in_bytes() * 8,
            self.frames * self.width * self.height,
        )
    }
}

/// One window as it finishes, for callers that keep more than the measurements (the viewer
/// keeps the reconstruction and the tokens; `eval` keeps nothing).
pub struct FinishedWindow<'a> {
    /// The window's first frame, counted from the source's first.
    pub start: usize,
    pub original: &'a RgbFrames,
    /// The wrapper's output for the window: its reconstruction and tokens.
    pub run: RunResult,
}

/// Bits per source pixel: log2(64,000) per discrete token; the latent's channels at the stored
/// width (`value_bits`) for continuous models.
pub fn bits_per_pixel(
    positions: usize,
    discrete: bool,
    latent_channels: usize,
    value_bits: usize,
    pixels: usize,
) -> f64 {
    let bits_per_position = if discrete {
        (CODEBOOK_SIZE as f64).log2()
    } else {
        (latent_channels * value_bits) as f64
    };
    positions as f64 * bits_per_position / pixels.max(1) as f64
}

/// One window's tokens, as [`encode_with`] hands them over.
pub struct EncodedWindow {
    /// The window's first frame, counted from the source's first.
    pub start: usize,
    pub frames: usize,
    /// What the wrapper padded the window with.
    pub padding: runner::Padding,
    pub tokens: Tokens,
}

/// Encodes `source` window by window through the official wrapper (padding; no decode, and no
/// tiles, since tokens need whole windows), handing each window's tokens to `keep` and dropping
/// its frames. Image networks take each frame as an image. Returns the frames read.
pub fn encode_with(
    model: &Tokenizer,
    source: &mut dyn FrameSource,
    temporal_window: usize,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, Option<usize>),
    keep: &mut dyn FnMut(EncodedWindow) -> Result<(), AnalysisError>,
) -> Result<usize, AnalysisError> {
    let window = if model.config().family.is_video() {
        temporal_window.max(1)
    } else {
        1
    };
    let expected = source.frames_hint();
    let mut done = 0;
    while let Some(frames) = source.next_frames(window)? {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(AnalysisError::Cancelled);
        }
        let (padding, tokens) = runner::encode_window(model, &frames)?;
        keep(EncodedWindow {
            start: done,
            frames: frames.frames,
            padding,
            tokens,
        })?;
        done += frames.frames;
        progress(done, expected);
    }
    if done == 0 {
        return Err(AnalysisError::Empty);
    }
    Ok(done)
}

/// Runs `model` over `source` with `plan`'s window and tiling, measuring every frame.
/// Image networks take each frame as an image. `progress` gets (frames done, frames expected).
pub fn analyse(
    model: &Tokenizer,
    source: &mut dyn FrameSource,
    plan: &Plan,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, Option<usize>),
) -> Result<ClipAnalysis, AnalysisError> {
    analyse_with(model, source, plan, cancel, progress, &mut |_| Ok(()))
}

/// [`analyse`], handing each finished window to `keep` before it is dropped.
pub fn analyse_with(
    model: &Tokenizer,
    source: &mut dyn FrameSource,
    plan: &Plan,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, Option<usize>),
    keep: &mut dyn FnMut(FinishedWindow<'_>) -> Result<(), AnalysisError>,
) -> Result<ClipAnalysis, AnalysisError> {
    let (width, height) = source.size();
    let expected = source.frames_hint();
    let video = model.config().family.is_video();
    let window = if video {
        plan.temporal_window.max(1)
    } else {
        1
    };
    let options = RunOptions {
        temporal_window: window,
        tiling: plan.tiling,
    };
    let mut metrics = ClipMetrics::new(width, height);
    let mut windows = Vec::new();
    let mut token_positions = 0;
    let mut done = 0;
    let frame_bytes = width * height * 3;
    while let Some(original) = source.next_frames(window)? {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(AnalysisError::Cancelled);
        }
        let result = runner::reconstruct(model, &original, &options, cancel, &mut |_, _| {})?;
        for (a, b) in original
            .data
            .chunks_exact(frame_bytes)
            .zip(result.reconstruction.data.chunks_exact(frame_bytes))
        {
            metrics.push(a, b)?;
        }
        for w in &result.windows {
            // A tiled window has no single grid: count the untiled one it stands for.
            let grid = w.tokens.as_ref().map(Tokens::grid).unwrap_or_else(|| {
                let p = w.padding;
                model.config().latent_shape(
                    w.frames + p.frames.0 + p.frames.1,
                    height + p.rows.0 + p.rows.1,
                    width + p.cols.0 + p.cols.1,
                )
            });
            token_positions += grid.0 * grid.1 * grid.2;
            windows.push(WindowStats {
                start: done + w.start,
                frames: w.frames,
                grid,
                encode_seconds: w.encode_seconds,
                decode_seconds: w.decode_seconds,
            });
        }
        keep(FinishedWindow {
            start: done,
            original: &original,
            run: result,
        })?;
        done += original.frames;
        progress(done, expected);
    }
    if done == 0 {
        return Err(AnalysisError::Empty);
    }
    Ok(ClipAnalysis {
        frames: done,
        width,
        height,
        summary: metrics.finish()?,
        windows,
        token_positions,
        plan: plan.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_per_pixel_counts_codebook_bits_or_latent_values() {
        // One discrete token per 8x8x8 block: log2(64,000) bits over 512 pixels.
        let bpp = bits_per_pixel(1, true, 6, 32, 8 * 8 * 8);
        assert!((bpp - 64000f64.log2() / 512.0).abs() < 1e-12);
        // A continuous position holds 16 channels of 16 bits.
        assert_eq!(bits_per_pixel(4, false, 16, 16, 256), 4.0);
    }

    #[test]
    fn in_memory_frames_come_out_in_windows_then_end() {
        let clip = RgbFrames::new(5, 2, 2, (0..60).map(|i| i as u8).collect()).unwrap();
        let mut source = InMemory::new(&clip);
        let first = source.next_frames(3).unwrap().unwrap();
        let second = source.next_frames(3).unwrap().unwrap();
        assert_eq!((first.frames, second.frames), (3, 2));
        assert_eq!(second.data, clip.slice(3, 2).unwrap().data);
        assert!(source.next_frames(3).unwrap().is_none());
    }

    #[test]
    fn an_in_memory_range_gives_only_its_frames() {
        let clip = RgbFrames::new(5, 2, 2, (0..60).map(|i| i as u8).collect()).unwrap();
        let mut source = InMemory::range(&clip, 1, 3);
        assert_eq!(source.frames_hint(), Some(3));
        let window = source.next_frames(8).unwrap().unwrap();
        assert_eq!(window.data, clip.slice(1, 3).unwrap().data);
        assert!(source.next_frames(8).unwrap().is_none());
        // A range past the end is empty rather than an error.
        assert!(InMemory::range(&clip, 9, 2)
            .next_frames(1)
            .unwrap()
            .is_none());
    }
}
