//! One job's results: the reconstruction of a frame range, its metrics and the token maps the
//! panels draw. Built on the worker thread from the runner's output; read-only afterwards.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::DType;
use serde::Serialize;

use crate::media::RgbFrames;
use crate::metrics::{ClipMetrics, ClipSummary};
use crate::tokenizer::fsq;
use crate::tokenizer::runner::{Padding, RunResult};
use crate::tokenizer::Tokens;

/// What a job runs: the input, the model and the settings. Results are cached under it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobKey {
    pub input: PathBuf,
    /// The catalogue key of the model (a path, or a Hugging Face name).
    pub model: String,
    pub settings: RunSettings,
}

/// The frame range and wrapper settings of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunSettings {
    pub start: usize,
    pub frames: usize,
    pub temporal_window: usize,
}

/// Facts about the model that produced an analysis.
#[derive(Clone, Debug, Serialize)]
pub struct ModelFacts {
    /// The name the catalogue shows (e.g. the checkpoint folder's name).
    pub name: String,
    /// The variant the loader recognised (`custom` suffix for non-released configurations).
    pub variant: String,
    pub family: String,
    pub discrete: bool,
    pub video: bool,
    pub spatial: usize,
    pub temporal: usize,
    pub latent_channels: usize,
    pub parameters: usize,
    pub device: String,
    pub dtype: String,
    /// Shorter side the released model was trained for (warns below it).
    pub training_shorter_side: usize,
}

/// The token grid of one temporal window.
#[derive(Clone, Debug)]
pub struct WindowTokens {
    /// First source frame of the window (absolute frame index in the clip).
    pub start: usize,
    pub frames: usize,
    pub padding: Padding,
    /// (t, h, w) of the grid.
    pub grid: (usize, usize, usize),
    pub values: TokenValues,
    /// Mean squared error of the pixels each cell covers, t·h·w, row-major per latent frame.
    pub cell_error: Vec<f32>,
}

#[derive(Clone, Debug)]
pub enum TokenValues {
    /// Indices, t·h·w.
    Discrete(Vec<i64>),
    /// Latent, channel-major: c·t·h·w; `pca` is t·h·w RGB from the first three components.
    Continuous {
        channels: usize,
        latent: Vec<f32>,
        pca: Vec<[u8; 3]>,
    },
    /// The window was tiled; no single grid.
    None,
}

/// A token cell ranked by its pooled error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorstCell {
    pub window: usize,
    pub t: usize,
    pub x: usize,
    pub y: usize,
    pub mse: f32,
    /// First clip frame the cell covers.
    pub frame: usize,
}

/// Codebook usage of a discrete run.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// (index, count), most used first.
    pub counts: Vec<(i64, usize)>,
    pub tokens: usize,
    pub unique: usize,
    /// Empirical entropy in bits per token.
    pub entropy_bits: f64,
}

/// Everything one (input, model, settings) job produced.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub key: JobKey,
    pub model: ModelFacts,
    /// Frames `key.settings.start ..` of the clip, reconstructed.
    pub reconstruction: RgbFrames,
    pub summary: ClipSummary,
    pub windows: Vec<WindowTokens>,
    pub worst: Vec<WorstCell>,
    pub usage: Option<Usage>,
    pub bits_per_pixel: f64,
    pub encode_ms_per_frame: f64,
    pub decode_ms_per_frame: f64,
    pub seconds: f64,
}

impl Analysis {
    /// Memory the result holds, roughly: the reconstruction twice over (it is also what the
    /// difference, heat-map and token views are made from).
    pub fn approx_bytes(&self) -> u64 {
        2 * self.reconstruction.data.len() as u64
    }

    pub fn start(&self) -> usize {
        self.key.settings.start
    }

    /// Whether clip frame `frame` was reconstructed.
    pub fn covers(&self, frame: usize) -> bool {
        frame >= self.start() && frame < self.start() + self.reconstruction.frames
    }

    /// The reconstruction of clip frame `frame`.
    pub fn frame(&self, frame: usize) -> Option<&[u8]> {
        let local = frame.checked_sub(self.start())?;
        let n = self.reconstruction.width * self.reconstruction.height * 3;
        self.reconstruction.data.get(local * n..(local + 1) * n)
    }

    /// (window index, latent frame) of clip frame `frame`.
    pub fn token_frame(&self, frame: usize) -> Option<(usize, usize)> {
        self.windows.iter().enumerate().find_map(|(i, w)| {
            let offset = frame.checked_sub(w.start)?;
            (offset < w.frames).then(|| {
                let tc = self.model.temporal.max(1);
                let padded = offset + w.padding.frames.0;
                let t = if self.model.video && padded > 0 {
                    (padded - 1) / tc + 1
                } else {
                    0
                };
                (i, t.min(w.grid.0.saturating_sub(1)))
            })
        })
    }

