//! The memory planner: before a job allocates, estimate its peak from the model's configuration,
//! the frame size, the temporal window, the dtype and the device; compare it with a budget; when it
//! does not fit, pick a smaller temporal window and then spatial tiling; when nothing fits, refuse
//! with the figures, before anything large is allocated.
//!
//! The estimate walks the encoder and decoder levels for the largest activation (channels × latent
//! frames × rows × columns at the highest resolution the network runs at). A forward pass holds a
//! roughly fixed number of tensors of that size at its peak (block input, normalised copy, the
//! factorized convolution's two outputs, the causal padding, the residual sum), so the working set
//! is that activation times a per-device factor, plus the wrapper's own buffers. The factors are
//! fitted to `tokenscope bench` peaks (CPU, this machine; CUDA, the H200 runs of the GPU kit), and a
//! test holds the estimate within ±25% of measured peaks.

use std::fmt;

use candle_core::DType;

use crate::tokenizer::config::NetworkConfig;
use crate::tokenizer::model::Tokenizer;
use crate::tokenizer::runner::{self, Tiling, SPATIAL_ALIGN};

/// Why a job cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("`{0}` is not a memory size: write it like 4GiB, 800MB or 1.5G")]
    BadSize(String),
    #[error(
        "{what} needs about {} but the memory budget is {}{}: {advice}",
        human_bytes(*needed),
        human_bytes(*budget),
        budget_source.suffix()
    )]
    OverBudget {
        what: String,
        needed: u64,
        budget: u64,
        budget_source: BudgetSource,
        advice: String,
    },
}

/// Where the budget came from, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    /// `--memory-budget` or the viewer's setting.
    Given,
    /// A fraction of the memory available when the job started.
    Available,
}

impl BudgetSource {
    fn suffix(self) -> &'static str {
        match self {
            BudgetSource::Given => " (as given)",
            BudgetSource::Available => " (80% of the memory available)",
        }
    }
}

/// How much memory a job may use in all: the process's peak (RAM) or the GPU's (VRAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: BudgetSource,
}

/// Share of the available memory a job may take by default: the rest is for the desktop, the
/// viewer's frames and the estimate's error.
pub const DEFAULT_BUDGET_FRACTION: f64 = 0.8;

impl Budget {
    pub fn given(bytes: u64) -> Self {
        Self {
            bytes,
            source: BudgetSource::Given,
        }
    }

    /// `held` (what the process or GPU holds now) plus a safe share of what is still available.
    pub fn from_available(held: u64, available: u64) -> Self {
        Self {
            bytes: held.saturating_add((available as f64 * DEFAULT_BUDGET_FRACTION) as u64),
            source: BudgetSource::Available,
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", human_bytes(self.bytes), self.source.suffix())
    }
}

/// Parses `4GiB`, `800MB`, `1.5G`, `512M`, `2048` (bytes). Decimal units (kB, MB, GB) are powers of
/// 1000, binary ones (KiB, MiB, GiB) and bare letters (K, M, G) powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, PlanError> {
    let bad = || PlanError::BadSize(text.to_string());
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024f64.powi(2),
        "mb" => 1e6,
        "g" | "gib" => 1024f64.powi(3),
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        _ => return Err(bad()),
    };
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

pub use crate::sys::human_bytes;

/// Where the job's tensors live: the planner's factors differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Cpu,
    Cuda,
}

impl Target {
    pub fn of(device: &candle_core::Device) -> Self {
        if device.is_cuda() {
            Target::Cuda
        } else {
            Target::Cpu
        }
    }
}

/// Peak working set per byte of the largest activation, fitted to `bench` (see the module note).
/// The video networks hold more such tensors (causal padding, the factorized convolution's two
/// halves) than the image ones; half precision keeps norms and softmax in f32.
fn activation_factor(target: Target, video: bool, dtype: DType) -> f64 {
    let video_factor = match (target, dtype) {
        (Target::Cpu, _) => 11.5,
        (Target::Cuda, DType::F32) => 10.0,
        (Target::Cuda, _) => 14.0,
    };
    if video {
        video_factor
    } else {
        video_factor * 0.8
    }
}

