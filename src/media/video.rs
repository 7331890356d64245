//! Streaming video decoding through FFmpeg: one RGB frame at a time, so a viewer can show frames as
//! they arrive and a long video never has to fit in memory.

use std::path::{Path, PathBuf};

use ffmpeg_next as ffmpeg;

use ffmpeg::codec;
use ffmpeg::format::stream::Disposition;
use ffmpeg::util::error::EAGAIN;
use ffmpeg::{Packet, Rational};

use super::convert::{pixel_format_name, to_u32, RgbConverter};
use super::geometry::{check_frame_size, display_matrix_rotation, size_for_shorter_side, Rotation};
use super::{check_input_file, ensure_ffmpeg, DecodeOptions, MediaError};

/// The frame rate assumed when a file states none (raw elementary streams), so export still works.
pub const FALLBACK_FPS: f64 = 25.0;

/// After this many failures in a row without a decoded frame, the rest of the file is given up.
const MAX_CONSECUTIVE_FAILURES: usize = 1000;

/// One decoded frame, RGB8, rows top to bottom, channels last.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbFrame {
    /// Position in the source, counting every frame the decoder put out from 0 (decode order, so
    /// variable frame rate and broken timestamps do not matter).
    pub source_index: usize,
    /// Presentation time in seconds from the container's timestamps, when it has them.
    pub time_s: Option<f64>,
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// What [`VideoDecoder::next_frame`] will produce.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInfo {
    /// Size of the frames returned, after rotation and resizing.
    pub width: usize,
    pub height: usize,
    /// Size of the first frame as stored in the file, before rotation and resizing.
    pub source_width: usize,
    pub source_height: usize,
    /// Clockwise rotation applied for display (0, 90, 180 or 270), from the file's metadata.
    pub rotation_degrees: u32,
    /// The source frame rate: the stream's average rate, else its base rate, else
    /// [`FALLBACK_FPS`] (with a warning).
    pub fps: f64,
    /// How many frames the source holds, from the container (exact for most MP4 and MKV files).
    pub source_frame_count_estimate: Option<usize>,
    /// How many frames `next_frame` will return with the decode options given.
    pub frame_count_estimate: Option<usize>,
    /// FFmpeg's codec name (`h264`, `hevc`, `vp9`, ...).
    pub codec: String,
    /// FFmpeg's name for the stored pixel format (`yuv420p`, ...).
    pub pixel_format: String,
}

/// Failures of one kind (unreadable packets, undecodable packets) counted rather than repeated:
/// a damaged file can produce thousands.
#[derive(Default)]
struct FailureTally {
    count: usize,
    first: Option<String>,
}

impl FailureTally {
    fn record(&mut self, reason: String) {
        self.count += 1;
        self.first.get_or_insert(reason);
    }

    /// "1 packet failed to decode (reason)" or "3 packets failed to decode (first: reason)".
    fn summary(&self, singular: &str, plural: &str) -> Option<String> {
        let first = self.first.as_deref()?;
        Some(match self.count {
            1 => format!("1 {singular} ({first})"),
            n => format!("{n} {plural} (first: {first})"),
        })
    }
}

/// Decodes the best video stream of a file, frame by frame, to RGB8.
pub struct VideoDecoder {
    path: PathBuf,
    input: ffmpeg::format::context::Input,
    stream_index: usize,
    time_base: Rational,
    decoder: ffmpeg::decoder::Video,
    converter: RgbConverter,
    rotation: Rotation,
    options: DecodeOptions,
    info: VideoInfo,
    /// Frames the container lists, when it does: fewer decoded means the file is cut short.
    listed_frames: Option<usize>,
    /// The first decoded frame, read by `open` to learn the size, not yet handed out.
    pending: Option<ffmpeg::frame::Video>,
    /// Frames the decoder has put out so far (the next frame's `source_index`).
    decoded: usize,
    /// Frames handed out by `next_frame`.
    emitted: usize,
    /// End of stream has been sent to the decoder.
    input_finished: bool,
    /// The decoder has nothing more to give.
    exhausted: bool,
    consecutive_failures: usize,
    read_failures: FailureTally,
    decode_failures: FailureTally,
    warnings: Vec<String>,
    size_change_reported: bool,
    truncation_checked: bool,
}

