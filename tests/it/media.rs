//! Media in and out: decoding matches the `ffmpeg` command line, frame selection and resizing,
//! images (16-bit, alpha, EXIF orientation), lossless round trips, MP4 export, composites, and
//! every kind of bad input failing cleanly without a panic.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use image::{ImageBuffer, Rgb, Rgba};
use tokenscope::io::WriteError;
use tokenscope::media::{
    self, available_mp4_encoder, numbered_png_path, side_by_side, Clip, DecodeOptions, MediaError,
    MediaKind, PanelLabels, RgbFrames, VideoDecoder,
};

// Expected values for assets/demo.mp4, used where the `ffmpeg` tool is not installed. Made with
// FFmpeg 5.1 (Debian 12): `ffmpeg -v error -i assets/demo.mp4 -f rawvideo -pix_fmt rgb24 -`,
// which gave 43,929,600 bytes = 65 frames of 640x352x3; the checksums are 64-bit FNV-1a
// (`fnv1a64` below) of the bytes of frame 0 and of frame 64.
const DEMO_FRAMES: usize = 65;
const DEMO_WIDTH: usize = 640;
const DEMO_HEIGHT: usize = 352;
const DEMO_FRAME0_FNV1A64: u64 = 0x17e5_3c5d_4836_c5db;
const DEMO_FRAME64_FNV1A64: u64 = 0x9df6_7326_517d_5bbc;
const DEMO_FIRST_PIXEL: [u8; 3] = [113, 161, 200];

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(name)
}

/// A fresh folder under the system temp folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tokenscope-media-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let squared: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mse = squared / a.len() as f64;
    10.0 * (255.0 * 255.0 / mse.max(1e-12)).log10()
}

fn frame(frames: &RgbFrames, index: usize) -> &[u8] {
    let n = frames.width * frames.height * 3;
    &frames.data[index * n..(index + 1) * n]
}

/// Runs `f`, failing the test (instead of aborting it) if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what} panicked"))
}

/// `ffmpeg -i path <filters> -f rawvideo -pix_fmt rgb24 -`, or `None` without the tool.
fn ffmpeg_cli_rgb(path: &Path, extra: &[&str]) -> Option<Vec<u8>> {
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(extra)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(output.stdout)
}

fn demo() -> Clip {
    media::open(asset("demo.mp4"), &DecodeOptions::default()).unwrap()
}

/// Opening must fail (not panic) with this error; returns the message.
fn open_error(path: &Path, options: &DecodeOptions) -> (MediaError, String) {
    let result = no_panic("media::open", || media::open(path, options));
    let error = result.expect_err("opening should fail");
    let message = error.to_string();
    eprintln!("{message}");
    (error, message)
}

// ---------------------------------------------------------------------------------------------
// Decoding video

#[test]
fn demo_clip_matches_the_ffmpeg_command_line() {
    let clip = demo();
    assert_eq!(clip.kind, MediaKind::Video);
    assert_eq!(
        (clip.frames.frames, clip.frames.width, clip.frames.height),
        (DEMO_FRAMES, DEMO_WIDTH, DEMO_HEIGHT)
    );
    assert_eq!(clip.fps, 25.0);
    assert_eq!((clip.first_frame, clip.stride), (0, 1));
    assert!(clip.warnings.is_empty(), "{:?}", clip.warnings);
    // Committed numbers, so this holds without the ffmpeg tool too.
    assert_eq!(&frame(&clip.frames, 0)[..3], &DEMO_FIRST_PIXEL);
    assert_eq!(fnv1a64(frame(&clip.frames, 0)), DEMO_FRAME0_FNV1A64);
    assert_eq!(fnv1a64(frame(&clip.frames, 64)), DEMO_FRAME64_FNV1A64);

    match ffmpeg_cli_rgb(&asset("demo.mp4"), &[]) {
        Some(reference) => {
            assert_eq!(
                reference.len(),
                clip.frames.data.len(),
                "frame count or size differs"
            );
            let first_difference = reference
                .iter()
                .zip(&clip.frames.data)
                .position(|(a, b)| a != b);
            assert_eq!(first_difference, None, "pixels differ from the ffmpeg tool");
        }
        None => eprintln!("ffmpeg tool not found: compared with the committed checksums only"),
    }
}

