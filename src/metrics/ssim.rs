//! SSIM equal to scikit-image's `structural_similarity` with the settings TokenBench uses.
//!
//! TokenBench (`token_bench/metrics_cli.py`, `SSIM()`, lines 102–108 at NVlabs/TokenBench
//! `dcbb7d5`) calls `ssim(img0, img1, data_range=255.0, multichannel=True, channel_axis=-1)` per
//! frame and averages over frames. `multichannel` is a leftover keyword that current
//! scikit-image ignores; everything else is scikit-image's default, so per frame this is:
//!
//! - each channel separately, then the mean over channels (`channel_axis=-1`);
//! - a 7×7 uniform window (`win_size=None` → 7, `gaussian_weights=False`);
//! - sample covariance (`use_sample_covariance=True`: variances scaled by 49/48);
//! - `K1 = 0.01`, `K2 = 0.03`, `data_range = 255` → `C1 = (0.01·255)²`, `C2 = (0.03·255)²`;
//! - the SSIM map cropped by `pad = (7 - 1) / 2 = 3` on every side before averaging, so only
//!   windows that lie fully inside the frame count (and the filter's border mode never matters).
//!
//! The window sums of x, y, x², y² and xy are exact integers here (running column sums in `i32`
//! plus a 7-tap horizontal sum), and the SSIM formula is evaluated in f64 on those integers with
//! the `1/49` and `49/48` factors cancelled. scikit-image accumulates the same sums in floating
//! point, so the two agree to about 1e-12 on uint8 input (where scikit-image computes in
//! float64). TokenBench casts frames to float32 first, which makes scikit-image compute in
//! float32; that moves SSIM by at most a few 1e-7 on the fixtures.
//!
//! The output is split into tiles (bands of rows × strips of 256 columns) processed in parallel
//! with rayon; each tile keeps running column sums, so the cost per pixel does not depend on the
//! window size, and its working set stays in cache.

use rayon::prelude::*;

use super::{check_frames, MetricsError, RGB};

/// Side of the (uniform) SSIM window.
pub const WIN_SIZE: usize = 7;
/// scikit-image's `K1`.
pub const K1: f64 = 0.01;
/// scikit-image's `K2`.
pub const K2: f64 = 0.03;
/// TokenBench's `data_range` for 8-bit frames.
pub const DATA_RANGE: f64 = 255.0;

/// Pixels in a window, as f64.
const NP: f64 = (WIN_SIZE * WIN_SIZE) as f64;
/// Output rows per tile (each tile re-reads `WIN_SIZE - 1` rows to start). Fixed, not derived
/// from the thread count, so the summation order and hence the result are bit-identical on every
/// machine.
const BAND: usize = 64;
/// Output columns per tile: keeps a tile's running sums (≈40 KB for RGB) in the L1/L2 cache
/// on wide frames.
const STRIP: usize = 256;

/// Mean SSIM of one RGB frame pair (`width * height * 3` bytes each), as
/// `skimage.metrics.structural_similarity(a, b, data_range=255, channel_axis=-1)` returns it.
///
/// Frames must be at least 7x7 pixels ([`MetricsError::TooSmall`]), like in scikit-image.
pub fn ssim(a: &[u8], b: &[u8], width: usize, height: usize) -> Result<f64, MetricsError> {
    ssim_channels(a, b, width, height, RGB)
}

/// [`ssim`] for interleaved frames with any number of channels (1 for grayscale).
pub fn ssim_channels(
    a: &[u8],
    b: &[u8],
    width: usize,
    height: usize,
    channels: usize,
) -> Result<f64, MetricsError> {
    check_frames(a, b, width, height, channels)?;
    if width < WIN_SIZE || height < WIN_SIZE {
        return Err(MetricsError::TooSmall { width, height });
    }
    let geometry = Geometry {
        channels,
        row_len: width * channels,
    };
    let out_rows = height - WIN_SIZE + 1;
    let out_cols = width - WIN_SIZE + 1;
    let bands = out_rows.div_ceil(BAND);
    let strips = out_cols.div_ceil(STRIP);
    // Collected in order and summed serially so the result does not depend on scheduling.
    let partial: Vec<f64> = (0..bands * strips)
        .into_par_iter()
        .map(|i| {
            let (start, x0) = ((i / strips) * BAND, (i % strips) * STRIP);
            let tile = Tile {
                rows: start..(start + BAND).min(out_rows),
                cols: x0..(x0 + STRIP).min(out_cols),
            };
            tile_sum(a, b, &geometry, &tile)
        })
        .collect();
    let total: f64 = partial.iter().sum();
    Ok(total / (out_rows * out_cols * channels) as f64)
}

