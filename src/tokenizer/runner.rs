//! The official inference wrapper: uint8 RGB ↔ [-1, 1], spatial padding to multiples of 16 with
//! black, temporal padding to 1 + 8k frames by replicating the first/last frame, independent
//! non-overlapping temporal windows (17 frames by default), crop back. Beyond the official code:
//! optional spatial tiling with overlap and linear blending for frames that do not fit in memory.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};

use super::model::{Tokenizer, Tokens};
use super::{Result, TokenizerError};
use crate::frames::RgbFrames;

/// Spatial alignment the official wrapper pads to, for every variant.
pub const SPATIAL_ALIGN: usize = 16;
/// Temporal alignment: clips are padded to 1 + 8k frames, also for the 4x models.
pub const TEMPORAL_ALIGN: usize = 8;
/// The official default temporal window.
pub const DEFAULT_TEMPORAL_WINDOW: usize = 17;

/// How much padding the wrapper added (before, after) on each axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    pub frames: (usize, usize),
    pub rows: (usize, usize),
    pub cols: (usize, usize),
}

fn centered(pad: usize) -> (usize, usize) {
    (pad / 2, pad - pad / 2)
}

/// The padding the official wrapper applies to a clip of this size.
pub fn padding_for(frames: usize, height: usize, width: usize, video: bool) -> Padding {
    let spatial = |n: usize| centered((SPATIAL_ALIGN - n % SPATIAL_ALIGN) % SPATIAL_ALIGN);
    let frames = if video {
        centered((TEMPORAL_ALIGN - (frames.max(1) - 1) % TEMPORAL_ALIGN) % TEMPORAL_ALIGN)
    } else {
        (0, 0)
    };
    Padding {
        frames,
        rows: spatial(height),
        cols: spatial(width),
    }
}

/// Pads in uint8 space: black (0) around the picture, replicated first/last frames in time.
pub fn pad(clip: &RgbFrames, padding: Padding) -> Result<RgbFrames> {
    let (h, w) = (clip.height, clip.width);
    let (ph, pw) = (
        h + padding.rows.0 + padding.rows.1,
        w + padding.cols.0 + padding.cols.1,
    );
    let mut frame_indices: Vec<usize> = vec![0; padding.frames.0];
    frame_indices.extend(0..clip.frames);
    frame_indices.extend(std::iter::repeat_n(clip.frames - 1, padding.frames.1));
    let mut data = vec![0u8; frame_indices.len() * ph * pw * 3];
    let src_frame = h * w * 3;
    let dst_frame = ph * pw * 3;
    for (dst_index, &src_index) in frame_indices.iter().enumerate() {
        for row in 0..h {
            let src_start = src_index * src_frame + row * w * 3;
            let dst_start =
                dst_index * dst_frame + (row + padding.rows.0) * pw * 3 + padding.cols.0 * 3;
            if let (Some(src), Some(dst)) = (
                clip.data.get(src_start..src_start + w * 3),
                data.get_mut(dst_start..dst_start + w * 3),
            ) {
                dst.copy_from_slice(src);
            }
        }
    }
    Ok(RgbFrames::new(frame_indices.len(), ph, pw, data)?)
}

/// Crops the padding back off.
pub fn crop(clip: &RgbFrames, padding: Padding) -> Result<RgbFrames> {
    let frames = clip
        .frames
        .checked_sub(padding.frames.0 + padding.frames.1)
        .filter(|f| *f > 0);
    let height = clip
        .height
        .checked_sub(padding.rows.0 + padding.rows.1)
        .filter(|h| *h > 0);
    let width = clip
        .width
        .checked_sub(padding.cols.0 + padding.cols.1)
        .filter(|w| *w > 0);
    let (Some(frames), Some(height), Some(width)) = (frames, height, width) else {
        return Err(TokenizerError::InvalidInput(
            "padding larger than the clip".into(),
        ));
    };
    let mut data = Vec::with_capacity(frames * height * width * 3);
    for f in 0..frames {
        for row in 0..height {
            let start =
                ((f + padding.frames.0) * clip.height + row + padding.rows.0) * clip.width * 3
                    + padding.cols.0 * 3;
            let src = clip
                .data
                .get(start..start + width * 3)
                .ok_or_else(|| TokenizerError::InvalidInput("crop out of bounds".into()))?;
            data.extend_from_slice(src);
        }
    }
    Ok(RgbFrames::new(frames, height, width, data)?)
}