/// Allocator slack, thread stacks and small tensors of a running job, independent of the input.
const FIXED_WORKING_BYTES: u64 = 128 << 20;

/// Elements of the largest activation the network holds for one padded window of
/// `frames × height × width` (sides multiples of 16, frames 1 + 8k for video): the widest level at
/// its own resolution, in the encoder or the decoder.
pub fn largest_activation_elements(
    cfg: &NetworkConfig,
    frames: usize,
    height: usize,
    width: usize,
) -> u64 {
    let patch = cfg.patch_size.max(1);
    let video = cfg.family.is_video();
    let mut t = if video {
        1 + frames.saturating_sub(1) / patch
    } else {
        1
    };
    let (mut h, mut w) = (height / patch, width / patch);
    let (top_t, top_h, top_w) = (t, h, w);
    let mut largest: u64 = 0;
    let mut note = |channels: usize, t: usize, h: usize, w: usize| {
        largest = largest.max(channels as u64 * t as u64 * h as u64 * w as u64);
    };
    note(cfg.channels, t, h, w);
    for (level, mult) in cfg.channels_mult.iter().enumerate() {
        note(cfg.channels * mult, t, h, w);
        let (spatial, temporal) = cfg.encoder_downsample(level);
        if spatial {
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
        }
        if temporal {
            t = 1 + t.saturating_sub(1) / 2;
        }
    }
    // The decoder climbs back: level `nres - 1` runs at the latent grid, each upsampling level
    // hands twice the resolution to the next.
    for level in (0..cfg.decoder_channels_mult.len()).rev() {
        let channels = cfg.channels * cfg.decoder_channels_mult.get(level).copied().unwrap_or(1);
        note(channels, t, h, w);
        let (spatial, temporal) = cfg.decoder_upsample(level);
        if spatial {
            (h, w) = ((h * 2).min(top_h), (w * 2).min(top_w));
        }
        if temporal {
            t = (1 + t.saturating_sub(1) * 2).min(top_t);
        }
    }
    largest
}

/// Peak bytes of one encode and decode of `batch` padded inputs of `frames × height × width`
/// beyond what the process holds: the network's working set and its input and output tensors.
pub fn network_working_bytes(
    cfg: &NetworkConfig,
    frames: usize,
    height: usize,
    width: usize,
    batch: usize,
    dtype: DType,
    target: Target,
) -> u64 {
    let video = cfg.family.is_video();
    let activation = largest_activation_elements(cfg, frames, height, width) * batch as u64;
    let network =
        activation as f64 * dtype.size_in_bytes() as f64 * activation_factor(target, video, dtype);
    let values = (batch * frames * height * width * 3 * dtype.size_in_bytes()) as u64;
    // Each wavelet level holds its input and its output, two input-sized tensors; narrow
    // networks peak there, at full resolution.
    FIXED_WORKING_BYTES + network as u64 + 2 * values
}

/// Peak bytes a wrapped run of one window of source frames adds to what the process holds: the
/// network on the padded window (or one tile of it), the wrapper's uint8 and f32 copies of the
/// window, and the blending sums of a tiled run.
pub fn window_working_bytes(
    cfg: &NetworkConfig,
    frames: usize,
    height: usize,
    width: usize,
    dtype: DType,
    target: Target,
    tiling: Option<Tiling>,
) -> u64 {
    let video = cfg.family.is_video();
    let padding = runner::padding_for(frames, height, width, video);
    let padded_frames = (frames + padding.frames.0 + padding.frames.1) as u64;
    let padded_h = height + padding.rows.0 + padding.rows.1;
    let padded_w = width + padding.cols.0 + padding.cols.1;
    let pixels = padded_frames * padded_h as u64 * padded_w as u64;
    let (run_h, run_w, blend) = match tiling {
        Some(t) if t.tile < padded_h.max(padded_w) => {
            let tile = t.tile.div_ceil(SPATIAL_ALIGN) * SPATIAL_ALIGN;
            // f32 sums of 3 channels per pixel and one weight per frame pixel.
            let sums = pixels * 3 * 4 + padded_h as u64 * padded_w as u64 * 4;
            (tile.min(padded_h), tile.min(padded_w), sums)
        }
        _ => (padded_h, padded_w, 0),
    };
    // Image networks take every frame of a window as one batch item.
    let (net_frames, batch) = if video {
        (padded_frames as usize, 1)
    } else {
        (1, padded_frames as usize)
    };
    let network = network_working_bytes(cfg, net_frames, run_h, run_w, batch, dtype, target);
    // uint8: the window, its padded copy, the reconstruction and its cropped copy; f32: one
    // conversion buffer, per tile when tiled (on the CPU the network takes it over as the
    // patcher's input, and the unpatcher's output is read back in place).
    let run_pixels = padded_frames * run_h as u64 * run_w as u64;
    let wrapper = pixels * 3 * 4 + run_pixels * 3 * 4;
    network + wrapper + blend
}