struct Geometry {
    channels: usize,
    /// Bytes per input row.
    row_len: usize,
}

/// Output positions (window top-left corners) handled by one task.
struct Tile {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

/// Window sums of x, y, x², y² and xy (exact: at most 49 · 255² < 2³¹; `i32` because SSE2
/// converts `i32`, not `u32`, to f64 in one instruction).
struct Sums {
    x: Vec<i32>,
    y: Vec<i32>,
    xx: Vec<i32>,
    yy: Vec<i32>,
    xy: Vec<i32>,
}

impl Sums {
    fn zeros(n: usize) -> Self {
        Self {
            x: vec![0; n],
            y: vec![0; n],
            xx: vec![0; n],
            yy: vec![0; n],
            xy: vec![0; n],
        }
    }

    /// Adds one input row pair to the column sums.
    fn add_row(&mut self, ra: &[u8], rb: &[u8]) {
        let cols = self
            .x
            .iter_mut()
            .zip(self.y.iter_mut())
            .zip(self.xx.iter_mut())
            .zip(self.yy.iter_mut())
            .zip(self.xy.iter_mut());
        for (((((x, y), xx), yy), xy), (&pa, &pb)) in cols.zip(ra.iter().zip(rb)) {
            let (pa, pb) = (i32::from(pa), i32::from(pb));
            *x += pa;
            *y += pb;
            *xx += pa * pa;
            *yy += pb * pb;
            *xy += pa * pb;
        }
    }

