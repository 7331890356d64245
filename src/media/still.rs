//! Still images (PNG, JPEG, WebP, TIFF, BMP) through the `image` crate, as 1-frame clips.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use super::convert::resize_rgb;
use super::geometry::{check_frame_size, size_for_shorter_side, MAX_FRAME_SIDE};
use super::{Clip, DecodeOptions, MediaError, MediaKind, RgbFrames};

/// The image formats Tokenscope reads itself; anything else goes to FFmpeg.
const IMAGE_FORMATS: [ImageFormat; 5] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::WebP,
    ImageFormat::Tiff,
    ImageFormat::Bmp,
];

/// File name extensions that promise one of [`IMAGE_FORMATS`].
const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "jpe", "webp", "tif", "tiff", "bmp"];

/// Whether the file is an image, by its first bytes or else by its extension. A file named like an
/// image but holding something else is still treated as an image, so it fails with "unsupported
/// image format" rather than a confusing video error.
pub fn is_image(path: &Path, head: &[u8]) -> bool {
    let by_content = image::guess_format(head).is_ok_and(|f| IMAGE_FORMATS.contains(&f));
    let by_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
    by_content || by_name
}

/// Decodes an image into a 1-frame clip of RGB8.
///
/// - 16-bit and floating-point samples are rounded to 8 bits; grey is replicated to RGB.
/// - Alpha is dropped (the colour channels are kept as stored, not composited), as
///   `PIL.Image.convert("RGB")` and NVIDIA's Cosmos scripts do, so metrics stay comparable with
///   theirs.
/// - EXIF orientation (JPEG, PNG, WebP, TIFF) is applied, so the frame is upright as viewers show it.
/// - Colour profiles are not applied: pixels are taken as sRGB.
pub fn open_image(path: &Path, head: &[u8], options: &DecodeOptions) -> Result<Clip, MediaError> {
    // The PNG decoder rejects a zero size with a vague "invalid dimensions"; say what it is.
    if let Some((width, height)) = declared_png_size(head) {
        check_frame_size(path, width, height)?;
    }
    if options.start > 0 {
        return Err(MediaError::StartPastEnd {
            path: path.to_path_buf(),
            start: options.start,
            available: 1,
        });
    }
    let file = File::open(path).map_err(|e| MediaError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| MediaError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    match reader.format() {
        Some(format) if IMAGE_FORMATS.contains(&format) => {}
        Some(format) => {
            return Err(MediaError::UnsupportedImage {
                path: path.to_path_buf(),
                reason: format!("the content is {format:?}"),
            })
        }
        None => {
            return Err(MediaError::UnsupportedImage {
                path: path.to_path_buf(),
                reason: "the content is not a known image".into(),
            })
        }
    }
    // The size is checked here, with our own message, before any pixel is decoded.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(|e| image_error(path, e))?;
    let (width, height) = decoder.dimensions();
    check_frame_size(path, width as usize, height as usize)?;
    let mut warnings = Vec::new();
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        warnings.push(format!("ignored unreadable EXIF orientation: {e}"));
        image::metadata::Orientation::NoTransforms
    });
    // Room for the largest allowed frame at 4 channels of 32-bit floats, and no more.
    let max_alloc = (MAX_FRAME_SIDE * MAX_FRAME_SIDE * 16) as u64;
    let mut limits = Limits::no_limits();
    limits.max_alloc = Some(max_alloc);
    decoder
        .set_limits(limits)
        .map_err(|e| image_error(path, e))?;
    let mut decoded = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))?;
    decoded.apply_orientation(orientation);
    let rgb = decoded.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    let mut data = rgb.into_raw();
    let (mut out_width, mut out_height) = (width, height);
    if let Some(side) = options.resize_shorter_side {
        (out_width, out_height) = size_for_shorter_side(width, height, side);
        check_frame_size(path, out_width, out_height)?;
        data = resize_rgb(&data, width, height, out_width, out_height).map_err(|reason| {
            MediaError::BadImage {
                path: path.to_path_buf(),
                reason,
            }
        })?;
    }
    let frames =
        RgbFrames::new(1, out_height, out_width, data).map_err(|e| MediaError::BadImage {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(Clip {
        frames,
        fps: 1.0,
        source: path.to_path_buf(),
        first_frame: 0,
        stride: 1,
        kind: MediaKind::Image,
        warnings,
    })
}

/// The size in a PNG's header, which always comes first (signature, then the IHDR chunk).
fn declared_png_size(head: &[u8]) -> Option<(usize, usize)> {
    if !head.starts_with(b"\x89PNG\r\n\x1a\n") || head.get(12..16) != Some(b"IHDR") {
        return None;
    }
    let be_u32 = |at: usize| {
        head.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_be_bytes(b) as usize)
    };
    Some((be_u32(16)?, be_u32(20)?))
}

fn image_error(path: &Path, error: ImageError) -> MediaError {
    let path = path.to_path_buf();
    match error {
        ImageError::Unsupported(e) => MediaError::UnsupportedImage {
            path,
            reason: e.to_string(),
        },
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            MediaError::BadImage {
                path,
                reason: "the file ends early (truncated?)".into(),
            }
        }
        ImageError::IoError(e) => MediaError::Unreadable {
            path,
            reason: e.to_string(),
        },
        other => MediaError::BadImage {
            path,
            reason: other.to_string(),
        },
    }
}
