//! Media in and out: images and videos decoded to RGB8 clips, clips written as MP4, lossless MKV
//! or PNG, and labelled side-by-side composites.
//!
//! Images (PNG, JPEG, WebP, TIFF, BMP) are read with the `image` crate, everything else with FFmpeg
//! (the system libraries through `ffmpeg-next`). Pixels are always 8-bit RGB, frame-major, channels
//! last ([`RgbFrames`]), the layout the tokenizer wrapper takes.

pub mod composite;
mod convert;
mod error;
mod font;
mod geometry;
mod still;
mod video;
mod write;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ffmpeg_next as ffmpeg;

pub use crate::frames::RgbFrames;
pub use composite::{draw_text, side_by_side, PanelLabels, BANNER_HEIGHT, LABEL_SCALE, PANEL_GAP};
pub use error::MediaError;
pub use geometry::{size_for_shorter_side, MAX_FRAME_SIDE};
pub use video::{RgbFrame, VideoDecoder, VideoInfo, FALLBACK_FPS};
pub use write::{
    available_mp4_encoder, numbered_png_path, write, writes_video, VideoWriter, WrittenMedia,
};

/// Whether a clip came from a still image or a video.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

/// A decoded clip and where it came from.
#[derive(Clone, Debug)]
pub struct Clip {
    pub frames: RgbFrames,
    /// The source's frame rate (for a still image: 1.0, which only matters if it is exported as
    /// video). With a stride above 1 the clip covers time faster; see [`Clip::playback_fps`].
    pub fps: f64,
    pub source: PathBuf,
    /// Source index of the clip's first frame.
    pub first_frame: usize,
    /// Source frames between consecutive clip frames.
    pub stride: usize,
    pub kind: MediaKind,
    /// Problems that did not stop decoding (a truncated file, damaged packets, ignored metadata).
    pub warnings: Vec<String>,
}

impl Clip {
    /// The frame rate that plays the clip in real time: the source rate divided by the stride.
    pub fn playback_fps(&self) -> f64 {
        self.fps / self.stride.max(1) as f64
    }

    /// Writes the clip at its real-time rate, refusing to overwrite its own source.
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<WrittenMedia, MediaError> {
        write(&self.frames, self.playback_fps(), path, &[&self.source])
    }
}

/// Which frames to decode and at what size.
///
/// Frames are counted in the order the decoder puts them out, from 0. The range is `start ..
/// start + count` (to the end when `count` is `None`); of it every `stride`-th frame is taken,
/// and at most `max_frames` of those.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    pub start: usize,
    pub count: Option<usize>,
    /// At least 1.
    pub stride: usize,
    pub max_frames: Option<usize>,
    /// Scales frames so their shorter side has this many pixels, keeping the aspect ratio and
    /// rounding both sides to even numbers (swscale, bicubic).
    pub resize_shorter_side: Option<usize>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            start: 0,
            count: None,
            stride: 1,
            max_frames: None,
            resize_shorter_side: None,
        }
    }
}