/// uint8 → [-1, 1] as the official code does (float64 arithmetic, then the model dtype).
/// Returns (1, 3, T, H, W) for video or (T, 3, H, W) for images (each frame its own batch item).
pub fn tensor_from_rgb(
    clip: &RgbFrames,
    video: bool,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let (t, h, w) = (clip.frames, clip.height, clip.width);
    let plane = h * w;
    let mut values = vec![0f32; clip.data.len()];
    for (f, frame) in clip.data.chunks_exact(plane * 3).enumerate() {
        for (p, pixel) in frame.chunks_exact(3).enumerate() {
            for (c, &u) in pixel.iter().enumerate() {
                // Channel-first per frame: (t, c, h, w).
                if let Some(slot) = values.get_mut((f * 3 + c) * plane + p) {
                    *slot = (2.0 * (f64::from(u) / 255.0) - 1.0) as f32;
                }
            }
        }
    }
    let frames_first = Tensor::from_vec(values, (t, 3, h, w), &Device::Cpu)?;
    let tensor = if video {
        frames_first
            .permute((1, 0, 2, 3))?
            .unsqueeze(0)?
            .contiguous()?
    } else {
        frames_first
    };
    Ok(tensor.to_device(device)?.to_dtype(dtype)?)
}

/// uint8 → [-1, 1] in the layout the networks run in, with no permuted copy: frame-major
/// (1, T, 3, H, W) for video, (T, 3, H, W) for images (see [`Tokenizer::encode_frame_major`]).
pub fn frame_major_from_rgb(
    clip: &RgbFrames,
    video: bool,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let frames_first = tensor_from_rgb(clip, false, &Device::Cpu, DType::F32)?;
    let tensor = if video {
        frames_first.unsqueeze(0)?
    } else {
        frames_first
    };
    Ok(tensor.to_device(device)?.to_dtype(dtype)?)
}

/// [-1, 1] → uint8: `floor(clamp((x + 1)/2, 0, 1)·255 + 0.5)`. Accepts (1, 3, T, H, W) or (T, 3, H, W).
pub fn rgb_from_tensor(x: &Tensor) -> Result<RgbFrames> {
    let frames_first = match x.dims() {
        [1, 3, _, _, _] => x.squeeze(0)?.permute((1, 0, 2, 3))?,
        [_, 3, _, _] => x.clone(),
        dims => {
            return Err(TokenizerError::InvalidInput(format!(
                "expected (1, 3, T, H, W) or (T, 3, H, W), got {dims:?}"
            )))
        }
    };
    rgb_from_frames_first(&frames_first)
}

/// [`rgb_from_tensor`] for the frame-major layout [`Tokenizer::decode_frame_major`] returns:
/// (1, T, 3, H, W) video or (T, 3, H, W) images.
pub fn rgb_from_frame_major(x: &Tensor) -> Result<RgbFrames> {
    match x.dims() {
        [1, _, 3, _, _] => rgb_from_frames_first(&x.squeeze(0)?),
        [_, 3, _, _] => rgb_from_frames_first(x),
        dims => Err(TokenizerError::InvalidInput(format!(
            "expected (1, T, 3, H, W) or (T, 3, H, W), got {dims:?}"
        ))),
    }
}

/// One value in [-1, 1] to uint8, as the official wrapper rounds it.
fn to_u8(x: f32) -> u8 {
    ((x + 1.0) / 2.0)
        .clamp(0.0, 1.0)
        .mul_add(255.0, 0.5)
        .floor() as u8
}

/// (T, 3, H, W) → channels-last bytes. A contiguous CPU f32 tensor is read in place (at 1080p a
/// permuted f32 copy would be as large as the reconstruction itself, four times its bytes).
fn rgb_from_frames_first(frames_first: &Tensor) -> Result<RgbFrames> {
    let (t, _, h, w) = frames_first.dims4()?;
    if frames_first.device().is_cpu()
        && frames_first.dtype() == DType::F32
        && frames_first.is_contiguous()
    {
        let (storage, layout) = frames_first.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            let values = cpu.as_slice::<f32>()?.get(start..end).ok_or_else(|| {
                TokenizerError::InvalidInput("reconstruction outside its storage".into())
            })?;
            let plane = h * w;
            let mut data = vec![0u8; t * plane * 3];
            for (frame, out) in values
                .chunks_exact(3 * plane)
                .zip(data.chunks_exact_mut(3 * plane))
            {
                let (r, rest) = frame.split_at(plane);
                let (g, b) = rest.split_at(plane);
                for (((pixel, &r), &g), &b) in out.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
                    pixel.copy_from_slice(&[to_u8(r), to_u8(g), to_u8(b)]);
                }
            }
            return Ok(RgbFrames::new(t, h, w, data)?);
        }
    }
    // (t, h, w, c) so the bytes come out channels-last.
    let values = frames_first
        .permute((0, 2, 3, 1))?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let data = values.iter().map(|&x| to_u8(x)).collect();
    Ok(RgbFrames::new(t, h, w, data)?)
}