    /// The token cell (x, y) under image pixel (px, py), in window `window`.
    pub fn cell_at(&self, window: usize, px: f32, py: f32) -> Option<(usize, usize)> {
        let w = self.windows.get(window)?;
        let s = self.model.spatial as f32;
        let x = (px + w.padding.cols.0 as f32) / s;
        let y = (py + w.padding.rows.0 as f32) / s;
        let (_, gh, gw) = w.grid;
        (x >= 0.0 && y >= 0.0 && (x as usize) < gw && (y as usize) < gh)
            .then_some((x as usize, y as usize))
    }

    /// The first clip frame latent frame `t` of a window covers.
    pub fn first_frame_of(&self, window: usize, t: usize) -> usize {
        let Some(w) = self.windows.get(window) else {
            return self.start();
        };
        let padded = if t == 0 {
            0
        } else {
            1 + (t - 1) * self.model.temporal.max(1)
        };
        w.start
            + padded
                .saturating_sub(w.padding.frames.0)
                .min(w.frames.saturating_sub(1))
    }
}

/// The shorter side the released models were trained at: 360 for the -LowRes/-360p ones.
pub fn training_shorter_side(variant: &str) -> usize {
    if variant.contains("LowRes") || variant.contains("360p") {
        360
    } else {
        720
    }
}

/// Per-frame PSNR/SSIM of a reconstruction against frames `start..` of the original.
pub fn measure(
    original: &RgbFrames,
    start: usize,
    recon: &RgbFrames,
) -> anyhow::Result<ClipSummary> {
    let n = original.width * original.height * 3;
    let mut metrics = ClipMetrics::new(original.width, original.height);
    for (i, b) in recon.data.chunks_exact(n).enumerate() {
        let a = original
            .data
            .get((start + i) * n..(start + i + 1) * n)
            .ok_or_else(|| anyhow::anyhow!("frame {} is outside the clip", start + i))?;
        metrics.push(a, b)?;
    }
    Ok(metrics.finish()?)
}

/// Token values of one window as flat vectors.
fn values_from_tokens(tokens: &Tokens) -> anyhow::Result<TokenValues> {
    Ok(match tokens {
        Tokens::Discrete { indices, .. } => TokenValues::Discrete(
            indices
                .to_dtype(DType::I64)?
                .flatten_all()?
                .to_vec1::<i64>()?,
        ),
        Tokens::Continuous { latent } => {
            let channels = latent.dims().get(1).copied().unwrap_or(0);
            let latent = latent
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let pca = pca_rgb(&latent, channels);
            TokenValues::Continuous {
                channels,
                latent,
                pca,
            }
        }
    })
}