impl DecodeOptions {
    pub fn validate(&self) -> Result<(), MediaError> {
        let invalid = |reason: &str| Err(MediaError::InvalidOptions(reason.to_string()));
        if self.stride == 0 {
            return invalid("the frame stride must be at least 1");
        }
        if self.count == Some(0) {
            return invalid("the frame count must be at least 1");
        }
        if self.max_frames == Some(0) {
            return invalid("the maximum frame count must be at least 1");
        }
        match self.resize_shorter_side {
            Some(side) if !(2..=MAX_FRAME_SIDE).contains(&side) => {
                Err(MediaError::InvalidOptions(format!(
                    "the resize target must be between 2 and {MAX_FRAME_SIDE} pixels, not {side}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether the frame at `source_index` is in the range and on the stride.
    fn selects(&self, source_index: usize) -> bool {
        let Some(offset) = source_index.checked_sub(self.start) else {
            return false;
        };
        offset % self.stride.max(1) == 0 && self.count.is_none_or(|count| offset < count)
    }

    /// The most frames the options can select, if they bound it.
    fn output_limit(&self) -> Option<usize> {
        let from_range = self.count.map(|count| count.div_ceil(self.stride.max(1)));
        match (from_range, self.max_frames) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many frames the options select from a source of `available` frames.
    fn selected_count(&self, available: usize) -> usize {
        let in_range = available.saturating_sub(self.start);
        let in_range = self.count.map_or(in_range, |count| in_range.min(count));
        let selected = in_range.div_ceil(self.stride.max(1));
        self.max_frames.map_or(selected, |max| selected.min(max))
    }
}

/// Decodes an image or a video into a clip.
///
/// Images become 1-frame clips (see [`MediaKind::Image`]); everything else goes through FFmpeg.
/// A video that breaks off mid-stream keeps the frames that decoded and says so in
/// [`Clip::warnings`]; no decodable frame at all is an error.
pub fn open(path: impl AsRef<Path>, options: &DecodeOptions) -> Result<Clip, MediaError> {
    let limit = crate::sys::available_ram().map_or(u64::MAX, |available| {
        (available as f64 * HOLD_FRACTION) as u64
    });
    open_within(path, options, limit)
}

/// Whether `path` is a still image (by its first bytes, else its name), which [`open`] reads
/// without FFmpeg; fails with a clear reason when the file is missing, not a file or empty.
pub fn is_still_image(path: &Path) -> Result<bool, MediaError> {
    Ok(still::is_image(path, &read_head(path)?))
}

/// [`open`] with the most bytes of frames the clip may hold: over it, the decode stops with
/// [`MediaError::ClipTooLarge`] (before it starts when the container lists the frame count).
pub fn open_within(
    path: impl AsRef<Path>,
    options: &DecodeOptions,
    limit: u64,
) -> Result<Clip, MediaError> {
    let path = path.as_ref();
    options.validate()?;
    let head = read_head(path)?;
    if still::is_image(path, &head) {
        return still::open_image(path, &head, options);
    }
    let mut decoder = VideoDecoder::open(path, options)?;
    let info = decoder.info();
    let frame_bytes = info.width * info.height * 3;
    // A whole clip is held in memory: refuse before decoding what cannot fit, and stop decoding
    // when a clip turns out longer than its header said.
    let too_large = |frames: usize| MediaError::ClipTooLarge {
        path: path.to_path_buf(),
        frames,
        width: info.width,
        height: info.height,
        bytes: frames as u64 * frame_bytes as u64,
        limit,
    };
    if let Some(expected) = info.frame_count_estimate {
        if expected as u64 * frame_bytes as u64 > limit {
            return Err(too_large(expected));
        }
    }
    // Reserve for the expected frames, but never trust a header for more than a few hundred MB.
    let expected = info.frame_count_estimate.unwrap_or(1).min(256);
    let mut data = Vec::with_capacity(frame_bytes.saturating_mul(expected));
    let mut frames = 0;
    let mut first_frame = None;
    while let Some(frame) = decoder.next_frame()? {
        if (data.len() + frame_bytes) as u64 > limit {
            return Err(too_large(frames + 1));
        }
        first_frame.get_or_insert(frame.source_index);
        data.extend_from_slice(&frame.data);
        frames += 1;
    }
    let frames =
        RgbFrames::new(frames, info.height, info.width, data).map_err(|e| MediaError::Decode {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(Clip {
        frames,
        fps: info.fps,
        source: path.to_path_buf(),
        first_frame: first_frame.unwrap_or(options.start),
        stride: options.stride,
        kind: MediaKind::Video,
        warnings: decoder.warnings(),
    })
}

/// Share of the available memory a decoded clip may take: the rest is for the models.
const HOLD_FRACTION: f64 = 0.8;

/// Fails with a clear reason when `path` is missing, not a file or empty.
fn check_input_file(path: &Path) -> Result<(), MediaError> {
    let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => MediaError::NotFound {
            path: path.to_path_buf(),
        },
        _ => MediaError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    if !metadata.is_file() {
        return Err(MediaError::Unreadable {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    if metadata.len() == 0 {
        return Err(MediaError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The first bytes of the file, to recognise images by content rather than by name.
fn read_head(path: &Path) -> Result<Vec<u8>, MediaError> {
    check_input_file(path)?;
    let unreadable = |e: std::io::Error| MediaError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(64)
        .read_to_end(&mut head)
        .map_err(unreadable)?;
    Ok(head)
}

/// Initialises FFmpeg once per process and quietens its own logging: every failure reaches the
/// caller as a [`MediaError`] or a clip warning instead. Set `TOKENSCOPE_FFMPEG_LOG` to `error`,
/// `warning`, `info` or `debug` to see FFmpeg's messages on stderr.
fn ensure_ffmpeg() -> Result<(), MediaError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INIT.get_or_init(|| {
        use ffmpeg::util::log::Level;
        let level = match std::env::var("TOKENSCOPE_FFMPEG_LOG").as_deref() {
            Ok("error") => Level::Error,
            Ok("warning") => Level::Warning,
            Ok("info") => Level::Info,
            Ok("debug") => Level::Debug,
            _ => Level::Quiet,
        };
        ffmpeg::util::log::set_level(level);
        ffmpeg::init().map_err(|e| e.to_string())
    });
    result.clone().map_err(MediaError::FfmpegInit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_follows_range_stride_and_maximum() {
        let options = DecodeOptions {
            start: 3,
            count: Some(10),
            stride: 4,
            max_frames: None,
            resize_shorter_side: None,
        };
        let picked: Vec<usize> = (0..30).filter(|&i| options.selects(i)).collect();
        assert_eq!(picked, vec![3, 7, 11]);
        assert_eq!(options.selected_count(65), 3);
        assert_eq!(options.selected_count(9), 2);
        assert_eq!(options.output_limit(), Some(3));
        let capped = DecodeOptions {
            max_frames: Some(2),
            ..options
        };
        assert_eq!(capped.output_limit(), Some(2));
        assert_eq!(DecodeOptions::default().selected_count(65), 65);
    }
}
