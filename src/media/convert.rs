//! Pixel conversion through FFmpeg's swscale: any decoded pixel format to packed RGB8 (optionally
//! resized), and packed RGB8 into frames an encoder takes.

use ffmpeg_next as ffmpeg;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::util::color;
use ffmpeg::util::frame;

/// swscale's filter for conversion and resizing. Bicubic is the `ffmpeg` tool's default, so a frame
/// decoded here matches `ffmpeg -i clip -pix_fmt rgb24` pixel for pixel.
pub const SCALE_FLAGS: scaling::Flags = scaling::Flags::BICUBIC;

/// What a conversion context was built for; a change (mid-stream resolution or format switch)
/// needs a new one.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SourceShape {
    format: Pixel,
    width: u32,
    height: u32,
    space: color::Space,
    range: color::Range,
}

/// Converts decoded frames of any pixel format to tightly packed RGB8 of a fixed size.
pub struct RgbConverter {
    width: u32,
    height: u32,
    context: Option<(SourceShape, scaling::Context)>,
}

impl RgbConverter {
    /// A converter whose output is always `width`x`height`.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            context: None,
        }
    }

    /// The frame as packed RGB8 (`height` rows of `width * 3` bytes), scaled to the fixed size.
    pub fn rgb_from_frame(&mut self, frame: &frame::Video) -> Result<Vec<u8>, String> {
        let shape = SourceShape {
            format: frame.format(),
            width: frame.width(),
            height: frame.height(),
            space: frame.color_space(),
            range: frame.color_range(),
        };
        let (width, height) = (self.width, self.height);
        let context = match &mut self.context {
            Some((built_for, context)) if *built_for == shape => context,
            slot => {
                let mut context = scaling::Context::get(
                    shape.format,
                    shape.width,
                    shape.height,
                    Pixel::RGB24,
                    width,
                    height,
                    SCALE_FLAGS,
                )
                .map_err(|e| {
                    format!(
                        "cannot convert {}x{} {} frames to RGB: {e}",
                        shape.width,
                        shape.height,
                        pixel_format_name(shape.format)
                    )
                })?;
                use_colour_matrix_like_ffmpeg_tool(&mut context, shape.space, shape.range);
                &mut slot.insert((shape, context)).1
            }
        };
        let mut rgb = frame::Video::empty();
        context
            .run(frame, &mut rgb)
            .map_err(|e| format!("converting a frame to RGB failed: {e}"))?;
        packed_rgb(&rgb, width as usize, height as usize)
    }
}

/// Copies the visible pixels of an RGB24 frame, dropping the row padding FFmpeg adds for alignment.
fn packed_rgb(frame: &frame::Video, width: usize, height: usize) -> Result<Vec<u8>, String> {
    if frame.planes() == 0 || frame.format() != Pixel::RGB24 {
        return Err("the converted frame holds no RGB pixels".into());
    }
    let stride = frame.stride(0);
    let row_bytes = width * 3;
    let mut packed = Vec::with_capacity(row_bytes * height);
    for row in frame.data(0).chunks(stride.max(1)).take(height) {
        let visible = row
            .get(..row_bytes)
            .ok_or("the converted frame is narrower than expected")?;
        packed.extend_from_slice(visible);
    }
    if packed.len() != row_bytes * height {
        return Err("the converted frame is shorter than expected".into());
    }
    Ok(packed)
}

/// Selects the YUV→RGB matrix and range from the frame's own tags, as the `ffmpeg` tool's scale
/// filter does (FFmpeg 5.1 `vf_scale`, `in_color_matrix=auto`). Without this swscale assumes BT.601
/// limited range for everything, and BT.709 or full-range video comes out with shifted colours.
fn use_colour_matrix_like_ffmpeg_tool(
    context: &mut scaling::Context,
    space: color::Space,
    range: color::Range,
) {
    use ffmpeg::ffi;
    let tagged = ffi::AVColorSpace::from(space) as i32;
    // The same fallback as vf_scale: untagged or unknown matrices are treated as BT.601.
    let matrix = if (1..=10).contains(&tagged) && tagged != 8 {
        tagged
    } else {
        ffi::SWS_CS_ITU601
    };
    let (mut inverse_table, mut table) = (std::ptr::null_mut(), std::ptr::null_mut());
    let (mut source_full, mut destination_full) = (0, 0);
    let (mut brightness, mut contrast, mut saturation) = (0, 0, 0);
    // SAFETY: the context pointer is valid for the lifetime of `context`; the out-pointers point to
    // locals; the coefficient table returned by `sws_getCoefficients` is a static inside swscale,
    // which `sws_setColorspaceDetails` copies.
    unsafe {
        let sws = context.as_mut_ptr();
        if ffi::sws_getColorspaceDetails(
            sws,
            &mut inverse_table,
            &mut source_full,
            &mut table,
            &mut destination_full,
            &mut brightness,
            &mut contrast,
            &mut saturation,
        ) < 0
        {
            return;
        }
        if range != color::Range::Unspecified {
            source_full = i32::from(range == color::Range::JPEG);
        }
        let coefficients = ffi::sws_getCoefficients(matrix);
        // Returns -1 when the conversion has no YUV side (RGB to RGB); nothing to set then.
        let _ = ffi::sws_setColorspaceDetails(
            sws,
            coefficients,
            source_full,
            coefficients,
            destination_full,
            brightness,
            contrast,
            saturation,
        );
    }
}