/// Spatial tiling for frames too large to run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Tile edge in pixels (rounded up to a multiple of 16).
    pub tile: usize,
    /// Overlap between neighbouring tiles in pixels (rounded up to a multiple of 16).
    pub overlap: usize,
}

/// Settings of one wrapped run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub temporal_window: usize,
    pub tiling: Option<Tiling>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            temporal_window: DEFAULT_TEMPORAL_WINDOW,
            tiling: None,
        }
    }
}

/// The tokens and reconstruction of one temporal window.
#[derive(Clone, Debug)]
pub struct WindowResult {
    /// First source frame of the window.
    pub start: usize,
    /// Source frames in the window (before padding).
    pub frames: usize,
    pub padding: Padding,
    /// None when the window was tiled (no single token grid).
    pub tokens: Option<Tokens>,
    pub encode_seconds: f64,
    pub decode_seconds: f64,
}

/// Everything a wrapped encode–decode produced.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub reconstruction: RgbFrames,
    pub windows: Vec<WindowResult>,
}

/// Progress callback: (windows done, windows total).
pub type ProgressFn<'a> = &'a mut dyn FnMut(usize, usize);

/// Temporal windows `[k·w, (k+1)·w)` of a clip with `frames` frames (the last may be shorter).
pub fn windows(frames: usize, window: usize, video: bool) -> Vec<(usize, usize)> {
    let window = if video { window.max(1) } else { 1 };
    (0..frames)
        .step_by(window)
        .map(|start| (start, window.min(frames - start)))
        .collect()
}

/// Pads one window of source frames and encodes it (no tiling). Returns the padding and tokens.
pub fn encode_window(model: &Tokenizer, window: &RgbFrames) -> Result<(Padding, Tokens)> {
    let video = model.config().family.is_video();
    let padding = padding_for(window.frames, window.height, window.width, video);
    let padded = pad(window, padding)?;
    let x = frame_major_from_rgb(&padded, video, model.device(), model.dtype())?;
    drop(padded);
    Ok((padding, model.encode_frame_major(x)?))
}

/// Decodes one window's tokens and crops the wrapper's padding off.
pub fn decode_window(model: &Tokenizer, tokens: &Tokens, padding: Padding) -> Result<RgbFrames> {
    let recon = model.decode_frame_major(tokens)?;
    let frames = rgb_from_frame_major(&recon)?;
    drop(recon);
    crop(&frames, padding)
}

/// Runs the official wrapper: each window padded, encoded, decoded and cropped independently.
/// Image tokenizers take every frame as its own image.
pub fn reconstruct(
    model: &Tokenizer,
    clip: &RgbFrames,
    options: &RunOptions,
    cancel: &AtomicBool,
    progress: ProgressFn,
) -> Result<RunResult> {
    let video = model.config().family.is_video();
    if video && options.temporal_window == 0 {
        return Err(TokenizerError::InvalidInput(
            "the temporal window must be at least 1 frame".into(),
        ));
    }
    let spans = windows(clip.frames, options.temporal_window, video);
    let mut out = Vec::with_capacity(clip.data.len());
    let mut results = Vec::with_capacity(spans.len());
    for (done, &(start, count)) in spans.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(TokenizerError::Cancelled);
        }
        let window = clip.slice(start, count)?;
        let padding = padding_for(count, clip.height, clip.width, video);
        let padded = pad(&window, padding)?;
        let (recon, tokens, encode_seconds, decode_seconds) = match options.tiling {
            Some(tiling) if tiling.tile < padded.height.max(padded.width) => {
                let (recon, enc, dec) = reconstruct_tiled(model, &padded, tiling, cancel)?;
                (recon, None, enc, dec)
            }
            _ => {
                let x = frame_major_from_rgb(&padded, video, model.device(), model.dtype())?;
                let started = std::time::Instant::now();
                let tokens = model.encode_frame_major(x)?;
                let encode_seconds = started.elapsed().as_secs_f64();
                let started = std::time::Instant::now();
                let recon = model.decode_frame_major(&tokens)?;
                let decode_seconds = started.elapsed().as_secs_f64();
                (
                    rgb_from_frame_major(&recon)?,
                    Some(tokens),
                    encode_seconds,
                    decode_seconds,
                )
            }
        };
        let cropped = crop(&recon, padding)?;
        out.extend_from_slice(&cropped.data);
        results.push(WindowResult {
            start,
            frames: count,
            padding,
            tokens,
            encode_seconds,
            decode_seconds,
        });
        progress(done + 1, spans.len());
    }
    Ok(RunResult {
        reconstruction: RgbFrames::new(clip.frames, clip.height, clip.width, out)?,
        windows: results,
    })
}

