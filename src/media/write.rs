//! Writing clips: MP4 (H.264, or MPEG-4 Part 2 where FFmpeg lacks libx264), lossless FFV1 in MKV,
//! and PNG (one image, or a numbered sequence). Every file goes to a temporary name in the same
//! folder and is renamed when complete; inputs are never overwritten.

use std::path::{Path, PathBuf};

use ffmpeg_next as ffmpeg;

use ffmpeg::format::Pixel;
use ffmpeg::util::color;
use ffmpeg::{codec, encoder, Dictionary, Packet, Rational};

use super::convert::{convert_frame, pad_by_repeating_edges, rgb_frame_from_packed, to_u32};
use super::{ensure_ffmpeg, MediaError, RgbFrames};
use crate::io::{ensure_not_input, temp_path_for, write_atomically, WriteError};

/// What [`write`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenMedia {
    /// The path asked for.
    pub path: PathBuf,
    /// The encoder used: `libx264`, `mpeg4`, `ffv1` or `png`.
    pub codec: String,
    /// Every file written: the path itself, or the numbered files of a PNG sequence.
    pub files: Vec<PathBuf>,
    /// Adjustments made on the way (padding to even sizes).
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutputKind {
    Mp4,
    Mkv,
    Png,
}

/// Writes `frames` at `fps` to `path`, the kind chosen by its extension:
///
/// - `.mp4`: H.264 (libx264, CRF 18, yuv420p, BT.601 limited range, tagged as such) when this
///   FFmpeg build has libx264, else MPEG-4 Part 2 at high quality; [`WrittenMedia::codec`] says
///   which. Odd sizes are padded to even ones by repeating the last column or row.
/// - `.mkv`: FFV1 storing `bgr0`, which keeps every RGB value exactly.
/// - `.png`: one image for a 1-frame clip; for more frames `name_00000.png`, `name_00001.png`, ...
///   next to the path given.
///
/// Refuses to write over any of `inputs` (nor a numbered PNG onto one).
pub fn write(
    frames: &RgbFrames,
    fps: f64,
    path: impl AsRef<Path>,
    inputs: &[&Path],
) -> Result<WrittenMedia, MediaError> {
    let path = path.as_ref();
    check_frames(frames)?;
    if output_kind(path)? == OutputKind::Png {
        ensure_not_input(path, inputs)?;
        return write_png(frames, path, inputs);
    }
    // The writer checks the kind and the inputs itself.
    let mut writer = VideoWriter::create(path, fps, (frames.width, frames.height), inputs)?;
    for pixels in frames.data.chunks_exact(frame_bytes(frames)) {
        writer.push(pixels)?;
    }
    writer.finish()
}

/// A video written as its frames arrive, so a long clip never has to be held whole: to a
/// temporary file next to the target, renamed over it by [`finish`](Self::finish). A writer
/// dropped unfinished (an error upstream, a cancel) removes what it wrote.
pub struct VideoWriter {
    target: PathBuf,
    tmp: PathBuf,
    output: ffmpeg::format::context::Output,
    encoder: encoder::Video,
    converter: Option<ffmpeg::software::scaling::Context>,
    plan: EncodePlan,
    /// Size of the frames pushed, and of the frames encoded (even for 4:2:0).
    frame_size: (usize, usize),
    encoded_size: (usize, usize),
    stream_index: usize,
    time_base: Rational,
    stream_time_base: Rational,
    frames: usize,
    notes: Vec<String>,
    finished: bool,
}

impl VideoWriter {
    /// Opens a `.mp4` (H.264, or MPEG-4 Part 2) or `.mkv` (FFV1) writer for frames of
    /// `width`×`height` at `fps`, as [`write`] describes; refuses to write over `inputs`.
    pub fn create(
        path: &Path,
        fps: f64,
        (width, height): (usize, usize),
        inputs: &[&Path],
    ) -> Result<Self, MediaError> {
        if width == 0 || height == 0 {
            return Err(MediaError::InvalidFrames(format!(
                "frames of {width}x{height} pixels"
            )));
        }
        let kind = output_kind(path)?;
        ensure_not_input(path, inputs)?;
        if kind == OutputKind::Png {
            return Err(MediaError::UnsupportedOutput {
                path: path.to_path_buf(),
            });
        }
        if !(fps.is_finite() && fps > 0.0) {
            return Err(MediaError::InvalidFps {
                path: path.to_path_buf(),
                fps,
            });
        }
        ensure_ffmpeg()?;
        let plan = match kind {
            OutputKind::Mkv => lossless_plan(path)?,
            _ => mp4_plan(path)?,
        };
        Self::open(path, fps, (width, height), plan)
    }

