//! Frame sizes, rotation and the limits every decoded frame is checked against.

use std::path::Path;

use super::MediaError;

/// The largest frame side Tokenscope accepts (decoded or after resizing). Larger frames would need
/// gigabytes per clip and far more for the tokenizer's activations.
pub const MAX_FRAME_SIDE: usize = 16384;

/// Refuses frames with no pixels or with a side over [`MAX_FRAME_SIDE`].
pub fn check_frame_size(path: &Path, width: usize, height: usize) -> Result<(), MediaError> {
    if width == 0 || height == 0 {
        return Err(MediaError::ZeroFrameSize {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    if width > MAX_FRAME_SIDE || height > MAX_FRAME_SIDE {
        return Err(MediaError::FrameTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: MAX_FRAME_SIDE,
        });
    }
    Ok(())
}

/// The size of a `width`x`height` frame whose shorter side is scaled to `shorter_side`, keeping the
/// aspect ratio. Both sides are rounded to even numbers: 4:2:0 video needs them, and the
/// tokenizers' padding to multiples of 16 wastes less.
pub fn size_for_shorter_side(width: usize, height: usize, shorter_side: usize) -> (usize, usize) {
    let even = |x: f64| (((x / 2.0).round() as usize) * 2).max(2);
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let scaled_long = long as f64 * shorter_side as f64 / short.max(1) as f64;
    let (new_short, new_long) = (even(shorter_side as f64), even(scaled_long));
    if width <= height {
        (new_short, new_long)
    } else {
        (new_long, new_short)
    }
}

/// A clockwise rotation by a multiple of 90 degrees, as a player applies it for display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rotation {
    #[default]
    None,
    Clockwise90,
    Half,
    Clockwise270,
}

impl Rotation {
    /// The rotation for a clockwise angle in degrees, if it is (within a degree) a multiple of 90.
    pub fn from_clockwise_degrees(degrees: f64) -> Option<Rotation> {
        if !degrees.is_finite() {
            return None;
        }
        let turned = degrees.rem_euclid(360.0);
        let quarter = (turned / 90.0).round();
        if (turned - quarter * 90.0).abs() > 1.0 {
            return None;
        }
        match quarter as i64 % 4 {
            0 => Some(Rotation::None),
            1 => Some(Rotation::Clockwise90),
            2 => Some(Rotation::Half),
            _ => Some(Rotation::Clockwise270),
        }
    }

    pub fn degrees(self) -> u32 {
        match self {
            Rotation::None => 0,
            Rotation::Clockwise90 => 90,
            Rotation::Half => 180,
            Rotation::Clockwise270 => 270,
        }
    }

    /// Whether width and height trade places.
    pub fn swaps_sides(self) -> bool {
        matches!(self, Rotation::Clockwise90 | Rotation::Clockwise270)
    }

    /// The displayed size of a stored `width`x`height` frame.
    pub fn displayed_size(self, width: usize, height: usize) -> (usize, usize) {
        if self.swaps_sides() {
            (height, width)
        } else {
            (width, height)
        }
    }

    /// The stored size that displays as `width`x`height`.
    pub fn stored_size(self, width: usize, height: usize) -> (usize, usize) {
        // A quarter turn is its own inverse as far as sizes go.
        self.displayed_size(width, height)
    }

    /// Rotates a tightly packed RGB8 frame; returns it unchanged for [`Rotation::None`].
    pub fn apply(self, rgb: Vec<u8>, width: usize, height: usize) -> Vec<u8> {
        if self == Rotation::None {
            return rgb;
        }
        let pixel = |x: usize, y: usize| {
            let at = (y * width + x) * 3;
            rgb.get(at..at + 3).unwrap_or(&[0, 0, 0])
        };
        let (out_width, out_height) = self.displayed_size(width, height);
        let mut out = Vec::with_capacity(rgb.len());
        for y in 0..out_height {
            for x in 0..out_width {
                // Where the output pixel (x, y) comes from in the stored frame.
                let (from_x, from_y) = match self {
                    Rotation::Clockwise90 => (y, height - 1 - x),
                    Rotation::Half => (width - 1 - x, height - 1 - y),
                    Rotation::Clockwise270 => (width - 1 - y, x),
                    Rotation::None => (x, y),
                };
                out.extend_from_slice(pixel(from_x, from_y));
            }
        }
        out
    }
}

/// The clockwise display rotation in degrees encoded in an FFmpeg display matrix (nine 32-bit
/// integers in 16.16 and 2.30 fixed point, native byte order), computed as FFmpeg's
/// `av_display_rotation_get` and the `ffmpeg` tool's autorotation do; and whether it mirrors.
pub fn display_matrix_rotation(bytes: &[u8]) -> Option<(f64, bool)> {
    let mut values = bytes
        .chunks_exact(4)
        .map(|c| <[u8; 4]>::try_from(c).map(i32::from_ne_bytes));
    let mut next = || {
        values
            .next()
            .and_then(|v| v.ok())
            .map(|v| v as f64 / 65536.0)
    };
    let (a, b, _, c, d) = (next()?, next()?, next()?, next()?, next()?);
    let scale_x = a.hypot(c);
    let scale_y = b.hypot(d);
    if scale_x == 0.0 || scale_y == 0.0 {
        return None;
    }
    // FFmpeg's counter-clockwise angle, negated: the rotation a player applies for display.
    let clockwise = (b / scale_y).atan2(a / scale_x).to_degrees().round();
    let mirrored = a * d - b * c < 0.0;
    Some((clockwise, mirrored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_keeps_aspect_and_even_sides() {
        assert_eq!(size_for_shorter_side(640, 352, 176), (320, 176));
        assert_eq!(size_for_shorter_side(352, 640, 176), (176, 320));
        assert_eq!(size_for_shorter_side(1920, 1080, 225), (400, 226));
        assert_eq!(size_for_shorter_side(3, 3, 1), (2, 2));
    }

    #[test]
    fn quarter_turns_move_corners() {
        // 2x1 frame: red, green.
        let rgb = vec![255, 0, 0, 0, 255, 0];
        let cw = Rotation::Clockwise90.apply(rgb.clone(), 2, 1);
        assert_eq!(cw, vec![255, 0, 0, 0, 255, 0]); // 1x2: red on top
        let ccw = Rotation::Clockwise270.apply(rgb.clone(), 2, 1);
        assert_eq!(ccw, vec![0, 255, 0, 255, 0, 0]); // 1x2: green on top
        assert_eq!(Rotation::Half.apply(rgb, 2, 1), vec![0, 255, 0, 255, 0, 0]);
    }

    #[test]
    fn angles_snap_to_quarter_turns() {
        assert_eq!(
            Rotation::from_clockwise_degrees(-90.0),
            Some(Rotation::Clockwise270)
        );
        assert_eq!(
            Rotation::from_clockwise_degrees(90.4),
            Some(Rotation::Clockwise90)
        );
        assert_eq!(Rotation::from_clockwise_degrees(45.0), None);
    }
}