/// Tile origins along one axis of length `len` (a multiple of 16) for tiles of `tile` with
/// `overlap`; the last tile is shifted back to end at the edge.
fn tile_starts(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if tile >= len {
        return vec![0];
    }
    let step = tile - overlap;
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * step)
        .take_while(|s| s + tile < len)
        .collect();
    starts.push(len - tile);
    starts.dedup();
    starts
}

/// Linear ramp weight of position `i` in a tile of `tile` pixels whose neighbours overlap by
/// `before` / `after` pixels.
fn ramp(i: usize, tile: usize, before: usize, after: usize) -> f32 {
    let rising = if before > 0 && i < before {
        (i as f32 + 0.5) / before as f32
    } else {
        1.0
    };
    let falling = if after > 0 && i >= tile - after {
        (tile - i) as f32 - 0.5
    } else {
        f32::INFINITY
    };
    rising
        .min(if after > 0 {
            falling / after as f32
        } else {
            1.0
        })
        .max(1e-3)
}

/// Encodes and decodes each overlapping tile on its own and blends the reconstructions.
fn reconstruct_tiled(
    model: &Tokenizer,
    padded: &RgbFrames,
    tiling: Tiling,
    cancel: &AtomicBool,
) -> Result<(RgbFrames, f64, f64)> {
    let video = model.config().family.is_video();
    let (mut encode_seconds, mut decode_seconds) = (0.0, 0.0);
    let blended = blend_tiles(padded, tiling, cancel, &mut |tile_clip| {
        let x = tensor_from_rgb(tile_clip, video, model.device(), model.dtype())?;
        let started = std::time::Instant::now();
        let tokens = model.encode(&x)?;
        encode_seconds += started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let recon = model.decode(&tokens)?;
        decode_seconds += started.elapsed().as_secs_f64();
        Ok(recon)
    })?;
    Ok((blended, encode_seconds, decode_seconds))
}