    /// Moves the column sums down one row: adds the entering row, removes the leaving one.
    fn slide(&mut self, enter: (&[u8], &[u8]), leave: (&[u8], &[u8])) {
        let cols = self
            .x
            .iter_mut()
            .zip(self.y.iter_mut())
            .zip(self.xx.iter_mut())
            .zip(self.yy.iter_mut())
            .zip(self.xy.iter_mut());
        let rows = enter.0.iter().zip(enter.1).zip(leave.0.iter().zip(leave.1));
        for (((((x, y), xx), yy), xy), ((&ea, &eb), (&la, &lb))) in cols.zip(rows) {
            let (ea, eb, la, lb) = (i32::from(ea), i32::from(eb), i32::from(la), i32::from(lb));
            // Add first: the leaving row is part of the sum, so nothing goes below zero.
            *x = *x + ea - la;
            *y = *y + eb - lb;
            *xx = *xx + ea * ea - la * la;
            *yy = *yy + eb * eb - lb * lb;
            *xy = *xy + ea * eb - la * lb;
        }
    }
}

/// `out[j] = Σ_{k<7} col[j + k·channels]`: the horizontal part of the box filter, in one pass
/// over seven shifted views (vectorises; `col` has `out.len() + 6·channels` values).
fn window_sum(col: &[i32], out: &mut [i32], channels: usize) {
    let view = |k: usize| col.get(k * channels..).unwrap_or_default();
    let taps = view(0)
        .iter()
        .zip(view(1))
        .zip(view(2))
        .zip(view(3))
        .zip(view(4))
        .zip(view(5))
        .zip(view(6));
    for (o, ((((((a, b), c), d), e), f), g)) in out.iter_mut().zip(taps) {
        *o = a + b + c + d + e + f + g;
    }
}

/// Per-tile scratch: horizontal window sums and the SSIM values of one output row.
struct RowScratch {
    win: Sums,
    values: Vec<f64>,
}

/// Sum of the SSIM map over one output row, from the column sums of its 7 input rows.
fn row_sum(col: &Sums, scratch: &mut RowScratch, channels: usize) -> f64 {
    let win = &mut scratch.win;
    window_sum(&col.x, &mut win.x, channels);
    window_sum(&col.y, &mut win.y, channels);
    window_sum(&col.xx, &mut win.xx, channels);
    window_sum(&col.yy, &mut win.yy, channels);
    window_sum(&col.xy, &mut win.xy, channels);

    // With sums s·, means are s·/NP and sample (co)variances (NP·s·· − s·s·)/(NP·(NP−1)).
    // Scaling A1, B1 by NP² and A2, B2 by NP·(NP−1) leaves S = A1·A2 / (B1·B2) unchanged. The
    // sums, their products and the differences NP·s·· − s·s· are integers below 2⁵³, so exact
    // in f64 (no cancellation error in the variances); only the final products and the division
    // round.
    let c1 = (K1 * DATA_RANGE).powi(2) * NP * NP;
    let c2 = (K2 * DATA_RANGE).powi(2) * NP * (NP - 1.0);
    let sums = win
        .x
        .iter()
        .zip(&win.y)
        .zip(&win.xx)
        .zip(&win.yy)
        .zip(&win.xy);
    for (s, ((((&sx, &sy), &sxx), &syy), &sxy)) in scratch.values.iter_mut().zip(sums) {
        let (sx, sy) = (f64::from(sx), f64::from(sy));
        let (sxx, syy, sxy) = (f64::from(sxx), f64::from(syy), f64::from(sxy));
        let sxsy = sx * sy;
        let a1 = 2.0 * sxsy + c1;
        let b1 = sx * sx + sy * sy + c1;
        let a2 = 2.0 * (NP * sxy - sxsy) + c2;
        let b2 = (NP * sxx - sx * sx) + (NP * syy - sy * sy) + c2;
        *s = (a1 * a2) / (b1 * b2);
    }
    // Four accumulators: vectorises, and the order is fixed.
    let mut acc = [0.0f64; 4];
    let mut quads = scratch.values.chunks_exact(4);
    for q in &mut quads {
        for (a, v) in acc.iter_mut().zip(q) {
            *a += v;
        }
    }
    let tail: f64 = quads.remainder().iter().sum();
    acc.iter().sum::<f64>() + tail
}

/// Sum of the SSIM map over one tile (output (r, c) is the window with top-left input (r, c)).
fn tile_sum<'a>(a: &'a [u8], b: &'a [u8], g: &Geometry, tile: &Tile) -> f64 {
    // The tile's input columns, window overlap included, as byte ranges of a row.
    let lo = tile.cols.start * g.channels;
    let hi = (tile.cols.end + WIN_SIZE - 1) * g.channels;
    let strip = |img: &'a [u8]| {
        img.chunks_exact(g.row_len)
            .map(move |row| row.get(lo..hi).unwrap_or_default())
    };
    let rows = || strip(a).zip(strip(b));
    let in_len = hi - lo;
    let out_len = tile.cols.len() * g.channels;
    let mut col = Sums::zeros(in_len);
    for (ra, rb) in rows().skip(tile.rows.start).take(WIN_SIZE) {
        col.add_row(ra, rb);
    }
    let mut scratch = RowScratch {
        win: Sums::zeros(out_len),
        values: vec![0.0; out_len],
    };
    let mut total = row_sum(&col, &mut scratch, g.channels);
    let entering = rows().skip(tile.rows.start + WIN_SIZE);
    let leaving = rows().skip(tile.rows.start);
    for (enter, leave) in entering
        .zip(leaving)
        .take(tile.rows.len().saturating_sub(1))
    {
        col.slide(enter, leave);
        total += row_sum(&col, &mut scratch, g.channels);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct transcription of scikit-image's algorithm (float64 box filter, crop, mean of
    /// channel means), slow and obvious.
    fn naive(a: &[u8], b: &[u8], w: usize, h: usize, ch: usize) -> f64 {
        let r = WIN_SIZE / 2;
        let np = (WIN_SIZE * WIN_SIZE) as f64;
        let cov_norm = np / (np - 1.0);
        let c1 = (K1 * DATA_RANGE).powi(2);
        let c2 = (K2 * DATA_RANGE).powi(2);
        let mut channel_means = vec![];
        for c in 0..ch {
            let px = |img: &[u8], y: usize, x: usize| f64::from(img[(y * w + x) * ch + c]);
            let mut sum = 0.0;
            let mut count = 0usize;
            for y in r..h - r {
                for x in r..w - r {
                    let (mut ux, mut uy, mut uxx, mut uyy, mut uxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                    for yy in y - r..=y + r {
                        for xx in x - r..=x + r {
                            let (p, q) = (px(a, yy, xx), px(b, yy, xx));
                            ux += p;
                            uy += q;
                            uxx += p * p;
                            uyy += q * q;
                            uxy += p * q;
                        }
                    }
                    let (ux, uy) = (ux / np, uy / np);
                    let vx = cov_norm * (uxx / np - ux * ux);
                    let vy = cov_norm * (uyy / np - uy * uy);
                    let vxy = cov_norm * (uxy / np - ux * uy);
                    let s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2))
                        / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
                    sum += s;
                    count += 1;
                }
            }
            channel_means.push(sum / count as f64);
        }
        channel_means.iter().sum::<f64>() / ch as f64
    }

    fn pattern(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| {
                let mut k = i.wrapping_mul(0x9E37_79B1) ^ seed.wrapping_mul(0x85EB_CA77);
                k ^= k >> 15;
                k = k.wrapping_mul(0x2C1B_3C6D);
                k ^= k >> 12;
                (k >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn matches_naive_reference() {
        for &(w, h, ch) in &[(7, 7, 1), (7, 9, 3), (13, 8, 3), (40, 37, 3), (23, 61, 1)] {
            let a = pattern(w * h * ch, 1);
            // b: a smoothed, partly correlated version of a.
            let b: Vec<u8> = a
                .iter()
                .zip(pattern(w * h * ch, 2))
                .map(|(&x, n)| ((i32::from(x) * 3 + i32::from(n)) / 4) as u8)
                .collect();
            let got = ssim_channels(&a, &b, w, h, ch).unwrap();
            let want = naive(&a, &b, w, h, ch);
            assert!((got - want).abs() < 1e-12, "{w}x{h}x{ch}: {got} vs {want}");
        }
    }

    #[test]
    fn band_boundaries_do_not_matter() {
        // Several bands.
        let (w, h) = (9, 3 * BAND + 11);
        let a = pattern(w * h * 3, 3);
        let b = pattern(w * h * 3, 4);
        let got = ssim(&a, &b, w, h).unwrap();
        let want = naive(&a, &b, w, h, 3);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn strip_boundaries_do_not_matter() {
        let (w, h) = (2 * STRIP + 13, 12);
        let a = pattern(w * h * 3, 6);
        let b = pattern(w * h * 3, 7);
        let got = ssim(&a, &b, w, h).unwrap();
        let want = naive(&a, &b, w, h, 3);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn identical_is_one() {
        let a = pattern(20 * 10 * 3, 5);
        assert_eq!(ssim(&a, &a, 20, 10).unwrap(), 1.0);
        let flat = vec![7u8; 8 * 8 * 3];
        assert_eq!(ssim(&flat, &flat, 8, 8).unwrap(), 1.0);
    }

    #[test]
    fn extremes() {
        let black = vec![0u8; 9 * 9 * 3];
        let white = vec![255u8; 9 * 9 * 3];
        // Means 0 and 255, no variance: S = C1 / (255² + C1) everywhere.
        let c1 = (K1 * DATA_RANGE).powi(2);
        let want = c1 / (255.0f64.powi(2) + c1);
        let got = ssim(&black, &white, 9, 9).unwrap();
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    }

    #[test]
    fn errors() {
        let a = vec![0u8; 6 * 10 * 3];
        assert_eq!(
            ssim(&a, &a, 6, 10),
            Err(MetricsError::TooSmall {
                width: 6,
                height: 10
            })
        );
        assert!(matches!(
            ssim(&a, &a, 10, 10),
            Err(MetricsError::Dimensions { .. })
        ));
        assert!(matches!(
            ssim(&a, &a[1..], 6, 10),
            Err(MetricsError::SizeMismatch { .. })
        ));
        assert_eq!(ssim(&[], &[], 0, 0), Err(MetricsError::Empty));
    }
}