#[test]
fn streaming_decoder_yields_frames_one_at_a_time() {
    let started = Instant::now();
    let mut decoder = VideoDecoder::open(asset("demo.mp4"), &DecodeOptions::default()).unwrap();
    let info = decoder.info();
    assert_eq!((info.width, info.height), (DEMO_WIDTH, DEMO_HEIGHT));
    assert_eq!(
        (info.source_width, info.source_height),
        (DEMO_WIDTH, DEMO_HEIGHT)
    );
    assert_eq!(info.rotation_degrees, 0);
    assert_eq!(info.fps, 25.0);
    assert_eq!(info.codec, "h264");
    assert_eq!(info.pixel_format, "yuv420p");
    assert_eq!(info.source_frame_count_estimate, Some(DEMO_FRAMES));
    assert_eq!(info.frame_count_estimate, Some(DEMO_FRAMES));

    let first = decoder.next_frame().unwrap().unwrap();
    assert_eq!(first.source_index, 0);
    assert_eq!(first.time_s, Some(0.0));
    assert_eq!(fnv1a64(&first.data), DEMO_FRAME0_FNV1A64);
    let mut count = 1;
    let mut last_time = 0.0;
    while let Some(frame) = decoder.next_frame().unwrap() {
        assert_eq!(frame.source_index, count);
        assert_eq!((frame.width, frame.height), (DEMO_WIDTH, DEMO_HEIGHT));
        let time = frame.time_s.unwrap();
        assert!(
            (time - last_time - 0.04).abs() < 1e-6,
            "{time} after {last_time}"
        );
        last_time = time;
        count += 1;
    }
    assert_eq!(count, DEMO_FRAMES);
    // After the end it stays at the end.
    assert!(decoder.next_frame().unwrap().is_none());
    assert!(decoder.warnings().is_empty());
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "decoded {count} frames of demo.mp4 in {seconds:.3} s: {:.0} frames/s",
        count as f64 / seconds
    );
}