/// Projects channel-major vectors (c × n) on their first three principal components and maps
/// each component's 2nd..98th percentile range to 0..255.
pub fn pca_rgb(latent: &[f32], channels: usize) -> Vec<[u8; 3]> {
    let n = latent.len().checked_div(channels).unwrap_or(0);
    if n == 0 {
        return Vec::new();
    }
    let channel = |c: usize| latent.get(c * n..(c + 1) * n).unwrap_or(&[]);
    let means: Vec<f64> = (0..channels)
        .map(|c| channel(c).iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64)
        .collect();
    let mut cov = vec![0f64; channels * channels];
    for a in 0..channels {
        for b in a..channels {
            let (ma, mb) = (
                means.get(a).copied().unwrap_or(0.0),
                means.get(b).copied().unwrap_or(0.0),
            );
            let s: f64 = channel(a)
                .iter()
                .zip(channel(b))
                .map(|(&x, &y)| (f64::from(x) - ma) * (f64::from(y) - mb))
                .sum::<f64>()
                / n as f64;
            if let Some(v) = cov.get_mut(a * channels + b) {
                *v = s;
            }
            if let Some(v) = cov.get_mut(b * channels + a) {
                *v = s;
            }
        }
    }
    // Power iteration with deflation: three components of a 16×16 matrix are cheap.
    let mut components: Vec<Vec<f64>> = Vec::new();
    for k in 0..3.min(channels) {
        let mut v: Vec<f64> = (0..channels)
            .map(|i| if i % 3 == k { 1.0 } else { 0.1 })
            .collect();
        let mut eigen = 0.0;
        for _ in 0..100 {
            let mut w: Vec<f64> = (0..channels)
                .map(|i| {
                    (0..channels)
                        .map(|j| {
                            cov.get(i * channels + j).copied().unwrap_or(0.0)
                                * v.get(j).copied().unwrap_or(0.0)
                        })
                        .sum()
                })
                .collect();
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm < 1e-12 {
                break;
            }
            w.iter_mut().for_each(|x| *x /= norm);
            eigen = norm;
            v = w;
        }
        for i in 0..channels {
            for j in 0..channels {
                if let Some(c) = cov.get_mut(i * channels + j) {
                    *c -=
                        eigen * v.get(i).copied().unwrap_or(0.0) * v.get(j).copied().unwrap_or(0.0);
                }
            }
        }
        components.push(v);
    }
    let projections: Vec<Vec<f32>> = components
        .iter()
        .map(|comp| {
            (0..n)
                .map(|p| {
                    comp.iter()
                        .enumerate()
                        .map(|(c, w)| {
                            w * (f64::from(latent.get(c * n + p).copied().unwrap_or(0.0))
                                - means.get(c).copied().unwrap_or(0.0))
                        })
                        .sum::<f64>() as f32
                })
                .collect()
        })
        .collect();
    let ranges: Vec<(f32, f32)> = projections.iter().map(|p| percentile_range(p)).collect();
    (0..n)
        .map(|p| {
            let mut rgb = [0u8; 3];
            for (k, out) in rgb.iter_mut().enumerate() {
                let (Some(proj), Some(&(lo, hi))) = (projections.get(k), ranges.get(k)) else {
                    continue;
                };
                let v = proj.get(p).copied().unwrap_or(0.0);
                *out = (((v - lo) / (hi - lo).max(1e-6)).clamp(0.0, 1.0) * 255.0) as u8;
            }
            rgb
        })
        .collect()
}

/// The 2nd and 98th percentiles, so a few outliers do not wash out the picture.
pub fn percentile_range(values: &[f32]) -> (f32, f32) {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return (0.0, 1.0);
    }
    sorted.sort_by(f32::total_cmp);
    let at = |q: f64| {
        let i = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted.get(i).copied().unwrap_or(0.0)
    };
    (at(0.02), at(0.98))
}

/// Mean squared error of the pixels each token cell covers (in the padded frame, over the source
/// frames of its latent frame). Pixels added by padding do not count.
#[allow(clippy::too_many_arguments)]
fn pool_cells(
    original: &RgbFrames,
    recon: &RgbFrames,
    recon_start: usize,
    window: &WindowTokens,
    spatial: usize,
    temporal: usize,
    video: bool,
) -> Vec<f32> {
    let (gt, gh, gw) = window.grid;
    let mut sums = vec![0f64; gt * gh * gw];
    let mut counts = vec![0u64; gt * gh * gw];
    let (w, h) = (original.width, original.height);
    let n = w * h * 3;
    for offset in 0..window.frames {
        let frame = window.start + offset;
        let padded = offset + window.padding.frames.0;
        let t = if video && padded > 0 {
            ((padded - 1) / temporal.max(1) + 1).min(gt.saturating_sub(1))
        } else {
            0
        };
        let (Some(a), Some(b)) = (
            original.data.get(frame * n..(frame + 1) * n),
            frame
                .checked_sub(recon_start)
                .and_then(|local| recon.data.get(local * n..(local + 1) * n)),
        ) else {
            continue;
        };
        for (row, (ra, rb)) in a.chunks_exact(w * 3).zip(b.chunks_exact(w * 3)).enumerate() {
            let cy = ((row + window.padding.rows.0) / spatial.max(1)).min(gh.saturating_sub(1));
            for (col, (pa, pb)) in ra.chunks_exact(3).zip(rb.chunks_exact(3)).enumerate() {
                let cx = ((col + window.padding.cols.0) / spatial.max(1)).min(gw.saturating_sub(1));
                let e: f64 = pa
                    .iter()
                    .zip(pb)
                    .map(|(&x, &y)| {
                        let d = f64::from(x) - f64::from(y);
                        d * d
                    })
                    .sum();
                let cell = (t * gh + cy) * gw + cx;
                if let (Some(s), Some(c)) = (sums.get_mut(cell), counts.get_mut(cell)) {
                    *s += e;
                    *c += 3;
                }
            }
        }
    }
    sums.iter()
        .zip(&counts)
        .map(|(&s, &c)| if c == 0 { 0.0 } else { (s / c as f64) as f32 })
        .collect()
}