    /// Starts the file with a chosen encoder.
    fn open(
        path: &Path,
        fps: f64,
        (width, height): (usize, usize),
        plan: EncodePlan,
    ) -> Result<Self, MediaError> {
        let mut notes = Vec::new();
        let encoded_size = if plan.needs_even_size {
            let even = (width.next_multiple_of(2), height.next_multiple_of(2));
            if even != (width, height) {
                notes.push(format!(
                    "padded {width}x{height} to {}x{} by repeating the last column/row ({} needs even sizes)",
                    even.0, even.1, plan.codec_name
                ));
            }
            even
        } else {
            (width, height)
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| write_error(path, e.to_string()))?;
        }
        let tmp = temp_path_for(path);
        let opened = open_video(&tmp, fps, &plan, encoded_size);
        let (output, encoder, stream_index, time_base, stream_time_base) = match opened {
            Ok(parts) => parts,
            Err(reason) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(write_error(path, reason));
            }
        };
        Ok(Self {
            target: path.to_path_buf(),
            tmp,
            output,
            encoder,
            converter: None,
            plan,
            frame_size: (width, height),
            encoded_size,
            stream_index,
            time_base,
            stream_time_base,
            frames: 0,
            notes,
            finished: false,
        })
    }

    /// Encodes one frame of packed RGB (`width × height × 3` bytes).
    pub fn push(&mut self, pixels: &[u8]) -> Result<(), MediaError> {
        let (width, height) = self.frame_size;
        if pixels.len() != width * height * 3 {
            return Err(MediaError::InvalidFrames(format!(
                "a {width}x{height} frame needs {} bytes, got {}",
                width * height * 3,
                pixels.len()
            )));
        }
        self.encode(pixels)
            .map_err(|reason| write_error(&self.target, reason))
    }

    fn encode(&mut self, pixels: &[u8]) -> Result<(), String> {
        let (width, height) = self.frame_size;
        let (ew, eh) = self.encoded_size;
        let rgb = if (ew, eh) == (width, height) {
            rgb_frame_from_packed(pixels, width, height)?
        } else {
            let padded = pad_by_repeating_edges(pixels, width, height, ew, eh);
            rgb_frame_from_packed(&padded, ew, eh)?
        };
        let mut converted = convert_frame(&mut self.converter, &rgb, self.plan.pixel_format)?;
        let index = self.frames;
        converted.set_pts(Some(index as i64));
        if self.plan.tag_bt601 {
            converted.set_color_space(color::Space::SMPTE170M);
            converted.set_color_range(color::Range::MPEG);
        }
        self.encoder
            .send_frame(&converted)
            .map_err(|e| format!("encoding frame {index} failed: {e}"))?;
        self.frames += 1;
        self.send_packets()
    }

    fn send_packets(&mut self) -> Result<(), String> {
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(self.stream_index);
            packet.rescale_ts(self.time_base, self.stream_time_base);
            packet
                .write_interleaved(&mut self.output)
                .map_err(|e| format!("cannot write a packet: {e}"))?;
        }
        Ok(())
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Flushes the encoder, completes the file and renames it over the target.
    pub fn finish(mut self) -> Result<WrittenMedia, MediaError> {
        let target = self.target.clone();
        let completed = self.complete();
        if let Err(reason) = completed {
            return Err(write_error(&target, reason));
        }
        std::fs::rename(&self.tmp, &target).map_err(|e| write_error(&target, e.to_string()))?;
        self.finished = true;
        Ok(WrittenMedia {
            path: target.clone(),
            codec: self.plan.codec_name.to_string(),
            files: vec![target],
            notes: std::mem::take(&mut self.notes),
        })
    }

    fn complete(&mut self) -> Result<(), String> {
        if self.frames == 0 {
            return Err("no frames to write".into());
        }
        self.encoder
            .send_eof()
            .map_err(|e| format!("finishing the encode failed: {e}"))?;
        self.send_packets()?;
        self.output
            .write_trailer()
            .map_err(|e| format!("cannot finish the {} file: {e}", self.plan.container))
    }
}