/// Resizes a packed RGB8 image with swscale (the same filter as video frames get).
pub fn resize_rgb(
    rgb: &[u8],
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
) -> Result<Vec<u8>, String> {
    if (width, height) == (new_width, new_height) {
        return Ok(rgb.to_vec());
    }
    let source = rgb_frame_from_packed(rgb, width, height)?;
    let mut converter = RgbConverter::new(to_u32(new_width)?, to_u32(new_height)?);
    converter.rgb_from_frame(&source)
}

/// An RGB24 frame holding a packed `width`x`height` RGB8 image.
pub fn rgb_frame_from_packed(
    rgb: &[u8],
    width: usize,
    height: usize,
) -> Result<frame::Video, String> {
    let row_bytes = width * 3;
    if width == 0 || height == 0 || rgb.len() != row_bytes * height {
        return Err(format!(
            "{} bytes are not a {width}x{height} RGB image",
            rgb.len()
        ));
    }
    let mut frame = frame::Video::new(Pixel::RGB24, to_u32(width)?, to_u32(height)?);
    if frame.planes() == 0 {
        return Err("FFmpeg could not allocate a frame".into());
    }
    let stride = frame.stride(0);
    for (frame_row, row) in frame
        .data_mut(0)
        .chunks_mut(stride.max(1))
        .zip(rgb.chunks_exact(row_bytes))
    {
        frame_row
            .get_mut(..row_bytes)
            .ok_or("FFmpeg allocated a frame narrower than asked")?
            .copy_from_slice(row);
    }
    Ok(frame)
}

/// Grows a packed RGB8 image to `new_width`x`new_height` (not smaller) by repeating its last
/// column and row, for codecs that need even sizes: repeated edges cost fewer bits than black.
pub fn pad_by_repeating_edges(
    rgb: &[u8],
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
) -> Vec<u8> {
    let row_bytes = width * 3;
    let rows: Vec<&[u8]> = rgb.chunks_exact(row_bytes.max(1)).take(height).collect();
    let mut padded = Vec::with_capacity(new_width * new_height * 3);
    for y in 0..new_height {
        let Some(row) = rows.get(y.min(height.saturating_sub(1))) else {
            break;
        };
        padded.extend_from_slice(row);
        let last_pixel = row.get(row_bytes.saturating_sub(3)..).unwrap_or(&[]);
        for _ in width..new_width {
            padded.extend_from_slice(last_pixel);
        }
    }
    padded
}

/// Converts a frame to another pixel format at the same size (for encoders).
pub fn convert_frame(
    context: &mut Option<scaling::Context>,
    frame: &frame::Video,
    format: Pixel,
) -> Result<frame::Video, String> {
    let context = match context {
        Some(context) => context,
        slot => slot.insert(
            scaling::Context::get(
                frame.format(),
                frame.width(),
                frame.height(),
                format,
                frame.width(),
                frame.height(),
                SCALE_FLAGS,
            )
            .map_err(|e| format!("cannot convert RGB to {}: {e}", pixel_format_name(format)))?,
        ),
    };
    let mut converted = frame::Video::empty();
    context.run(frame, &mut converted).map_err(|e| {
        format!(
            "converting a frame to {} failed: {e}",
            pixel_format_name(format)
        )
    })?;
    Ok(converted)
}

/// FFmpeg's name for a pixel format (`yuv420p`), or its Rust name if FFmpeg has none.
pub fn pixel_format_name(format: Pixel) -> String {
    format
        .descriptor()
        .map(|d| d.name().to_string())
        .unwrap_or_else(|| format!("{format:?}"))
}

pub fn to_u32(value: usize) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("size {value} does not fit FFmpeg's 32-bit sizes"))
}
