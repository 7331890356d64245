//! Error maps for the viewer: per pixel, and pooled per token cell.
//!
//! Both take RGB frames (`width * height * 3` bytes, channels-last) and compute differences
//! exactly in wide integers.

use rayon::prelude::*;

use super::{check_frames, MetricsError, RGB};

/// Per-pixel absolute error: `round(mean over R, G, B of |a − b|)`, one byte per pixel,
/// row-major (`width * height` bytes). Suitable as a heatmap; 0 where the pixels are equal.
pub fn abs_diff_map(
    a: &[u8],
    b: &[u8],
    width: usize,
    height: usize,
) -> Result<Vec<u8>, MetricsError> {
    check_frames(a, b, width, height, RGB)?;
    Ok(a.chunks_exact(RGB)
        .zip(b.chunks_exact(RGB))
        .map(|(pa, pb)| {
            let sum: u16 = pa
                .iter()
                .zip(pb)
                .map(|(&x, &y)| u16::from(x.abs_diff(y)))
                .sum();
            // round(sum / 3), sum <= 765: (sum + 1) / 3 rounds 1/3 down and 2/3 up.
            u8::try_from((sum + 1) / 3).unwrap_or(u8::MAX)
        })
        .collect())
}

/// `(columns, rows)` of the grid of `cell x cell` blocks covering a `width x height` frame;
/// partial blocks at the right and bottom edges count.
pub fn grid_dims(width: usize, height: usize, cell: usize) -> Result<(usize, usize), MetricsError> {
    if cell == 0 {
        return Err(MetricsError::ZeroCell);
    }
    Ok((width.div_ceil(cell), height.div_ceil(cell)))
}

/// Mean squared error of each `cell x cell` block (over its pixels and the three channels),
/// row-major over the block grid of [`grid_dims`]. Blocks at the right and bottom edges may be
/// smaller and are averaged over the pixels they have. With `cell` equal to a tokenizer's spatial
/// compression, each value is the error behind one token position.
pub fn pool_error(
    a: &[u8],
    b: &[u8],
    width: usize,
    height: usize,
    cell: usize,
) -> Result<Vec<f64>, MetricsError> {
    check_frames(a, b, width, height, RGB)?;
    // Both at least 1 from here on.
    let (cols, rows) = grid_dims(width, height, cell)?;
    let row_len = width * RGB;
    let cell_bytes = cell.saturating_mul(RGB);
    let band_len = row_len.saturating_mul(cell);
    let mut out = vec![0.0; cols * rows];
    out.par_chunks_mut(cols)
        .zip(a.par_chunks(band_len).zip(b.par_chunks(band_len)))
        .for_each(|(out_row, (band_a, band_b))| {
            // Exact per-cell sums: at most cell² · 3 · 255² per block, in u64.
            let mut sse = vec![0u64; cols];
            let mut count = vec![0u64; cols];
            for (ra, rb) in band_a
                .chunks_exact(row_len)
                .zip(band_b.chunks_exact(row_len))
            {
                let blocks = ra.chunks(cell_bytes).zip(rb.chunks(cell_bytes));
                for ((s, n), (ca, cb)) in sse.iter_mut().zip(count.iter_mut()).zip(blocks) {
                    let block: u64 = ca
                        .iter()
                        .zip(cb)
                        .map(|(&x, &y)| {
                            let d = u64::from(x.abs_diff(y));
                            d * d
                        })
                        .sum();
                    *s += block;
                    *n += ca.len() as u64;
                }
            }
            for ((o, &s), &n) in out_row.iter_mut().zip(&sse).zip(&count) {
                *o = if n == 0 { 0.0 } else { s as f64 / n as f64 };
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abs_diff_rounds_mean_of_channels() {
        let a = [0u8, 0, 0, 10, 10, 10, 255, 0, 0];
        let b = [1u8, 0, 0, 12, 10, 10, 0, 255, 0];
        // sums 1, 2 and 510 -> 0, 1, 170; 255 - 0 must not wrap.
        assert_eq!(abs_diff_map(&a, &b, 3, 1).unwrap(), vec![0, 1, 170]);
        let white = [255u8; 3];
        let black = [0u8; 3];
        assert_eq!(abs_diff_map(&white, &black, 1, 1).unwrap(), vec![255]);
        assert_eq!(abs_diff_map(&black, &white, 1, 1).unwrap(), vec![255]);
    }

    #[test]
    fn pool_error_with_partial_cells() {
        // 5x3 frame, cell 2: grid 3 x 2; last column and last row are partial.
        let (w, h) = (5, 3);
        let a = vec![0u8; w * h * 3];
        // Error value e(x, y) on all three channels.
        let e = |x: usize, y: usize| (10 * y + x) as u8;
        let mut b = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    b[(y * w + x) * 3 + c] = e(x, y);
                }
            }
        }
        let got = pool_error(&a, &b, w, h, 2).unwrap();
        assert_eq!(grid_dims(w, h, 2).unwrap(), (3, 2));
        assert_eq!(got.len(), 6);
        let mean_sq = |xs: &[(usize, usize)]| {
            xs.iter()
                .map(|&(x, y)| f64::from(e(x, y)).powi(2))
                .sum::<f64>()
                / xs.len() as f64
        };
        let want = [
            mean_sq(&[(0, 0), (1, 0), (0, 1), (1, 1)]),
            mean_sq(&[(2, 0), (3, 0), (2, 1), (3, 1)]),
            mean_sq(&[(4, 0), (4, 1)]),
            mean_sq(&[(0, 2), (1, 2)]),
            mean_sq(&[(2, 2), (3, 2)]),
            mean_sq(&[(4, 2)]),
        ];
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        // Pooled over the whole frame it is the MSE.
        let whole = pool_error(&a, &b, w, h, 8).unwrap();
        assert_eq!(whole.len(), 1);
        assert!((whole[0] - crate::metrics::mse(&a, &b).unwrap()).abs() < 1e-12);
        // cell 1: per-pixel squared error.
        let px = pool_error(&a, &b, w, h, 1).unwrap();
        assert_eq!(px[7], f64::from(e(2, 1)).powi(2));
    }

    #[test]
    fn errors() {
        let a = vec![0u8; 12];
        assert_eq!(pool_error(&a, &a, 2, 2, 0), Err(MetricsError::ZeroCell));
        assert!(matches!(
            pool_error(&a, &a, 3, 2, 2),
            Err(MetricsError::Dimensions { .. })
        ));
        assert!(matches!(
            abs_diff_map(&a, &a[3..], 2, 2),
            Err(MetricsError::SizeMismatch { .. })
        ));
        assert_eq!(grid_dims(0, 0, 4), Ok((0, 0)));
    }
}
