//! Side-by-side composites with burned-in labels, for slides: original on the left,
//! reconstruction on the right, a dark banner above each panel with its label.

use super::font;
use super::{MediaError, RgbFrames};

/// Each font pixel is drawn as a square of this many pixels (7 px glyphs become 14 px tall).
pub const LABEL_SCALE: usize = 2;
/// Height of the label banner above the panels; even, so 4:2:0 video keeps even sizes.
pub const BANNER_HEIGHT: usize = font::HEIGHT * LABEL_SCALE + 10;
/// Dark gap between the two panels; even for the same reason.
pub const PANEL_GAP: usize = 4;
/// Space left of the text in each banner.
const TEXT_MARGIN: usize = 6;
const BACKGROUND: [u8; 3] = [24, 24, 24];
const TEXT_COLOUR: [u8; 3] = [255, 255, 255];

/// The labels of one composite frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PanelLabels {
    /// Over the original, e.g. `original  frame 3`.
    pub original: String,
    /// Over the reconstruction, e.g. `DV8x16x16  PSNR 31.27 dB`.
    pub reconstruction: String,
}

/// Puts each original frame next to its reconstruction, labelled by `labels(frame_index)`.
///
/// The result is `2 * width + PANEL_GAP` wide and `height + BANNER_HEIGHT` tall. Labels are
/// printable ASCII (anything else shows as `?`), cut with `..` where the panel is too narrow.
/// Fails when the clips differ in frame count or size.
pub fn side_by_side(
    original: &RgbFrames,
    reconstruction: &RgbFrames,
    labels: impl Fn(usize) -> PanelLabels,
) -> Result<RgbFrames, MediaError> {
    let shape = |f: &RgbFrames| (f.frames, f.height, f.width);
    if shape(original) != shape(reconstruction) {
        return Err(MediaError::InvalidFrames(format!(
            "the original has {} frames of {}x{}, the reconstruction {} frames of {}x{}; \
             a side-by-side needs them equal",
            original.frames,
            original.width,
            original.height,
            reconstruction.frames,
            reconstruction.width,
            reconstruction.height
        )));
    }
    let (width, height) = (original.width, original.height);
    let frame_bytes = width * height * 3;
    for (name, clip) in [("original", original), ("reconstruction", reconstruction)] {
        if frame_bytes == 0 || clip.data.len() != frame_bytes * clip.frames {
            return Err(MediaError::InvalidFrames(format!(
                "the {name} holds {} bytes, not {} frames of {width}x{height} RGB",
                clip.data.len(),
                clip.frames
            )));
        }
    }
    let out_width = 2 * width + PANEL_GAP;
    let out_height = height + BANNER_HEIGHT;
    let row_bytes = width * 3;
    let mut data = Vec::with_capacity(out_width * out_height * 3 * original.frames);
    let right_x = width + PANEL_GAP;
    let text_y = (BANNER_HEIGHT - font::HEIGHT * LABEL_SCALE) / 2;
    let text_room = width.saturating_sub(2 * TEXT_MARGIN);
    for (index, (left, right)) in original
        .data
        .chunks_exact(frame_bytes)
        .zip(reconstruction.data.chunks_exact(frame_bytes))
        .enumerate()
    {
        let mut frame = BACKGROUND.repeat(out_width * out_height);
        let gap = BACKGROUND.repeat(PANEL_GAP);
        let mut rows = left
            .chunks_exact(row_bytes)
            .zip(right.chunks_exact(row_bytes));
        for out_row in frame.chunks_exact_mut(out_width * 3).skip(BANNER_HEIGHT) {
            let Some((left_row, right_row)) = rows.next() else {
                break;
            };
            let composed = left_row.iter().chain(&gap).chain(right_row);
            out_row.iter_mut().zip(composed).for_each(|(o, p)| *o = *p);
        }
        let PanelLabels {
            original: left_label,
            reconstruction: right_label,
        } = labels(index);
        for (x, label) in [(0, left_label), (right_x, right_label)] {
            draw_text(
                &mut frame,
                out_width,
                out_height,
                x + TEXT_MARGIN,
                text_y,
                &fit_text(&label, text_room),
                TEXT_COLOUR,
            );
        }
        data.extend_from_slice(&frame);
    }
    RgbFrames::new(original.frames, out_height, out_width, data)
        .map_err(|e| MediaError::InvalidFrames(e.to_string()))
}

/// Draws `text` with its top-left corner at (`x`, `y`) into one packed RGB8 frame, with the
/// built-in 5x7 font at [`LABEL_SCALE`]; whatever falls outside the frame is cut off.
pub fn draw_text(
    frame: &mut [u8],
    width: usize,
    height: usize,
    x: usize,
    y: usize,
    text: &str,
    colour: [u8; 3],
) {
    for (position, c) in text.chars().enumerate() {
        let rows = font::glyph(c);
        let glyph_x = x + position * font::ADVANCE * LABEL_SCALE;
        if glyph_x >= width {
            break;
        }
        for font_y in 0..font::HEIGHT {
            for font_x in 0..font::WIDTH {
                if !font::lit(&rows, font_x, font_y) {
                    continue;
                }
                for dy in 0..LABEL_SCALE {
                    for dx in 0..LABEL_SCALE {
                        let px = glyph_x + font_x * LABEL_SCALE + dx;
                        let py = y + font_y * LABEL_SCALE + dy;
                        if px >= width || py >= height {
                            continue;
                        }
                        let at = (py * width + px) * 3;
                        if let Some(pixel) = frame.get_mut(at..at + 3) {
                            pixel.copy_from_slice(&colour);
                        }
                    }
                }
            }
        }
    }
}

/// The text, shortened with `..` so it fits in `room` pixels at [`LABEL_SCALE`].
fn fit_text(text: &str, room: usize) -> String {
    // The last glyph needs no spacing after it.
    let fits = (room + LABEL_SCALE) / (font::ADVANCE * LABEL_SCALE);
    if text.chars().count() <= fits {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(fits.saturating_sub(2)).collect();
    cut.push_str("..");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_labels_are_cut_to_fit() {
        assert_eq!(fit_text("PSNR 31.27 dB", 1000), "PSNR 31.27 dB");
        // 60 px hold 5 glyphs of 12 px (the last one without its spacing).
        assert_eq!(fit_text("PSNR 31.27 dB", 58), "PSN..");
    }
}