/// What the planner decided for a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Frames per temporal window (1 for image networks).
    pub temporal_window: usize,
    pub tiling: Option<Tiling>,
    /// Expected peak of the whole job: what was held when planning plus the window's working set.
    pub estimate: u64,
    pub budget: Budget,
    /// What was changed from the request, and why; `None` when the request fits as it is.
    pub adjustment: Option<String>,
}

/// A job to plan: one model over frames of one size.
#[derive(Clone, Copy, Debug)]
pub struct JobSpec<'a> {
    pub config: &'a NetworkConfig,
    pub height: usize,
    pub width: usize,
    /// Frames in the clip (bounds the window).
    pub frames: usize,
    /// The temporal window asked for (video networks).
    pub requested_window: usize,
    pub dtype: DType,
    pub target: Target,
    /// Bytes the process (or the GPU) holds already: decoded frames, loaded weights.
    pub held: u64,
    /// Bytes the job will keep besides the window working set (whole-clip results it returns).
    pub kept: u64,
    /// Whether tiles may be used: a job that must return the clip's tokens cannot tile.
    pub tiling_allowed: bool,
}

impl<'a> JobSpec<'a> {
    /// `model` over `frames` frames of `width`×`height` at the wrapper's default window, against
    /// what the process holds now, keeping nothing else, tiles allowed. Callers override the
    /// fields that differ.
    pub fn for_model(model: &'a Tokenizer, (width, height): (usize, usize), frames: usize) -> Self {
        let device = model.device();
        JobSpec {
            config: model.config(),
            height,
            width,
            frames,
            requested_window: runner::DEFAULT_TEMPORAL_WINDOW,
            dtype: model.dtype(),
            target: Target::of(device),
            held: held_bytes(device),
            kept: 0,
            tiling_allowed: true,
        }
    }
}

/// [`plan`] against `budget` bytes, or when `None` the default budget of `device` (the job's).
pub fn plan_on(
    device: &candle_core::Device,
    job: &JobSpec,
    budget: Option<u64>,
) -> Result<Plan, PlanError> {
    let budget = budget.map_or_else(|| default_budget(device, job.held), Budget::given);
    plan(job, budget)
}

/// Tile edges tried, largest first: attention is global, so bigger tiles stay closer to the
/// untiled result.
const TILE_SIDES: [usize; 7] = [1536, 1024, 768, 512, 384, 256, 128];
/// Overlap between tiles, blended linearly.
pub const TILE_OVERLAP: usize = 64;