/// Splits frames into overlapping tiles, runs `run_tile` on each (returning a [-1, 1] tensor in
/// the layout [`tensor_from_rgb`] makes) and blends the results with linear ramps in the overlaps.
pub fn blend_tiles(
    padded: &RgbFrames,
    tiling: Tiling,
    cancel: &AtomicBool,
    run_tile: &mut dyn FnMut(&RgbFrames) -> Result<Tensor>,
) -> Result<RgbFrames> {
    let round = |n: usize| n.div_ceil(SPATIAL_ALIGN) * SPATIAL_ALIGN;
    let tile = round(tiling.tile.max(SPATIAL_ALIGN));
    let overlap = round(tiling.overlap).min(tile / 2);
    let (t, h, w) = (padded.frames, padded.height, padded.width);
    let (th, tw) = (tile.min(h), tile.min(w));
    let rows = tile_starts(h, th, overlap);
    let cols = tile_starts(w, tw, overlap);
    let mut sum = vec![0f32; t * h * w * 3];
    let mut weight = vec![0f32; h * w];
    for (ri, &y0) in rows.iter().enumerate() {
        for (ci, &x0) in cols.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(TokenizerError::Cancelled);
            }
            let mut data = Vec::with_capacity(t * th * tw * 3);
            for f in 0..t {
                for row in y0..y0 + th {
                    let start = ((f * h + row) * w + x0) * 3;
                    let src = padded
                        .data
                        .get(start..start + tw * 3)
                        .ok_or_else(|| TokenizerError::InvalidInput("tile out of bounds".into()))?;
                    data.extend_from_slice(src);
                }
            }
            let tile_clip = RgbFrames::new(t, th, tw, data)?;
            let recon = run_tile(&tile_clip)?;
            // Blend in float [-1, 1] space so overlapping tiles average before rounding.
            let recon = match recon.dims() {
                [1, 3, _, _, _] => recon.squeeze(0)?.permute((1, 0, 2, 3))?,
                _ => recon,
            };
            let values = recon
                .permute((0, 2, 3, 1))?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let before_y = if ri > 0 { overlap.min(th) } else { 0 };
            let after_y = if ri + 1 < rows.len() {
                overlap.min(th)
            } else {
                0
            };
            let before_x = if ci > 0 { overlap.min(tw) } else { 0 };
            let after_x = if ci + 1 < cols.len() {
                overlap.min(tw)
            } else {
                0
            };
            for dy in 0..th {
                let wy = ramp(dy, th, before_y, after_y);
                for dx in 0..tw {
                    let wgt = wy * ramp(dx, tw, before_x, after_x);
                    let pixel = (y0 + dy) * w + x0 + dx;
                    if let Some(slot) = weight.get_mut(pixel) {
                        *slot += wgt;
                    }
                    for f in 0..t {
                        for c in 0..3 {
                            let src = ((f * th + dy) * tw + dx) * 3 + c;
                            let dst = (f * h * w + pixel) * 3 + c;
                            if let (Some(v), Some(acc)) = (values.get(src), sum.get_mut(dst)) {
                                *acc += wgt * v;
                            }
                        }
                    }
                }
            }
        }
    }
    let mut data = Vec::with_capacity(sum.len());
    for (i, acc) in sum.iter().enumerate() {
        let pixel = (i / 3) % (h * w);
        let x = acc / weight.get(pixel).copied().unwrap_or(1.0).max(1e-6);
        data.push(
            ((x + 1.0) / 2.0)
                .clamp(0.0, 1.0)
                .mul_add(255.0, 0.5)
                .floor() as u8,
        );
    }
    Ok(RgbFrames::new(t, h, w, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_matches_the_official_rule() {
        let p = padding_for(10, 100, 90, true);
        assert_eq!(p.rows, (6, 6)); // 100 → 112
        assert_eq!(p.cols, (3, 3)); // 90 → 96
        assert_eq!(p.frames, (3, 4)); // 10 → 17
        assert_eq!(padding_for(17, 64, 64, true), Padding::default());
        assert_eq!(padding_for(1, 33, 16, false).rows, (7, 8));
    }

    #[test]
    fn pad_then_crop_is_exact() {
        let data: Vec<u8> = (0..5 * 7 * 9 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let clip = RgbFrames::new(5, 7, 9, data).unwrap();
        let p = padding_for(5, 7, 9, true);
        let padded = pad(&clip, p).unwrap();
        assert_eq!((padded.frames, padded.height, padded.width), (9, 16, 16));
        // Padded pixels are black; padded frames replicate the first and last frames.
        assert_eq!(padded.data[0], 0);
        let first_copy = crop(
            &padded.slice(0, 1).unwrap(),
            Padding {
                frames: (0, 0),
                ..p
            },
        )
        .unwrap();
        assert_eq!(first_copy.data, clip.slice(0, 1).unwrap().data);
        let last_copy = crop(
            &padded.slice(8, 1).unwrap(),
            Padding {
                frames: (0, 0),
                ..p
            },
        )
        .unwrap();
        assert_eq!(last_copy.data, clip.slice(4, 1).unwrap().data);
        assert_eq!(crop(&padded, p).unwrap(), clip);
    }

    #[test]
    fn uint8_round_trip_is_exact() {
        let data: Vec<u8> = (0..=255u8).cycle().take(2 * 4 * 8 * 3).collect();
        let clip = RgbFrames::new(2, 4, 8, data).unwrap();
        for video in [true, false] {
            let x = tensor_from_rgb(&clip, video, &Device::Cpu, DType::F32).unwrap();
            assert_eq!(rgb_from_tensor(&x).unwrap(), clip);
        }
    }

    #[test]
    fn windows_are_non_overlapping() {
        assert_eq!(windows(40, 17, true), vec![(0, 17), (17, 17), (34, 6)]);
        assert_eq!(windows(3, 17, false), vec![(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn blending_identity_tiles_reproduces_the_frame_exactly() {
        let data: Vec<u8> = (0..3 * 80 * 112 * 3)
            .map(|i| (i * 7919 % 256) as u8)
            .collect();
        let clip = RgbFrames::new(3, 80, 112, data).unwrap();
        for (video, tile, overlap) in [(true, 32, 16), (false, 48, 16), (true, 64, 0)] {
            let cancel = AtomicBool::new(false);
            let mut tiles = 0;
            let out = blend_tiles(&clip, Tiling { tile, overlap }, &cancel, &mut |c| {
                tiles += 1;
                tensor_from_rgb(c, video, &Device::Cpu, DType::F32)
            })
            .unwrap();
            assert!(tiles > 1);
            assert_eq!(out, clip, "tile {tile} overlap {overlap}");
        }
    }

    #[test]
    fn tiles_cover_the_frame() {
        assert_eq!(tile_starts(160, 64, 16), vec![0, 48, 96]);
        assert_eq!(tile_starts(64, 64, 16), vec![0]);
    }
}
