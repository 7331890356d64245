//! One job's results: the reconstruction of a frame range, its metrics and the token maps the
//! panels draw. Collected on the worker thread from `analysis::stream`'s windows; read-only
//! afterwards.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::DType;
use serde::Serialize;

use crate::analysis::stream::{AnalysisError, ClipAnalysis, FinishedWindow};
use crate::analysis::ModelSource;
use crate::media::RgbFrames;
use crate::metrics::ClipSummary;
use crate::tokenizer::fsq;
use crate::tokenizer::runner::Padding;
use crate::tokenizer::{TokenizerError, Tokens};

/// What a job runs: the input, the model and the settings. Results are cached under it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobKey {
    pub input: PathBuf,
    /// The catalogue key of the model.
    pub model: ModelSource,
    pub settings: RunSettings,
}

/// The frame range and wrapper settings of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunSettings {
    /// Source frame of the loaded clip's first frame (a long clip is held a range at a time),
    /// so results of different ranges never mix.
    pub clip_start: usize,
    /// First frame of the run, counted in the loaded clip.
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

/// The shorter side NVIDIA's released models were trained at: 360 for the -LowRes/-360p ones.
/// Tokenscope-trained models say theirs in config.json.
pub fn training_shorter_side(variant: &str) -> usize {
    if variant.contains("LowRes") || variant.contains("360p") {
        360
    } else {
        720
    }
}

/// Token values of one window as flat vectors.
fn values_from_tokens(tokens: &Tokens) -> candle_core::Result<TokenValues> {
    Ok(match tokens {
        Tokens::Discrete { indices, .. } => TokenValues::Discrete(
            indices
                .to_dtype(DType::I64)?
                .flatten_all()?
                .to_vec1::<i64>()?,
        ),
        Tokens::Continuous { latent } => {
            // (B, C, H, W) for images, (B, C, T, H, W) for videos.
            let channels = latent.dim(1)?;
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
    // Channel-major: one row of `n` values per channel.
    let rows: Vec<&[f32]> = latent.chunks_exact(n).collect();
    let means: Vec<f64> = rows
        .iter()
        .map(|row| row.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64)
        .collect();
    let mut cov = vec![vec![0f64; channels]; channels];
    for (a, (row_a, mean_a)) in rows.iter().zip(&means).enumerate() {
        for (b, (row_b, mean_b)) in rows.iter().zip(&means).enumerate().skip(a) {
            let s = row_a
                .iter()
                .zip(row_b.iter())
                .map(|(&x, &y)| (f64::from(x) - mean_a) * (f64::from(y) - mean_b))
                .sum::<f64>()
                / n as f64;
            cov[a][b] = s;
            cov[b][a] = s;
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
            let mut w: Vec<f64> = cov
                .iter()
                .map(|row| row.iter().zip(&v).map(|(c, x)| c * x).sum())
                .collect();
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm < 1e-12 {
                break;
            }
            w.iter_mut().for_each(|x| *x /= norm);
            eigen = norm;
            v = w;
        }
        for (row, vi) in cov.iter_mut().zip(&v) {
            for (c, vj) in row.iter_mut().zip(&v) {
                *c -= eigen * vi * vj;
            }
        }
        components.push(v);
    }
    let mut rgb = vec![[0u8; 3]; n];
    for (k, component) in components.iter().enumerate() {
        let mut projection = vec![0f64; n];
        for ((row, weight), mean) in rows.iter().zip(component).zip(&means) {
            for (acc, &x) in projection.iter_mut().zip(row.iter()) {
                *acc += weight * (f64::from(x) - mean);
            }
        }
        let projection: Vec<f32> = projection.into_iter().map(|v| v as f32).collect();
        let (lo, hi) = percentile_range(&projection);
        for (pixel, v) in rgb.iter_mut().zip(&projection) {
            pixel[k] = (((v - lo) / (hi - lo).max(1e-6)).clamp(0.0, 1.0) * 255.0) as u8;
        }
    }
    rgb
}

/// The 2nd and 98th percentiles, so a few outliers do not wash out the picture.
pub fn percentile_range(values: &[f32]) -> (f32, f32) {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return (0.0, 1.0);
    }
    sorted.sort_by(f32::total_cmp);
    // `q` in [0, 1] picks an index within the sorted, non-empty values.
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.02), at(0.98))
}