/// Chooses how to run `job` within `budget`: untiled at the requested window if it fits, else a
/// smaller temporal window (video), else spatial tiles from large to small, else an error.
pub fn plan(job: &JobSpec, budget: Budget) -> Result<Plan, PlanError> {
    let video = job.config.family.is_video();
    let requested = if video {
        job.requested_window.clamp(1, job.frames.max(1))
    } else {
        1
    };
    // Smaller windows only help down to one temporal step of the network (1 + 8 frames is the
    // wrapper's smallest padded window).
    let mut windows = vec![requested];
    if video && requested > 1 + runner::TEMPORAL_ALIGN {
        windows.push(1 + runner::TEMPORAL_ALIGN);
    }
    let estimate = |window: usize, tiling: Option<Tiling>| {
        job.held
            + job.kept
            + window_working_bytes(
                job.config, window, job.height, job.width, job.dtype, job.target, tiling,
            )
    };
    let mut candidates: Vec<(usize, Option<Tiling>)> = windows.iter().map(|&w| (w, None)).collect();
    let longest_side = job.height.max(job.width);
    for &window in windows.iter().filter(|_| job.tiling_allowed) {
        for tile in TILE_SIDES.iter().copied().filter(|&t| t < longest_side) {
            candidates.push((
                window,
                Some(Tiling {
                    tile,
                    overlap: TILE_OVERLAP,
                }),
            ));
        }
    }
    // Candidates are in order of preference: untiled (asked window, then the shorter one), then
    // tiles from large to small for each window. The first that fits wins.
    for &(window, tiling) in &candidates {
        let needed = estimate(window, tiling);
        if needed <= budget.bytes {
            let mut changes = Vec::new();
            if window != requested {
                changes.push(format!(
                    "temporal window {window} instead of {requested} frames"
                ));
            }
            if let Some(t) = tiling {
                changes.push(format!(
                    "spatial tiles of {0}x{0} px with {1} px blended overlap",
                    t.tile, t.overlap
                ));
            }
            let adjustment = (!changes.is_empty()).then(|| {
                format!(
                    "{} (the untiled run at {} frames needs about {}, over the budget of {})",
                    changes.join(" and "),
                    requested,
                    human_bytes(estimate(requested, None)),
                    budget
                )
            });
            return Ok(Plan {
                temporal_window: window,
                tiling,
                estimate: needed,
                budget,
                adjustment,
            });
        }
    }
    let smallest = candidates
        .iter()
        .map(|&(w, t)| estimate(w, t))
        .min()
        .unwrap_or(0);
    Err(PlanError::OverBudget {
        what: format!(
            "{} on {}x{} frames, even with the smallest window{},",
            job.config.family.describe(),
            job.width,
            job.height,
            if job.tiling_allowed { " and tiles" } else { "" }
        ),
        needed: smallest,
        budget: budget.bytes,
        budget_source: budget.source,
        advice: if job.tiling_allowed {
            "raise the memory budget (--memory-budget), free memory, or use smaller frames"
        } else {
            "raise the memory budget (--memory-budget), free memory, or use smaller frames; tokens cannot be computed in tiles"
        }
        .into(),
    })
}

/// The default budget for a job on `device`: `held` (from [`held_bytes`]) plus 80% of what is
/// still available (RAM, or free VRAM on CUDA).
pub fn default_budget(device: &candle_core::Device, held: u64) -> Budget {
    if let Ok(Some(gpu)) = crate::device::gpu_memory(device) {
        return Budget::from_available(held, gpu.device_total.saturating_sub(gpu.device_used));
    }
    Budget::from_available(held, crate::sys::available_ram().unwrap_or(8 << 30))
}