impl VideoDecoder {
    /// Opens `path`, picks its best video stream and decodes the first frame to learn its size.
    pub fn open(path: impl AsRef<Path>, options: &DecodeOptions) -> Result<Self, MediaError> {
        let path = path.as_ref();
        options.validate()?;
        check_input_file(path)?;
        ensure_ffmpeg()?;
        let input = ffmpeg::format::input(path).map_err(|e| MediaError::NotMedia {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let stream = pick_video_stream(&input).ok_or_else(|| MediaError::NoVideoStream {
            path: path.to_path_buf(),
            streams: describe_streams(&input),
        })?;
        let stream_index = stream.index();
        let time_base = stream.time_base();
        let codec_id = stream.parameters().id();
        let mut warnings = Vec::new();
        let rotation = rotation_of(&stream, &mut warnings);
        let fps = match fps_of(&stream) {
            Some(fps) => fps,
            None => {
                warnings.push(format!(
                    "the file states no frame rate; assuming {FALLBACK_FPS} fps"
                ));
                FALLBACK_FPS
            }
        };
        let listed_frames = usize::try_from(stream.frames()).ok().filter(|&n| n > 0);
        let source_frame_count_estimate = listed_frames.or_else(|| {
            let seconds = if stream.duration() > 0 {
                stream.duration() as f64 * f64::from(time_base)
            } else {
                input.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE)
            };
            (seconds > 0.0).then(|| (seconds * fps).round() as usize)
        });

        let mut context = codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| decode_error(path, format!("bad codec parameters: {e}")))?;
        // Frame threads: several frames decode at once; output is bit-identical to one thread.
        context.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Frame,
            ..Default::default()
        });
        let mut decoder = context.decoder();
        decoder.set_packet_time_base(time_base);
        let decoder = decoder.video().map_err(|e| match e {
            ffmpeg::Error::DecoderNotFound => MediaError::NoDecoder {
                path: path.to_path_buf(),
                codec: codec_id.name().to_string(),
            },
            other => decode_error(
                path,
                format!("cannot open the {} decoder: {other}", codec_id.name()),
            ),
        })?;
        // Refuse absurd sizes before decoding a single frame of them.
        let (coded_width, coded_height) = (decoder.width() as usize, decoder.height() as usize);
        if coded_width > 0 && coded_height > 0 {
            check_frame_size(path, coded_width, coded_height)?;
        }

        let mut video = VideoDecoder {
            path: path.to_path_buf(),
            input,
            stream_index,
            time_base,
            decoder,
            converter: RgbConverter::new(0, 0),
            rotation,
            options: options.clone(),
            info: VideoInfo {
                width: 0,
                height: 0,
                source_width: 0,
                source_height: 0,
                rotation_degrees: rotation.degrees(),
                fps,
                source_frame_count_estimate,
                frame_count_estimate: None,
                codec: codec_id.name().to_string(),
                pixel_format: String::new(),
            },
            listed_frames,
            pending: None,
            decoded: 0,
            emitted: 0,
            input_finished: false,
            exhausted: false,
            consecutive_failures: 0,
            read_failures: FailureTally::default(),
            decode_failures: FailureTally::default(),
            warnings,
            size_change_reported: false,
            truncation_checked: false,
        };
        video.decode_first_frame()?;
        Ok(video)
    }

    pub fn info(&self) -> VideoInfo {
        self.info.clone()
    }

    /// Everything that went wrong without stopping the decode: damaged packets, a file cut short,
    /// a missing frame rate, ignored metadata.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.warnings.clone();
        warnings.extend(
            self.read_failures
                .summary("unreadable packet", "unreadable packets"),
        );
        warnings.extend(
            self.decode_failures
                .summary("packet failed to decode", "packets failed to decode"),
        );
        warnings
    }

    /// The next selected frame, or `None` after the last one. Fails when the file yields no frame
    /// at all (or none in the selected range); a file that breaks off after some frames ends
    /// normally and says so in [`VideoDecoder::warnings`].
    pub fn next_frame(&mut self) -> Result<Option<RgbFrame>, MediaError> {
        loop {
            if self.selection_complete() {
                return Ok(None);
            }
            let Some(frame) = self.next_decoded_frame() else {
                return self.finish();
            };
            let source_index = self.decoded.saturating_sub(1);
            if !self.options.selects(source_index) {
                continue;
            }
            if let Some(rgb) = self.rgb_from_frame(&frame, source_index)? {
                self.emitted += 1;
                let time_s = frame
                    .timestamp()
                    .map(|t| t as f64 * f64::from(self.time_base));
                return Ok(Some(RgbFrame {
                    source_index,
                    time_s,
                    width: self.info.width,
                    height: self.info.height,
                    data: rgb,
                }));
            }
        }
    }

    /// Whether the options' range, stride and maximum are already satisfied, so decoding can stop.
    fn selection_complete(&self) -> bool {
        let limit_reached = self
            .options
            .output_limit()
            .is_some_and(|limit| self.emitted >= limit);
        let range_passed = self
            .options
            .count
            .is_some_and(|count| self.decoded >= self.options.start.saturating_add(count));
        limit_reached || range_passed
    }

    /// Called when the decoder has run dry: an error if nothing was selected, else the end.
    fn finish(&mut self) -> Result<Option<RgbFrame>, MediaError> {
        if self.emitted == 0 {
            if self.decoded > 0 && self.options.start >= self.decoded {
                return Err(MediaError::StartPastEnd {
                    path: self.path.clone(),
                    start: self.options.start,
                    available: self.decoded,
                });
            }
            return Err(self.no_frames_error());
        }
        if !self.truncation_checked {
            self.truncation_checked = true;
            if let Some(listed) = self.listed_frames.filter(|&n| self.decoded < n) {
                self.warnings.push(format!(
                    "decoded {} of the {listed} frames the container lists; the file looks \
                     truncated or damaged, the frames that decoded are kept",
                    self.decoded
                ));
            }
        }
        Ok(None)
    }

    /// Why nothing decoded, with the container's frame count where it has one.
    fn no_frames_error(&self) -> MediaError {
        let mut reasons = match self.listed_frames {
            Some(listed) => vec![format!(
                "the container lists {listed} frames but none decodes; the file looks \
                 truncated or damaged"
            )],
            None => vec!["the video stream holds no decodable frame".to_string()],
        };
        reasons.extend(self.warnings());
        MediaError::NoFrames {
            path: self.path.clone(),
            reason: reasons.join("; "),
        }
    }

    /// Decodes up to the first frame and fixes the output size from it.
    fn decode_first_frame(&mut self) -> Result<(), MediaError> {
        let Some(first) = self.next_decoded_frame() else {
            return Err(self.no_frames_error());
        };
        // `next_frame` hands this frame out again as source frame 0.
        self.decoded = 0;
        let (width, height) = (first.width() as usize, first.height() as usize);
        check_frame_size(&self.path, width, height)?;
        let (display_width, display_height) = self.rotation.displayed_size(width, height);
        let (out_width, out_height) = match self.options.resize_shorter_side {
            Some(side) => size_for_shorter_side(display_width, display_height, side),
            None => (display_width, display_height),
        };
        check_frame_size(&self.path, out_width, out_height)?;
        let (scaled_width, scaled_height) = self.rotation.stored_size(out_width, out_height);
        self.converter = RgbConverter::new(
            to_u32(scaled_width).map_err(|e| decode_error(&self.path, e))?,
            to_u32(scaled_height).map_err(|e| decode_error(&self.path, e))?,
        );
        self.info.width = out_width;
        self.info.height = out_height;
        self.info.source_width = width;
        self.info.source_height = height;
        self.info.pixel_format = pixel_format_name(first.format());
        self.info.frame_count_estimate = self
            .info
            .source_frame_count_estimate
            .map(|n| self.options.selected_count(n));
        self.pending = Some(first);
        Ok(())
    }

    /// Converts one decoded frame; `None` skips a frame that cannot be shown (with a warning).
    fn rgb_from_frame(
        &mut self,
        frame: &ffmpeg::frame::Video,
        source_index: usize,
    ) -> Result<Option<Vec<u8>>, MediaError> {
        let (width, height) = (frame.width() as usize, frame.height() as usize);
        if width == 0 || height == 0 || check_frame_size(&self.path, width, height).is_err() {
            self.decode_failures.record(format!(
                "frame {source_index} has size {width}x{height}, skipped"
            ));
            return Ok(None);
        }
        if (width, height) != (self.info.source_width, self.info.source_height)
            && !self.size_change_reported
        {
            self.size_change_reported = true;
            self.warnings.push(format!(
                "the frame size changes mid-stream (from {}x{} to {width}x{height} at frame \
                 {source_index}); every frame is scaled to {}x{}",
                self.info.source_width, self.info.source_height, self.info.width, self.info.height
            ));
        }
        let rgb = self
            .converter
            .rgb_from_frame(frame)
            .map_err(|reason| decode_error(&self.path, reason))?;
        let (scaled_width, scaled_height) =
            self.rotation.stored_size(self.info.width, self.info.height);
        Ok(Some(self.rotation.apply(rgb, scaled_width, scaled_height)))
    }

    /// The next frame out of the decoder, feeding it packets as it asks; `None` when it is done.
    fn next_decoded_frame(&mut self) -> Option<ffmpeg::frame::Video> {
        if let Some(frame) = self.pending.take() {
            self.decoded += 1;
            return Some(frame);
        }
        while !self.exhausted {
            let mut frame = ffmpeg::frame::Video::empty();
            match self.decoder.receive_frame(&mut frame) {
                Ok(()) => {
                    self.decoded += 1;
                    self.consecutive_failures = 0;
                    return Some(frame);
                }
                Err(ffmpeg::Error::Eof) => self.exhausted = true,
                Err(ffmpeg::Error::Other { errno }) if errno == EAGAIN => {
                    if self.input_finished {
                        // Cannot happen after end of stream was sent; stop rather than spin.
                        self.exhausted = true;
                    } else {
                        self.feed_decoder();
                    }
                }
                Err(e) => {
                    self.decode_failures.record(e.to_string());
                    self.note_failure();
                }
            }
        }
        None
    }

    /// Sends the decoder its next packet, or end of stream when the file has no more.
    fn feed_decoder(&mut self) {
        while !self.input_finished {
            let mut packet = Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => {
                    if packet.stream() != self.stream_index {
                        continue;
                    }
                    match self.decoder.send_packet(&packet) {
                        Ok(()) => return,
                        Err(e) => {
                            self.decode_failures.record(e.to_string());
                            self.note_failure();
                        }
                    }
                }
                Err(ffmpeg::Error::Eof) => self.end_input(),
                // A damaged packet: demuxers resynchronise past it.
                Err(ffmpeg::Error::InvalidData) => {
                    self.read_failures
                        .record("invalid data, e.g. a file cut short".into());
                    self.note_failure();
                }
                // I/O errors stick to the file: every further read would fail the same way.
                Err(e) => {
                    self.warnings.push(format!(
                        "reading stopped early: {e}; the frames before are kept"
                    ));
                    self.end_input();
                }
            }
        }
    }

    /// Counts a failure; after too many in a row the rest of the file is given up.
    fn note_failure(&mut self) {
        self.consecutive_failures += 1;
        if self.consecutive_failures < MAX_CONSECUTIVE_FAILURES {
            return;
        }
        if self.input_finished {
            // Even draining fails: nothing more will come out.
            self.exhausted = true;
        } else {
            self.warnings.push(format!(
                "gave up after {MAX_CONSECUTIVE_FAILURES} failures in a row"
            ));
            // Let the decoder drain the frames it holds; failing on, it ends as above.
            self.consecutive_failures = 0;
            self.end_input();
        }
    }

    fn end_input(&mut self) {
        self.input_finished = true;
        // Lets the decoder put out the frames it still holds (B-frame reordering, threads).
        if let Err(e) = self.decoder.send_eof() {
            // The decoder reports an error of the last packet here (a frame cut off mid-way).
            self.decode_failures.record(e.to_string());
        }
    }
}