#[test]
fn frame_range_stride_and_maximum_pick_the_right_frames() {
    let full = demo();
    let options = DecodeOptions {
        start: 10,
        count: Some(20),
        stride: 3,
        ..Default::default()
    };
    let clip = media::open(asset("demo.mp4"), &options).unwrap();
    // Frames 10, 13, ..., 28.
    assert_eq!(clip.frames.frames, 7);
    assert_eq!((clip.first_frame, clip.stride), (10, 3));
    assert_eq!(clip.playback_fps(), 25.0 / 3.0);
    for (i, source) in (10..30).step_by(3).enumerate() {
        assert_eq!(
            frame(&clip.frames, i),
            frame(&full.frames, source),
            "frame {source}"
        );
    }

    let capped = DecodeOptions {
        max_frames: Some(4),
        ..options.clone()
    };
    let clip = media::open(asset("demo.mp4"), &capped).unwrap();
    assert_eq!(clip.frames.frames, 4);
    assert_eq!(frame(&clip.frames, 3), frame(&full.frames, 19));

    let decoder = VideoDecoder::open(asset("demo.mp4"), &capped).unwrap();
    assert_eq!(decoder.info().frame_count_estimate, Some(4));

    let last = DecodeOptions {
        start: 64,
        ..Default::default()
    };
    let clip = media::open(asset("demo.mp4"), &last).unwrap();
    assert_eq!(clip.frames.frames, 1);
    assert_eq!(frame(&clip.frames, 0), frame(&full.frames, 64));

    let past = DecodeOptions {
        start: 65,
        ..Default::default()
    };
    let (error, message) = open_error(&asset("demo.mp4"), &past);
    assert!(
        matches!(
            error,
            MediaError::StartPastEnd {
                start: 65,
                available: 65,
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains("demo.mp4"), "{message}");

    for bad in [
        DecodeOptions {
            stride: 0,
            ..Default::default()
        },
        DecodeOptions {
            count: Some(0),
            ..Default::default()
        },
        DecodeOptions {
            resize_shorter_side: Some(0),
            ..Default::default()
        },
    ] {
        let (error, message) = open_error(&asset("demo.mp4"), &bad);
        assert!(matches!(error, MediaError::InvalidOptions(_)), "{message}");
    }
}

#[test]
fn resize_scales_the_shorter_side_and_keeps_even_sides() {
    let options = DecodeOptions {
        resize_shorter_side: Some(176),
        max_frames: Some(3),
        ..Default::default()
    };
    let clip = media::open(asset("demo.mp4"), &options).unwrap();
    assert_eq!((clip.frames.width, clip.frames.height), (320, 176));
    assert_eq!(clip.frames.frames, 3);
    // One swscale pass, bicubic, exactly as the ffmpeg tool's scale filter does it.
    if let Some(reference) = ffmpeg_cli_rgb(
        &asset("demo.mp4"),
        &["-vf", "scale=320:176", "-frames:v", "3"],
    ) {
        assert_eq!(reference.len(), clip.frames.data.len());
        assert!(
            reference == clip.frames.data,
            "resized frames differ from ffmpeg's"
        );
    }

    let odd = DecodeOptions {
        resize_shorter_side: Some(101),
        max_frames: Some(1),
        ..Default::default()
    };
    let clip = media::open(asset("demo.mp4"), &odd).unwrap();
    // 101 → 102; 640 * 101 / 352 = 183.6 → 184.
    assert_eq!((clip.frames.width, clip.frames.height), (184, 102));

    let image = media::open(
        asset("coffee.png"),
        &DecodeOptions {
            resize_shorter_side: Some(200),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((image.frames.width, image.frames.height), (296, 200));
}

/// A copy of demo.mp4 whose track header carries the display matrix for a clockwise turn of
/// `degrees` (90, 180 or 270), as phones write it: the bytes in the `tkhd` box are patched.
fn rotated_demo(target: &Path, degrees: u32) {
    let mut bytes = std::fs::read(asset("demo.mp4")).unwrap();
    let tkhd = bytes.windows(4).position(|w| w == b"tkhd").unwrap() - 4;
    let version = bytes[tkhd + 8];
    let matrix_at = tkhd + if version == 1 { 60 } else { 48 };
    let one = 0x0001_0000; // 1.0 in 16.16 fixed point
    let (a, b, c, d) = match degrees {
        90 => (0, one, -one, 0),
        180 => (-one, 0, 0, -one),
        270 => (0, -one, one, 0),
        _ => panic!("unsupported test rotation"),
    };
    let matrix: [i32; 9] = [a, b, 0, c, d, 0, 0, 0, 0x4000_0000];
    for (i, value) in matrix.iter().enumerate() {
        bytes[matrix_at + 4 * i..matrix_at + 4 * i + 4].copy_from_slice(&value.to_be_bytes());
    }
    std::fs::write(target, bytes).unwrap();
}

fn rotate_clockwise(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgb.len());
    for y in 0..width {
        for x in 0..height {
            let (from_x, from_y) = (y, height - 1 - x);
            let at = (from_y * width + from_x) * 3;
            out.extend_from_slice(&rgb[at..at + 3]);
        }
    }
    out
}

#[test]
fn rotation_metadata_turns_frames_upright() {
    let scratch = Scratch::new("rotation");
    let rotated = scratch.path("rotated.mp4");
    rotated_demo(&rotated, 90);
    let options = DecodeOptions {
        max_frames: Some(2),
        ..Default::default()
    };
    let clip = media::open(&rotated, &options).unwrap();
    assert_eq!(
        (clip.frames.width, clip.frames.height),
        (DEMO_HEIGHT, DEMO_WIDTH)
    );
    let upright = media::open(asset("demo.mp4"), &options).unwrap();
    assert_eq!(
        frame(&clip.frames, 1),
        rotate_clockwise(frame(&upright.frames, 1), DEMO_WIDTH, DEMO_HEIGHT).as_slice()
    );
    let decoder = VideoDecoder::open(&rotated, &options).unwrap();
    assert_eq!(decoder.info().rotation_degrees, 90);

    // The ffmpeg tool autorotates the same way.
    if let Some(reference) = ffmpeg_cli_rgb(&rotated, &["-frames:v", "2"]) {
        assert_eq!(reference, clip.frames.data);
    }

    // Resizing applies to the displayed (upright) frame.
    let resized = media::open(
        &rotated,
        &DecodeOptions {
            resize_shorter_side: Some(176),
            max_frames: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((resized.frames.width, resized.frames.height), (176, 320));

    let upside_down = scratch.path("half.mp4");
    rotated_demo(&upside_down, 180);
    let clip = media::open(&upside_down, &options).unwrap();
    let mut reversed: Vec<[u8; 3]> = frame(&upright.frames, 0)
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    reversed.reverse();
    assert_eq!(frame(&clip.frames, 0), reversed.concat().as_slice());

    // A quarter turn the other way: the clockwise result turned twice more.
    let counter = scratch.path("counter.mp4");
    rotated_demo(&counter, 270);
    let clip = media::open(&counter, &options).unwrap();
    let expected = rotate_clockwise(frame(&upright.frames, 0), DEMO_WIDTH, DEMO_HEIGHT);
    let expected: Vec<[u8; 3]> = expected
        .chunks_exact(3)
        .rev()
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    assert_eq!(frame(&clip.frames, 0), expected.concat().as_slice());
    if let Some(reference) = ffmpeg_cli_rgb(&counter, &["-frames:v", "2"]) {
        assert_eq!(reference, clip.frames.data);
    }
}

// ---------------------------------------------------------------------------------------------
// Images

#[test]
fn shipped_images_decode_to_rgb8() {
    let astronaut = media::open(asset("astronaut.png"), &DecodeOptions::default()).unwrap();
    assert_eq!(astronaut.kind, MediaKind::Image);
    assert_eq!(
        (
            astronaut.frames.frames,
            astronaut.frames.width,
            astronaut.frames.height
        ),
        (1, 512, 512)
    );
    let coffee = media::open(asset("coffee.png"), &DecodeOptions::default()).unwrap();
    assert_eq!((coffee.frames.width, coffee.frames.height), (592, 400));
    // An independent PNG decoder agrees byte for byte.
    if let Some(reference) = ffmpeg_cli_rgb(&asset("coffee.png"), &[]) {
        assert_eq!(reference, coffee.frames.data);
    }
    let (error, message) = open_error(
        &asset("coffee.png"),
        &DecodeOptions {
            start: 1,
            ..Default::default()
        },
    );
    assert!(
        matches!(error, MediaError::StartPastEnd { .. }),
        "{message}"
    );
}

#[test]
fn sixteen_bit_grey_and_alpha_images_reduce_to_rgb8() {
    let scratch = Scratch::new("images");

    // 16-bit RGB: rounded to the nearest 8-bit value (v / 257).
    let path16 = scratch.path("deep.png");
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(4, 2, |x, y| {
        Rgb([0, 0x8080 + x as u16, 65535 - 257 * y as u16])
    });
    deep.save(&path16).unwrap();
    let clip = media::open(&path16, &DecodeOptions::default()).unwrap();
    assert_eq!((clip.frames.width, clip.frames.height), (4, 2));
    assert_eq!(&clip.frames.data[..6], &[0, 128, 255, 0, 128, 255]);
    assert_eq!(&clip.frames.data[12..15], &[0, 128, 254]);

    // RGBA: alpha dropped, colour kept as stored (even where fully transparent).
    let path_alpha = scratch.path("alpha.png");
    let alpha: ImageBuffer<Rgba<u8>, Vec<u8>> =
        ImageBuffer::from_fn(3, 1, |x, _| Rgba([200, 100, 50, [255, 128, 0][x as usize]]));
    alpha.save(&path_alpha).unwrap();
    let clip = media::open(&path_alpha, &DecodeOptions::default()).unwrap();
    assert_eq!(
        clip.frames.data,
        vec![200, 100, 50, 200, 100, 50, 200, 100, 50]
    );

    // Grey: replicated to three channels.
    let path_grey = scratch.path("grey.png");
    image::GrayImage::from_raw(2, 1, vec![7, 250])
        .unwrap()
        .save(&path_grey)
        .unwrap();
    let clip = media::open(&path_grey, &DecodeOptions::default()).unwrap();
    assert_eq!(clip.frames.data, vec![7, 7, 7, 250, 250, 250]);
}

#[test]
fn lossless_image_formats_decode_exactly() {
    let scratch = Scratch::new("formats");
    let pattern: image::RgbImage = ImageBuffer::from_fn(37, 23, |x, y| {
        Rgb([(x * 7) as u8, (y * 11) as u8, (x * y) as u8])
    });
    for name in [
        "pattern.png",
        "pattern.webp",
        "pattern.tiff",
        "pattern.bmp",
        "pattern.bin",
    ] {
        let path = scratch.path(name);
        let format = match name.rsplit('.').next().unwrap() {
            "bin" => image::ImageFormat::Png, // a PNG with a wrong name: recognised by content
            other => image::ImageFormat::from_extension(other).unwrap(),
        };
        pattern.save_with_format(&path, format).unwrap();
        let clip = media::open(&path, &DecodeOptions::default()).unwrap();
        assert_eq!(clip.kind, MediaKind::Image, "{name}");
        assert_eq!(clip.frames.data, pattern.as_raw().clone(), "{name}");
    }
}

/// A minimal big-endian EXIF (TIFF) block holding only Orientation = `orientation`.
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec(); // byte order, magic, IFD at offset 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    tiff
}

/// Inserts an APP1 "Exif" segment right after the JPEG's start-of-image marker, as cameras do.
fn with_exif(jpeg: &[u8], tiff: &[u8]) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(tiff);
    let mut out = vec![0xff, 0xd8, 0xff, 0xe1];
    out.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn jpeg_exif_orientation_is_applied() {
    let scratch = Scratch::new("exif");
    // Stored 32x16: left half red, right half blue. Orientation 6 means "rotate 90° clockwise to
    // display", so the upright picture is 16x32 with red on top.
    let stored: image::RgbImage = ImageBuffer::from_fn(32, 16, |x, _| {
        if x < 16 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&stored)
        .unwrap();
    let path = scratch.path("phone.jpg");
    std::fs::write(&path, with_exif(&jpeg, &exif_orientation(6))).unwrap();

    let clip = media::open(&path, &DecodeOptions::default()).unwrap();
    assert_eq!((clip.frames.width, clip.frames.height), (16, 32));
    let pixel = |x: usize, y: usize| {
        let at = (y * 16 + x) * 3;
        [
            clip.frames.data[at],
            clip.frames.data[at + 1],
            clip.frames.data[at + 2],
        ]
    };
    let (top, bottom) = (pixel(8, 4), pixel(8, 27));
    assert!(top[0] > 200 && top[2] < 60, "top should be red: {top:?}");
    assert!(
        bottom[2] > 200 && bottom[0] < 60,
        "bottom should be blue: {bottom:?}"
    );

    // Without the EXIF block the same JPEG stays as stored.
    let plain = scratch.path("plain.jpg");
    std::fs::write(&plain, &jpeg).unwrap();
    let clip = media::open(&plain, &DecodeOptions::default()).unwrap();
    assert_eq!((clip.frames.width, clip.frames.height), (32, 16));
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Every byte value in every channel, at an odd size.
fn synthetic_clip(frames: usize, width: usize, height: usize) -> RgbFrames {
    let data = (0..frames * width * height * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    RgbFrames::new(frames, height, width, data).unwrap()
}

#[test]
fn ffv1_mkv_round_trips_exactly() {
    let scratch = Scratch::new("ffv1");
    let demo = media::open(
        asset("demo.mp4"),
        &DecodeOptions {
            max_frames: Some(9),
            ..Default::default()
        },
    )
    .unwrap();
    let path = scratch.path("lossless.mkv");
    let written = demo.write_to(&path).unwrap();
    assert_eq!(written.codec, "ffv1");
    assert_eq!(written.files, vec![path.clone()]);
    let back = media::open(&path, &DecodeOptions::default()).unwrap();
    assert_eq!(back.frames, demo.frames, "FFV1 must keep every RGB value");
    assert_eq!(back.fps, 25.0);

    // Noise covering all byte values, at an odd size.
    let noise = synthetic_clip(3, 33, 17);
    let path = scratch.path("noise.mkv");
    media::write(&noise, 29.97, &path, &[]).unwrap();
    let back = media::open(&path, &DecodeOptions::default()).unwrap();
    assert_eq!(back.frames, noise);
    assert!((back.fps - 29.97).abs() < 1e-9, "{}", back.fps);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&scratch.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn png_image_and_numbered_sequence_round_trip_exactly() {
    let scratch = Scratch::new("png");
    let clip = synthetic_clip(3, 31, 9);
    let target = scratch.path("recon.png");
    let written = media::write(&clip, 25.0, &target, &[]).unwrap();
    assert_eq!(written.codec, "png");
    let expected: Vec<PathBuf> = (0..3)
        .map(|i| scratch.path(&format!("recon_{i:05}.png")))
        .collect();
    assert_eq!(written.files, expected);
    assert!(!target.exists(), "a sequence writes only numbered files");
    for (i, file) in expected.iter().enumerate() {
        let back = media::open(file, &DecodeOptions::default()).unwrap();
        assert_eq!(back.frames.data.as_slice(), frame(&clip, i), "frame {i}");
    }

    let single = synthetic_clip(1, 8, 5);
    let target = scratch.path("still.png");
    let written = media::write(&single, 25.0, &target, &[]).unwrap();
    assert_eq!(written.files, vec![target.clone()]);
    assert_eq!(
        media::open(&target, &DecodeOptions::default())
            .unwrap()
            .frames,
        single
    );
}

#[test]
fn mp4_export_reads_back_with_high_psnr() {
    let scratch = Scratch::new("mp4");
    let demo = media::open(
        asset("demo.mp4"),
        &DecodeOptions {
            max_frames: Some(17),
            ..Default::default()
        },
    )
    .unwrap();
    let path = scratch.path("recon.mp4");
    let written = media::write(&demo.frames, demo.fps, &path, &[]).unwrap();
    let encoder = available_mp4_encoder().unwrap();
    assert_eq!(written.codec, encoder);
    eprintln!("MP4 encoder in this FFmpeg build: {encoder}");
    assert!(written.notes.is_empty());
    let back = media::open(&path, &DecodeOptions::default()).unwrap();
    assert_eq!(
        (back.frames.frames, back.frames.width, back.frames.height),
        (17, DEMO_WIDTH, DEMO_HEIGHT)
    );
    assert_eq!(back.fps, 25.0);
    assert!(back.warnings.is_empty(), "{:?}", back.warnings);
    let quality = psnr(&back.frames.data, &demo.frames.data);
    eprintln!("MP4 round trip PSNR: {quality:.2} dB");
    assert!(quality > 38.0, "PSNR {quality:.2} dB");

    // Odd sizes are padded to even ones for 4:2:0, and say so.
    let odd = synthetic_clip(2, 33, 17);
    let path = scratch.path("odd.mp4");
    let written = media::write(&odd, 10.0, &path, &[]).unwrap();
    assert!(
        written.notes.iter().any(|n| n.contains("34x18")),
        "{:?}",
        written.notes
    );
    let back = media::open(&path, &DecodeOptions::default()).unwrap();
    assert_eq!(
        (back.frames.frames, back.frames.width, back.frames.height),
        (2, 34, 18)
    );
}

#[test]
fn side_by_side_burns_in_labels() {
    let demo = media::open(
        asset("demo.mp4"),
        &DecodeOptions {
            max_frames: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let composite = side_by_side(&demo.frames, &demo.frames, |i| PanelLabels {
        original: format!("original  frame {i}"),
        reconstruction: format!("DV8x16x16  frame {i}  PSNR 31.27 dB"),
    })
    .unwrap();
    let banner = media::BANNER_HEIGHT;
    assert_eq!(composite.frames, 2);
    assert_eq!(composite.width, 2 * DEMO_WIDTH + 4);
    assert_eq!(composite.height, DEMO_HEIGHT + banner);
    let row_bytes = composite.width * 3;
    let out = frame(&composite, 1);
    let source = frame(&demo.frames, 1);
    // Both panels hold the frame unchanged below the banner.
    for y in [0, 100, DEMO_HEIGHT - 1] {
        let row = &out[(banner + y) * row_bytes..(banner + y + 1) * row_bytes];
        let original_row = &source[y * DEMO_WIDTH * 3..(y + 1) * DEMO_WIDTH * 3];
        assert_eq!(&row[..DEMO_WIDTH * 3], original_row);
        assert_eq!(&row[(DEMO_WIDTH + 4) * 3..], original_row);
    }
    // The banner holds white text on both sides, and the labels differ between frames.
    let banner_bytes = &out[..banner * row_bytes];
    let white_in = |from: usize, to: usize| {
        banner_bytes
            .chunks_exact(row_bytes)
            .flat_map(|row| row[from * 3..to * 3].chunks_exact(3))
            .filter(|p| p == &[255, 255, 255])
            .count()
    };
    assert!(white_in(0, DEMO_WIDTH) > 100);
    assert!(white_in(DEMO_WIDTH + 4, 2 * DEMO_WIDTH + 4) > 100);
    assert_ne!(&frame(&composite, 0)[..banner * row_bytes], banner_bytes);

    let shorter = media::open(
        asset("demo.mp4"),
        &DecodeOptions {
            max_frames: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let mismatch = side_by_side(&demo.frames, &shorter.frames, |_| PanelLabels::default());
    assert!(matches!(mismatch, Err(MediaError::InvalidFrames(_))));
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn missing_and_empty_files_are_named_in_the_error() {
    let scratch = Scratch::new("missing");
    let missing = scratch.path("nowhere.mp4");
    let (error, message) = open_error(&missing, &DecodeOptions::default());
    assert!(matches!(error, MediaError::NotFound { .. }), "{message}");
    assert!(
        message.contains("nowhere.mp4") && message.contains("no such file"),
        "{message}"
    );
    assert!(no_panic("VideoDecoder::open", || VideoDecoder::open(
        &missing,
        &DecodeOptions::default()
    ))
    .is_err());

    for name in ["empty.mp4", "empty.png"] {
        let empty = scratch.path(name);
        std::fs::write(&empty, b"").unwrap();
        let (error, message) = open_error(&empty, &DecodeOptions::default());
        assert!(matches!(error, MediaError::EmptyFile { .. }), "{message}");
        assert!(
            message.contains(name) && message.contains("empty"),
            "{message}"
        );
    }
}

#[test]
fn truncated_mp4_keeps_the_frames_that_decoded() {
    let scratch = Scratch::new("truncated");
    let bytes = std::fs::read(asset("demo.mp4")).unwrap();
    let half = scratch.path("half.mp4");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let clip = no_panic("open", || media::open(&half, &DecodeOptions::default())).unwrap();
    assert!(
        clip.frames.frames > 5 && clip.frames.frames < DEMO_FRAMES,
        "{} frames",
        clip.frames.frames
    );
    assert!(
        clip.warnings.iter().any(|w| w.contains("truncated")),
        "{:?}",
        clip.warnings
    );
    eprintln!(
        "half of demo.mp4: {} frames, warnings {:?}",
        clip.frames.frames, clip.warnings
    );
    let full = demo();
    assert_eq!(frame(&clip.frames, 0), frame(&full.frames, 0));

    // The index survives but not one frame's data: a clear error instead.
    let header_only = scratch.path("header_only.mp4");
    std::fs::write(&header_only, &bytes[..2000]).unwrap();
    let (error, message) = open_error(&header_only, &DecodeOptions::default());
    assert!(matches!(error, MediaError::NoFrames { .. }), "{message}");
    assert!(message.contains("header_only.mp4"), "{message}");

    // Cut inside the index: FFmpeg cannot open it at all.
    let no_index = scratch.path("no_index.mp4");
    std::fs::write(&no_index, &bytes[..600]).unwrap();
    let (error, message) = open_error(&no_index, &DecodeOptions::default());
    assert!(matches!(error, MediaError::NotMedia { .. }), "{message}");
}

#[test]
fn non_media_files_fail_with_the_reason() {
    let scratch = Scratch::new("garbage");
    let text = b"This is not a video, just a note someone renamed.\n".repeat(40);

    let fake_video = scratch.path("notes.mp4");
    std::fs::write(&fake_video, &text).unwrap();
    let (error, message) = open_error(&fake_video, &DecodeOptions::default());
    assert!(matches!(error, MediaError::NotMedia { .. }), "{message}");
    assert!(message.contains("notes.mp4"), "{message}");

    let fake_image = scratch.path("notes.png");
    std::fs::write(&fake_image, &text).unwrap();
    let (error, message) = open_error(&fake_image, &DecodeOptions::default());
    assert!(
        matches!(error, MediaError::UnsupportedImage { .. }),
        "{message}"
    );
    assert!(
        message.contains("notes.png") && message.contains("unsupported image format"),
        "{message}"
    );

    // A cut PNG: the header is fine, the pixels are missing.
    let png = std::fs::read(asset("coffee.png")).unwrap();
    let cut = scratch.path("cut.png");
    std::fs::write(&cut, &png[..png.len() / 3]).unwrap();
    let (error, message) = open_error(&cut, &DecodeOptions::default());
    assert!(matches!(error, MediaError::BadImage { .. }), "{message}");
    assert!(message.contains("cut.png"), "{message}");

    // Audio only: says which streams there are.
    let wav = scratch.path("tone.wav");
    std::fs::write(&wav, wav_bytes(8000)).unwrap();
    let (error, message) = open_error(&wav, &DecodeOptions::default());
    assert!(
        matches!(error, MediaError::NoVideoStream { .. }),
        "{message}"
    );
    assert!(
        message.contains("tone.wav") && message.contains("audio pcm_s16le"),
        "{message}"
    );
}

/// One second of 16-bit mono silence at `rate` Hz.
fn wav_bytes(rate: u32) -> Vec<u8> {
    let data_len = rate * 2;
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.resize(out.len() + data_len as usize, 0);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `width`x`height` (8-bit RGB), with a tiny pixel stream: enough for a
/// decoder to read the size.
fn png_with_size(width: u32, height: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut out = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    };
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &header));
    // zlib stream of one stored empty block.
    png.extend(chunk(
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01,
        ],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn zero_sized_and_enormous_images_are_refused() {
    let scratch = Scratch::new("sizes");
    let zero = scratch.path("zero.png");
    std::fs::write(&zero, png_with_size(0, 0)).unwrap();
    let (error, message) = open_error(&zero, &DecodeOptions::default());
    assert!(
        matches!(error, MediaError::ZeroFrameSize { .. }),
        "{message}"
    );
    assert!(
        message.contains("zero.png") && message.contains("frame size 0x0"),
        "{message}"
    );

    let huge = scratch.path("huge.png");
    std::fs::write(&huge, png_with_size(40000, 30000)).unwrap();
    let (error, message) = open_error(&huge, &DecodeOptions::default());
    assert!(
        matches!(
            error,
            MediaError::FrameTooLarge {
                width: 40000,
                height: 30000,
                ..
            }
        ),
        "{message}"
    );
    assert_eq!(
        message,
        format!(
            "`{}`: frame 40000x30000 is larger than the 16384 px limit",
            huge.display()
        )
    );
}

#[test]
fn outputs_never_overwrite_inputs() {
    let scratch = Scratch::new("overwrite");
    let input = scratch.path("input.mkv");
    let clip = synthetic_clip(2, 16, 16);
    media::write(&clip, 25.0, &input, &[]).unwrap();
    let before = std::fs::read(&input).unwrap();
    let decoded = media::open(&input, &DecodeOptions::default()).unwrap();

    let refused = no_panic("write_to", || decoded.write_to(&input));
    assert!(
        matches!(
            refused,
            Err(MediaError::Write(WriteError::WouldOverwriteInput(_)))
        ),
        "{refused:?}"
    );
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("input.mkv") && message.contains("overwrite"),
        "{message}"
    );
    // The same file by another spelling of its path.
    let sneaky = scratch.0.join(".").join("input.mkv");
    assert!(media::write(&clip, 25.0, &sneaky, &[input.as_path()]).is_err());
    assert_eq!(
        std::fs::read(&input).unwrap(),
        before,
        "the input must be untouched"
    );

    // A PNG sequence may not land on an input either.
    let frame_file = numbered_png_path(&scratch.path("seq.png"), 1);
    std::fs::write(&frame_file, b"precious").unwrap();
    let result = media::write(
        &clip,
        25.0,
        scratch.path("seq.png"),
        &[frame_file.as_path()],
    );
    assert!(result.is_err(), "{result:?}");
    assert_eq!(std::fs::read(&frame_file).unwrap(), b"precious");

    let unsupported = media::write(&clip, 25.0, scratch.path("out.avi"), &[]);
    assert!(
        matches!(unsupported, Err(MediaError::UnsupportedOutput { .. })),
        "{unsupported:?}"
    );
    let bad_fps = media::write(&clip, 0.0, scratch.path("out.mp4"), &[]);
    assert!(
        matches!(bad_fps, Err(MediaError::InvalidFps { .. })),
        "{bad_fps:?}"
    );
    let inconsistent = RgbFrames {
        frames: 2,
        height: 16,
        width: 16,
        data: vec![0; 10],
    };
    let result = no_panic("write", || {
        media::write(&inconsistent, 25.0, scratch.path("x.mkv"), &[])
    });
    assert!(
        matches!(result, Err(MediaError::InvalidFrames(_))),
        "{result:?}"
    );
}

/// A clip too long to hold is refused before decoding when the container lists its frames, and the
/// message says what to do; under the limit it opens as usual.
#[test]
fn clips_too_large_to_hold_are_refused_before_decoding() {
    let clip = demo();
    let path = asset("demo.mp4");
    let frame_bytes = (clip.frames.width * clip.frames.height * 3) as u64;
    let whole = clip.frames.frames as u64 * frame_bytes;
    let error = no_panic("media::open_within", || {
        media::open_within(&path, &DecodeOptions::default(), whole - 1)
    })
    .expect_err("the clip is one byte over the limit");
    let message = error.to_string();
    assert!(
        matches!(error, MediaError::ClipTooLarge { frames: 65, .. }),
        "{message}"
    );
    assert!(
        message.contains("65 frames of 640x352") && message.contains("--frames"),
        "{message}"
    );
    let capped = DecodeOptions {
        max_frames: Some(10),
        ..DecodeOptions::default()
    };
    let opened = media::open_within(&path, &capped, 10 * frame_bytes).unwrap();
    assert_eq!(opened.frames.frames, 10);
    assert_eq!(
        media::open_within(&path, &DecodeOptions::default(), whole)
            .unwrap()
            .frames,
        clip.frames
    );
}