/// Mean squared error of the pixels each token cell covers (in the padded frame, over the source
/// frames of its latent frame). Pixels added by padding do not count. `original` and `recon` hold
/// the same frames; the window's are `first .. first + window.frames` of them.
fn pool_cells(
    original: &RgbFrames,
    recon: &RgbFrames,
    first: usize,
    window: &WindowTokens,
    (spatial, temporal, video): (usize, usize, bool),
) -> Vec<f32> {
    let (gt, gh, gw) = window.grid;
    let mut sums = vec![0f64; gt * gh * gw];
    let mut counts = vec![0u64; gt * gh * gw];
    let (w, h) = (original.width, original.height);
    let n = w * h * 3;
    let frames = original
        .data
        .chunks_exact(n)
        .zip(recon.data.chunks_exact(n))
        .skip(first)
        .take(window.frames);
    for (offset, (a, b)) in frames.enumerate() {
        let padded = offset + window.padding.frames.0;
        let t = if video && padded > 0 {
            ((padded - 1) / temporal.max(1) + 1).min(gt.saturating_sub(1))
        } else {
            0
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

/// What the viewer keeps of a run, window by window, as `analysis::stream` hands them over: the
/// reconstruction, the token values and each cell's error. The measurements come from the stream.
pub struct Collector {
    /// Clip frame of the run's first frame.
    start: usize,
    geometry: (usize, usize, bool),
    width: usize,
    height: usize,
    reconstruction: Vec<u8>,
    windows: Vec<WindowTokens>,
}

impl Collector {
    /// For a run from clip frame `start` of `model`'s kind (spatial and temporal compression,
    /// video or image), reserving room for `frames` frames of `width`×`height`.
    pub fn new(
        start: usize,
        model: &ModelFacts,
        (width, height): (usize, usize),
        frames: usize,
    ) -> Self {
        Self {
            start,
            geometry: (model.spatial, model.temporal, model.video),
            width,
            height,
            reconstruction: Vec::with_capacity(frames * width * height * 3),
            windows: Vec::new(),
        }
    }

    /// Keeps one finished window.
    pub fn keep(&mut self, done: FinishedWindow<'_>) -> Result<(), AnalysisError> {
        let FinishedWindow {
            start,
            original,
            run,
        } = done;
        for w in &run.windows {
            let (grid, values) = match &w.tokens {
                Some(tokens) => (
                    tokens.grid(),
                    values_from_tokens(tokens).map_err(TokenizerError::from)?,
                ),
                None => ((0, 0, 0), TokenValues::None),
            };
            let mut window = WindowTokens {
                start: self.start + start + w.start,
                frames: w.frames,
                padding: w.padding,
                grid,
                values,
                cell_error: Vec::new(),
            };
            window.cell_error = pool_cells(
                original,
                &run.reconstruction,
                w.start,
                &window,
                self.geometry,
            );
            self.windows.push(window);
        }
        self.reconstruction
            .extend_from_slice(&run.reconstruction.data);
        Ok(())
    }

    /// The analysis, once the stream has measured the whole run.
    pub fn finish(
        self,
        key: JobKey,
        model: ModelFacts,
        measured: ClipAnalysis,
        bits_per_pixel: f64,
        seconds: f64,
    ) -> Result<Analysis, AnalysisError> {
        let frames = measured.frames;
        let reconstruction = RgbFrames::new(frames, self.height, self.width, self.reconstruction)?;
        let usage = model.discrete.then(|| {
            usage(
                self.windows
                    .iter()
                    .flat_map(|w| match &w.values {
                        TokenValues::Discrete(v) => v.as_slice(),
                        _ => &[],
                    })
                    .copied(),
            )
        });
        let per_frame = |s: f64| s * 1e3 / frames.max(1) as f64;
        let mut analysis = Analysis {
            bits_per_pixel,
            encode_ms_per_frame: per_frame(measured.encode_seconds()),
            decode_ms_per_frame: per_frame(measured.decode_seconds()),
            key,
            model,
            reconstruction,
            summary: measured.summary,
            windows: self.windows,
            worst: Vec::new(),
            usage,
            seconds,
        };
        analysis.worst = worst_cells(&analysis, 20);
        Ok(analysis)
    }
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