impl Drop for VideoWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn write_error(path: &Path, reason: String) -> MediaError {
    MediaError::Write(WriteError::Write {
        path: path.to_path_buf(),
        reason,
    })
}

/// Whether `path` names a video [`VideoWriter`] writes (`.mp4`, `.mkv`), frame by frame, rather
/// than a PNG image or sequence.
pub fn writes_video(path: &Path) -> bool {
    matches!(output_kind(path), Ok(OutputKind::Mp4 | OutputKind::Mkv))
}

/// The encoder `.mp4` files get in this FFmpeg build: `libx264`, else `mpeg4`, else `None`.
pub fn available_mp4_encoder() -> Option<&'static str> {
    ensure_ffmpeg().ok()?;
    if encoder::find_by_name("libx264").is_some() {
        Some("libx264")
    } else if encoder::find(codec::Id::MPEG4).is_some() {
        Some("mpeg4")
    } else {
        None
    }
}

/// `dir/name_00042.png` for `dir/name.png` and index 42.
pub fn numbered_png_path(path: &Path, index: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}_{index:05}.png"))
}

fn check_frames(frames: &RgbFrames) -> Result<(), MediaError> {
    let expected = frames
        .frames
        .checked_mul(frames.height)
        .and_then(|n| n.checked_mul(frames.width))
        .and_then(|n| n.checked_mul(3));
    if frames.frames == 0 || frames.width == 0 || frames.height == 0 {
        return Err(MediaError::InvalidFrames(format!(
            "nothing to write: {} frames of {}x{}",
            frames.frames, frames.width, frames.height
        )));
    }
    if expected != Some(frames.data.len()) {
        return Err(MediaError::InvalidFrames(format!(
            "{} frames of {}x{} RGB need {} bytes, the buffer has {}",
            frames.frames,
            frames.width,
            frames.height,
            expected.map_or("too many".to_string(), |n| n.to_string()),
            frames.data.len()
        )));
    }
    Ok(())
}

fn output_kind(path: &Path) -> Result<OutputKind, MediaError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("mp4") => Ok(OutputKind::Mp4),
        Some("mkv") => Ok(OutputKind::Mkv),
        Some("png") => Ok(OutputKind::Png),
        _ => Err(MediaError::UnsupportedOutput {
            path: path.to_path_buf(),
        }),
    }
}

fn frame_bytes(frames: &RgbFrames) -> usize {
    frames.width * frames.height * 3
}

fn write_png(
    frames: &RgbFrames,
    path: &Path,
    inputs: &[&Path],
) -> Result<WrittenMedia, MediaError> {
    let targets: Vec<PathBuf> = if frames.frames == 1 {
        vec![path.to_path_buf()]
    } else {
        (0..frames.frames)
            .map(|i| numbered_png_path(path, i))
            .collect()
    };
    for target in &targets {
        ensure_not_input(target, inputs)?;
    }
    let (width, height) = (
        to_u32(frames.width).map_err(MediaError::InvalidFrames)?,
        to_u32(frames.height).map_err(MediaError::InvalidFrames)?,
    );
    for (target, pixels) in targets
        .iter()
        .zip(frames.data.chunks_exact(frame_bytes(frames)))
    {
        write_atomically(target, |tmp| {
            image::save_buffer_with_format(
                tmp,
                pixels,
                width,
                height,
                image::ExtendedColorType::Rgb8,
                image::ImageFormat::Png,
            )
            .map_err(|e| e.to_string())
        })?;
    }
    Ok(WrittenMedia {
        path: path.to_path_buf(),
        codec: "png".into(),
        files: targets,
        notes: Vec::new(),
    })
}

/// How a video file is encoded.
struct EncodePlan {
    codec: ffmpeg::Codec,
    codec_name: &'static str,
    container: &'static str,
    pixel_format: Pixel,
    needs_even_size: bool,
    /// Tag the stream as BT.601 limited range, the matrix swscale converts RGB with, so players
    /// and decoders convert back the same way.
    tag_bt601: bool,
    encoder_options: Vec<(&'static str, &'static str)>,
    muxer_options: Vec<(&'static str, &'static str)>,
}