impl Iterator for VideoDecoder {
    type Item = Result<RgbFrame, MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

fn decode_error(path: &Path, reason: impl Into<String>) -> MediaError {
    MediaError::Decode {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The stream FFmpeg rates best among real video streams (cover art in music files is skipped).
fn pick_video_stream(
    input: &ffmpeg::format::context::Input,
) -> Option<ffmpeg::format::stream::Stream<'_>> {
    let is_video = |s: &ffmpeg::format::stream::Stream| {
        s.parameters().medium() == ffmpeg::media::Type::Video
            && !s.disposition().contains(Disposition::ATTACHED_PIC)
    };
    input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .filter(is_video)
        .or_else(|| input.streams().find(is_video))
}

/// "audio aac, subtitle mov_text", or "none".
fn describe_streams(input: &ffmpeg::format::context::Input) -> String {
    let described: Vec<String> = input
        .streams()
        .map(|s| {
            let parameters = s.parameters();
            let medium = format!("{:?}", parameters.medium()).to_lowercase();
            let cover = if s.disposition().contains(Disposition::ATTACHED_PIC) {
                " (cover art)"
            } else {
                ""
            };
            format!("{medium} {}{cover}", parameters.id().name())
        })
        .collect();
    if described.is_empty() {
        "none".to_string()
    } else {
        described.join(", ")
    }
}

/// Frames per second: the average rate (right for variable frame rate), else the base rate.
fn fps_of(stream: &ffmpeg::format::stream::Stream) -> Option<f64> {
    let usable = |r: Rational| {
        (r.numerator() > 0 && r.denominator() > 0)
            .then(|| f64::from(r))
            .filter(|f| {
                // Containers sometimes state nonsense such as 90000 fps; ignore it.
                f.is_finite() && *f > 0.0 && *f <= 1000.0
            })
    };
    usable(stream.avg_frame_rate()).or_else(|| usable(stream.rate()))
}

/// The display rotation from the stream's display matrix, else its legacy `rotate` tag.
fn rotation_of(stream: &ffmpeg::format::stream::Stream, warnings: &mut Vec<String>) -> Rotation {
    let from_matrix = stream
        .side_data()
        .find(|d| d.kind() == codec::packet::side_data::Type::DisplayMatrix)
        .and_then(|d| display_matrix_rotation(d.data()));
    let (degrees, mirrored) = match from_matrix {
        Some(found) => found,
        None => match stream
            .metadata()
            .get("rotate")
            .map(|r| r.trim().parse::<f64>())
        {
            Some(Ok(degrees)) => (degrees, false),
            Some(Err(_)) => {
                warnings.push("ignored an unreadable `rotate` tag".into());
                return Rotation::None;
            }
            None => return Rotation::None,
        },
    };
    if mirrored {
        warnings
            .push("the display matrix also mirrors the picture; the mirroring is ignored".into());
    }
    Rotation::from_clockwise_degrees(degrees).unwrap_or_else(|| {
        warnings.push(format!(
            "ignored a display rotation of {degrees} degrees (only quarter turns are applied)"
        ));
        Rotation::None
    })
}