/// What the process holds now where the job's tensors will live: resident RAM on the CPU, the
/// GPU's used memory on CUDA.
pub fn held_bytes(device: &candle_core::Device) -> u64 {
    match crate::device::gpu_memory(device) {
        Ok(Some(gpu)) => gpu.device_used,
        _ => {
            crate::compute::release_scratch_pool();
            crate::sys::release_freed_memory();
            crate::sys::rss_bytes().unwrap_or(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::config::find_variant;

    fn config(name: &str) -> NetworkConfig {
        find_variant(name)
            .expect("a released variant")
            .config
            .clone()
    }

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("800MB").unwrap(), 800_000_000);
        assert_eq!(parse_size(" 512 mib ").unwrap(), 512 << 20);
        assert_eq!(parse_size("2048").unwrap(), 2048);
        for nonsense in [
            "",
            "lots",
            "-1G",
            "1.2.3G",
            "5 parsecs",
            "0",
            "NaNG",
            "1e30TB",
        ] {
            let err = parse_size(nonsense).unwrap_err().to_string();
            assert!(err.contains("not a memory size"), "{nonsense}: {err}");
        }
    }

    /// The largest activation of CV8x8x8 on 17 frames of 720p is its first level: 256 channels
    /// over 5 × 180 × 320 patched cells.
    #[test]
    fn largest_activation_is_the_widest_full_resolution_level() {
        let cv = config("CV8x8x8");
        assert_eq!(
            largest_activation_elements(&cv, 17, 720, 1280),
            256 * 5 * 180 * 320
        );
        // CI8x8's decoder runs its 512-channel level at the patched resolution.
        let ci = config("CI8x8");
        assert_eq!(
            largest_activation_elements(&ci, 1, 512, 512),
            512 * 128 * 128
        );
        // Twice the frames, about twice the activation; a quarter of the area, a quarter.
        let long = largest_activation_elements(&cv, 33, 256, 256);
        let short = largest_activation_elements(&cv, 17, 256, 256);
        assert_eq!(long * 5, short * 9);
        assert_eq!(
            largest_activation_elements(&cv, 17, 128, 128) * 4,
            largest_activation_elements(&cv, 17, 256, 256)
        );
    }

    fn job(cfg: &NetworkConfig, frames: usize, height: usize, width: usize) -> JobSpec<'_> {
        JobSpec {
            config: cfg,
            height,
            width,
            frames,
            requested_window: 17,
            dtype: DType::F32,
            target: Target::Cpu,
            held: 500 << 20,
            kept: 0,
            tiling_allowed: true,
        }
    }

    #[test]
    fn a_job_that_fits_runs_as_asked() {
        let cv = config("CV8x8x8");
        let plan = plan(&job(&cv, 33, 720, 1280), Budget::given(16 << 30)).unwrap();
        assert_eq!((plan.temporal_window, plan.tiling), (17, None));
        assert!(plan.adjustment.is_none());
        assert!(
            plan.estimate > 3 << 30 && plan.estimate < 6 << 30,
            "{}",
            plan.estimate
        );
    }

    /// Over budget, a shorter window comes first, then tiles from large to small; every chosen
    /// plan fits and says what it changed.
    #[test]
    fn over_budget_the_planner_shortens_the_window_then_tiles() {
        let cv = config("CV8x8x8");
        let spec = job(&cv, 17, 1080, 1920);
        let full = plan(&spec, Budget::given(64 << 30)).unwrap().estimate;
        let shorter = plan(&spec, Budget::given(full - 1)).unwrap();
        assert_eq!((shorter.temporal_window, shorter.tiling), (9, None));
        let message = shorter.adjustment.clone().unwrap();
        assert!(message.contains("temporal window 9"), "{message}");
        let tiled = plan(&spec, Budget::given(shorter.estimate - 1)).unwrap();
        let tile = tiled.tiling.expect("tiles");
        assert!(tile.tile < 1920 && tiled.estimate < shorter.estimate);
        assert!(tiled.adjustment.unwrap().contains("spatial tiles"));
        let mut last = u64::MAX;
        for budget in [4u64 << 30, 3 << 30, 2 << 30] {
            let p = plan(&spec, Budget::given(budget)).unwrap();
            assert!(p.estimate <= budget && p.estimate <= last);
            last = p.estimate;
        }
    }

    #[test]
    fn nothing_fits_a_tiny_budget_and_the_error_says_why() {
        let cv = config("CV8x8x8");
        let err = plan(&job(&cv, 17, 1080, 1920), Budget::given(100 << 20)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PlanError::OverBudget { .. }));
        assert!(
            text.contains("100 MiB") && text.contains("--memory-budget") && !text.contains('\n'),
            "{text}"
        );
    }

    /// A 4K clip with the full-size video model fits the budget of a 24 GB machine with tiles.
    #[test]
    fn four_k_fits_a_desktop_budget_with_tiles() {
        let cv = config("CV8x8x8");
        let p = plan(
            &job(&cv, 17, 2160, 3840),
            Budget::from_available(500 << 20, 20 << 30),
        )
        .unwrap();
        assert!(p.tiling.is_some(), "{p:?}");
        assert!(p.estimate <= p.budget.bytes);
    }

    #[test]
    fn image_networks_ignore_the_temporal_window() {
        let ci = config("CI8x8");
        let p = plan(&job(&ci, 100, 1080, 1920), Budget::given(8 << 30)).unwrap();
        assert_eq!(p.temporal_window, 1);
    }
}