fn mp4_plan(path: &Path) -> Result<EncodePlan, MediaError> {
    if let Some(codec) = encoder::find_by_name("libx264") {
        return Ok(x264_plan(codec));
    }
    if let Some(codec) = encoder::find(codec::Id::MPEG4) {
        return Ok(mpeg4_plan(codec));
    }
    Err(MediaError::NoEncoder {
        path: path.to_path_buf(),
        codec: "H.264 (libx264) or MPEG-4".into(),
    })
}

/// Moves the MP4 index to the front so the file plays while it downloads (slides, web pages).
const MP4_MUXER_OPTIONS: [(&str, &str); 1] = [("movflags", "+faststart")];

fn x264_plan(codec: ffmpeg::Codec) -> EncodePlan {
    EncodePlan {
        codec,
        codec_name: "libx264",
        container: "mp4",
        pixel_format: Pixel::YUV420P,
        needs_even_size: true,
        tag_bt601: true,
        // CRF 18: visually lossless for most content, so reconstructions show the tokenizer's
        // artefacts rather than the encoder's.
        encoder_options: vec![("crf", "18"), ("preset", "medium")],
        muxer_options: MP4_MUXER_OPTIONS.to_vec(),
    }
}

fn mpeg4_plan(codec: ffmpeg::Codec) -> EncodePlan {
    EncodePlan {
        codec,
        codec_name: "mpeg4",
        container: "mp4",
        pixel_format: Pixel::YUV420P,
        needs_even_size: true,
        tag_bt601: true,
        // Constant quantiser 2 (`-q:v 2`), the best MPEG-4 Part 2 offers: its default of
        // 200 kbit/s would smear everything.
        encoder_options: vec![("flags", "+qscale"), ("global_quality", "236")],
        muxer_options: MP4_MUXER_OPTIONS.to_vec(),
    }
}

fn lossless_plan(path: &Path) -> Result<EncodePlan, MediaError> {
    let codec = encoder::find(codec::Id::FFV1).ok_or_else(|| MediaError::NoEncoder {
        path: path.to_path_buf(),
        codec: "FFV1".into(),
    })?;
    Ok(EncodePlan {
        codec,
        codec_name: "ffv1",
        container: "matroska",
        // FFV1 stores bgr0 as RGB without any colour conversion, so 8-bit RGB round-trips
        // exactly (FFmpeg 5.1's FFV1 has no 8-bit planar gbrp).
        pixel_format: Pixel::BGRZ,
        needs_even_size: false,
        tag_bt601: false,
        // Version 3 with per-slice checksums: multithreaded, and damage is detected on reading.
        encoder_options: vec![("level", "3"), ("slicecrc", "1")],
        muxer_options: Vec::new(),
    })
}

/// The frame rate as a fraction FFmpeg can store (29.97 → 30000/1001 where that is what it is).
fn frame_rate(fps: f64) -> Rational {
    // A denominator bound keeps odd rates (12.3456 fps) from producing time bases some muxers
    // cannot store; common rates are exact well within it.
    let rate = match Rational::from(fps).reduce_with_limit(1 << 20) {
        Ok(exact) => exact,
        Err(approximate) => approximate,
    };
    if rate.numerator() > 0 && rate.denominator() > 0 {
        rate
    } else {
        Rational::new(25, 1)
    }
}

/// The muxer (header written) and the opened encoder of a video at `tmp`; the stream's index,
/// the encoder's time base and the stream's (which the muxer may have chosen).
fn open_video(
    tmp: &Path,
    fps: f64,
    plan: &EncodePlan,
    (width, height): (usize, usize),
) -> Result<
    (
        ffmpeg::format::context::Output,
        encoder::Video,
        usize,
        Rational,
        Rational,
    ),
    String,