/// Codebook usage over every index of a run.
pub fn usage(indices: impl Iterator<Item = i64>) -> Usage {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    let mut tokens = 0;
    for i in indices {
        *counts.entry(i).or_default() += 1;
        tokens += 1;
    }
    let entropy_bits = counts
        .values()
        .map(|&c| {
            let p = c as f64 / tokens.max(1) as f64;
            -p * p.log2()
        })
        .sum();
    let mut counts: Vec<(i64, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Usage {
        unique: counts.len(),
        counts,
        tokens,
        entropy_bits,
    }
}

/// FSQ digits and code values of a discrete index, for the hover readout.
pub fn describe_index(index: i64) -> ([i64; fsq::FSQ_DIMS], [f32; fsq::FSQ_DIMS]) {
    (fsq::digits_from_index(index), fsq::code_from_index(index))
}

/// Builds the analysis of a finished run.
pub fn analyse(
    key: JobKey,
    model: ModelFacts,
    original: &RgbFrames,
    run: RunResult,
    dtype: DType,
    seconds: f64,
) -> anyhow::Result<Analysis> {
    let start = key.settings.start;
    let summary = measure(original, start, &run.reconstruction)?;
    let mut windows = Vec::with_capacity(run.windows.len());
    let mut positions = 0;
    let (mut encode_s, mut decode_s) = (0.0, 0.0);
    for w in &run.windows {
        encode_s += w.encode_seconds;
        decode_s += w.decode_seconds;
        let (grid, values) = match &w.tokens {
            Some(tokens) => (tokens.grid(), values_from_tokens(tokens)?),
            None => ((0, 0, 0), TokenValues::None),
        };
        positions += grid.0 * grid.1 * grid.2;
        let mut window = WindowTokens {
            start: start + w.start,
            frames: w.frames,
            padding: w.padding,
            grid,
            values,
            cell_error: Vec::new(),
        };
        window.cell_error = pool_cells(
            original,
            &run.reconstruction,
            start,
            &window,
            model.spatial,
            model.temporal,
            model.video,
        );
        windows.push(window);
    }
    let frames = run.reconstruction.frames;
    let pixels = frames * original.width * original.height;
    let usage = model.discrete.then(|| {
        usage(windows.iter().flat_map(|w| match &w.values {
            TokenValues::Discrete(v) => v.clone(),
            _ => Vec::new(),
        }))
    });
    let mut analysis = Analysis {
        bits_per_pixel: crate::analysis::stream::bits_per_pixel(
            positions,
            model.discrete,
            model.latent_channels,
            dtype.size_in_bytes() * 8,
            pixels,
        ),
        encode_ms_per_frame: encode_s * 1e3 / frames.max(1) as f64,
        decode_ms_per_frame: decode_s * 1e3 / frames.max(1) as f64,
        key,
        model,
        reconstruction: run.reconstruction,
        summary,
        windows,
        worst: Vec::new(),
        usage,
        seconds,
    };
    analysis.worst = worst_cells(&analysis, 20);
    Ok(analysis)
}

/// The `count` token cells with the largest pooled error.
fn worst_cells(analysis: &Analysis, count: usize) -> Vec<WorstCell> {
    let mut all: Vec<WorstCell> = Vec::new();
    for (wi, w) in analysis.windows.iter().enumerate() {
        let (_, gh, gw) = w.grid;
        for (i, &mse) in w.cell_error.iter().enumerate() {
            let (t, y, x) = (
                i / (gh * gw).max(1),
                (i / gw.max(1)) % gh.max(1),
                i % gw.max(1),
            );
            all.push(WorstCell {
                window: wi,
                t,
                x,
                y,
                mse,
                frame: 0,
            });
        }
    }
    all.sort_by(|a, b| b.mse.total_cmp(&a.mse));
    all.truncate(count);
    for cell in &mut all {
        cell.frame = analysis.first_frame_of(cell.window, cell.t);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_and_entropy() {
        let u = usage([1, 1, 2, 3].into_iter());
        assert_eq!(u.tokens, 4);
        assert_eq!(u.unique, 3);
        assert_eq!(u.counts[0], (1, 2));
        assert!((u.entropy_bits - 1.5).abs() < 1e-12);
    }

    #[test]
    fn pca_separates_a_dominant_direction() {
        // Two channels, four positions along one line: the first component carries it all.
        let latent = [0.0, 1.0, 2.0, 3.0, 0.0, 2.0, 4.0, 6.0];
        let rgb = pca_rgb(&latent, 2);
        assert_eq!(rgb.len(), 4);
        let reds: Vec<u8> = rgb.iter().map(|p| p[0]).collect();
        assert!(reds.windows(2).all(|w| w[0] <= w[1]) || reds.windows(2).all(|w| w[0] >= w[1]));
    }
}
