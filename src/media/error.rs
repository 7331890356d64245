//! Everything that can go wrong reading or writing media, each naming the file and the reason.

use std::path::PathBuf;

use crate::io::WriteError;

/// An error reading, writing or composing media. Messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("`{}`: no such file", path.display())]
    NotFound { path: PathBuf },

    #[error("`{}`: cannot read the file: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },

    #[error("`{}`: the file is empty", path.display())]
    EmptyFile { path: PathBuf },

    #[error("`{}`: unsupported image format ({reason}); Tokenscope reads PNG, JPEG, WebP, TIFF and BMP images", path.display())]
    UnsupportedImage { path: PathBuf, reason: String },

    #[error("`{}`: the image does not decode: {reason}", path.display())]
    BadImage { path: PathBuf, reason: String },

    #[error("`{}`: not a video or image that FFmpeg can open ({reason})", path.display())]
    NotMedia { path: PathBuf, reason: String },

    #[error("`{}`: no video stream (streams: {streams})", path.display())]
    NoVideoStream { path: PathBuf, streams: String },

    #[error("`{}`: this FFmpeg build has no decoder for {codec}", path.display())]
    NoDecoder { path: PathBuf, codec: String },

    #[error("`{}`: cannot decode the video: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },

    #[error("`{}`: frame size {width}x{height}; a frame needs at least one pixel", path.display())]
    ZeroFrameSize {
        path: PathBuf,
        width: usize,
        height: usize,
    },

    #[error("`{}`: frame {width}x{height} is larger than the {limit} px limit", path.display())]
    FrameTooLarge {
        path: PathBuf,
        width: usize,
        height: usize,
        limit: usize,
    },

    #[error(
        "`{}`: {frames} frames of {width}x{height} need {} in memory, more than the {} this process may use (80% of what is available); take fewer frames or a smaller size (--frames, --resize), or use `tokenscope eval`, which reads a clip window by window",
        path.display(),
        crate::sys::human_bytes(*bytes),
        crate::sys::human_bytes(*limit)
    )]
    ClipTooLarge {
        path: PathBuf,
        frames: usize,
        width: usize,
        height: usize,
        bytes: u64,
        limit: u64,
    },

    #[error("`{}`: no frames decoded ({reason})", path.display())]
    NoFrames { path: PathBuf, reason: String },

    #[error("`{}`: nothing to decode: start frame {start} is past the last frame (the file has {available})", path.display())]
    StartPastEnd {
        path: PathBuf,
        start: usize,
        available: usize,
    },

    #[error("invalid decode options: {0}")]
    InvalidOptions(String),

    #[error("invalid frames: {0}")]
    InvalidFrames(String),

    #[error("`{}`: unsupported output type; use .mp4 (H.264), .mkv (FFV1, lossless) or .png", path.display())]
    UnsupportedOutput { path: PathBuf },

    #[error("`{}`: frame rate {fps} is not a positive number", path.display())]
    InvalidFps { path: PathBuf, fps: f64 },

    #[error("`{}`: this FFmpeg build has no {codec} encoder", path.display())]
    NoEncoder { path: PathBuf, codec: String },

    #[error("FFmpeg failed to initialise: {0}")]
    FfmpegInit(String),

    #[error(transparent)]
    Write(#[from] WriteError),
}