> {
    let rate = frame_rate(fps);
    let time_base = rate.invert();
    let mut output = ffmpeg::format::output_as(tmp, plan.container)
        .map_err(|e| format!("cannot create the {} file: {e}", plan.container))?;
    let global_header = output
        .format()
        .flags()
        .contains(ffmpeg::format::Flags::GLOBAL_HEADER);

    let mut settings = codec::context::Context::new_with_codec(plan.codec)
        .encoder()
        .video()
        .map_err(|e| format!("cannot set up the {} encoder: {e}", plan.codec_name))?;
    settings.set_width(to_u32(width)?);
    settings.set_height(to_u32(height)?);
    settings.set_format(plan.pixel_format);
    settings.set_time_base(time_base);
    settings.set_frame_rate(Some(rate));
    if plan.tag_bt601 {
        settings.set_colorspace(color::Space::SMPTE170M);
        settings.set_color_range(color::Range::MPEG);
    }
    if global_header {
        settings.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let encoder = settings
        .open_with(dictionary(&plan.encoder_options))
        .map_err(|e| format!("cannot open the {} encoder: {e}", plan.codec_name))?;

    let stream_index = {
        let mut stream = output
            .add_stream(plan.codec)
            .map_err(|e| format!("cannot add a video stream: {e}"))?;
        stream.set_parameters(&encoder);
        stream.set_time_base(time_base);
        stream.set_avg_frame_rate(rate);
        stream.index()
    };
    output
        .write_header_with(dictionary(&plan.muxer_options))
        .map_err(|e| format!("cannot write the {} header: {e}", plan.container))?;
    // The muxer may have chosen its own time base for the stream.
    let stream_time_base = output
        .stream(stream_index)
        .map(|s| s.time_base())
        .ok_or("the output stream vanished")?;
    Ok((output, encoder, stream_index, time_base, stream_time_base))
}

fn dictionary<'a>(entries: &[(&str, &str)]) -> Dictionary<'a> {
    let mut dictionary = Dictionary::new();
    for (key, value) in entries {
        dictionary.set(key, value);
    }
    dictionary
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback for FFmpeg builds without libx264, forced here because this one may have it.
    #[test]
    fn mpeg4_fallback_writes_a_playable_high_quality_mp4() {
        ensure_ffmpeg().unwrap();
        let Some(codec) = encoder::find(codec::Id::MPEG4) else {
            eprintln!("this FFmpeg build has no mpeg4 encoder; nothing to test");
            return;
        };
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4");
        let options = super::super::DecodeOptions {
            max_frames: Some(9),
            ..Default::default()
        };
        let clip = super::super::open(&demo, &options).unwrap();
        let target =
            std::env::temp_dir().join(format!("tokenscope-mpeg4-{}.mp4", std::process::id()));
        let plan = mpeg4_plan(codec);
        let size = (clip.frames.width, clip.frames.height);
        let mut writer = VideoWriter::open(&target, clip.fps, size, plan).unwrap();
        for pixels in clip.frames.data.chunks_exact(frame_bytes(&clip.frames)) {
            writer.push(pixels).unwrap();
        }
        writer.finish().unwrap();
        let decoder = super::super::VideoDecoder::open(&target, &Default::default()).unwrap();
        assert_eq!(decoder.info().codec, "mpeg4");
        let back = super::super::open(&target, &Default::default()).unwrap();
        let _ = std::fs::remove_file(&target);
        assert_eq!(back.frames.frames, 9);
        assert_eq!(back.fps, 25.0);
        let squared: f64 = back
            .frames
            .data
            .iter()
            .zip(&clip.frames.data)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        let psnr = 10.0 * (255.0f64.powi(2) * back.frames.data.len() as f64 / squared).log10();
        eprintln!("mpeg4 round trip PSNR: {psnr:.2} dB");
        assert!(psnr > 32.0, "mpeg4 round trip PSNR {psnr:.2} dB");
    }

    /// A writer dropped before `finish` (an error or a cancel upstream) leaves nothing behind:
    /// neither the target nor its temporary file.
    #[test]
    fn an_unfinished_video_leaves_no_file() {
        let dir =
            std::env::temp_dir().join(format!("tokenscope-unfinished-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("clip.mkv");
        let mut writer = VideoWriter::create(&target, 24.0, (32, 16), &[]).unwrap();
        writer.push(&[128u8; 32 * 16 * 3]).unwrap();
        assert!(
            writer.push(&[0u8; 5]).is_err(),
            "a frame of the wrong size is refused"
        );
        drop(writer);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");

        let mut writer = VideoWriter::create(&target, 24.0, (32, 16), &[]).unwrap();
        for _ in 0..3 {
            writer.push(&[200u8; 32 * 16 * 3]).unwrap();
        }
        let written = writer.finish().unwrap();
        let back = super::super::open(&written.path, &Default::default()).unwrap();
        assert_eq!(back.frames.frames, 3);
        assert!(
            back.frames.data.iter().all(|&v| v == 200),
            "FFV1 is lossless"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
