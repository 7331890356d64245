//! `train`: a Cosmos-architecture tokenizer trained with the Cosmos recipe, written as a checkpoint
//! every Tokenscope command loads (model.safetensors + config.json + MODEL_CARD.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;

use super::ComputeArgs;
use crate::tokenizer::checkpoint;
use crate::tokenizer::config::{self, NetworkConfig};
use crate::train::data::{self, DataSpec};
use crate::train::losses::LossWeights;
use crate::train::{self as training, Progress, TrainInputs, TrainSettings};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Recipe {
    Stage1,
    Stage2,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The released variant whose architecture to train (CI8x8, DV8x16x16, CV4x8x8, ...).
    #[arg(long)]
    variant: String,
    /// `nano` (32 channels at the highest resolution, the official multipliers halved for video
    /// networks, one residual block per level) or a JSON config file.
    #[arg(long, default_value = "nano")]
    width: String,
    /// Images, videos or folders of them; `clip.mp4@80-` or `clip.mp4@0-120` takes a frame range.
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<String>,
    /// Fine-tune from this checkpoint (same architecture; mismatched keys start fresh).
    #[arg(long, conflicts_with = "inflate")]
    init: Option<PathBuf>,
    /// Start a video network from a trained image network of the same width and patch size
    /// (a CI model for CV, DI for DV): its 2-D kernels become the spatial halves, the temporal
    /// halves start as identities. The image network's features carry over; a fine-tune adapts
    /// them to per-frame normalisation and learns the temporal part.
    #[arg(long)]
    inflate: Option<PathBuf>,
    /// Output folder. Running again with the same folder resumes from its last checkpoint.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Model name written to config.json and the model card (default: tokenscope-nano-<variant>,
    /// or tokenscope-<variant>-width<channels> for a --width file).
    #[arg(long)]
    name: Option<String>,
    /// Total optimiser steps (a resumed run continues up to this number).
    #[arg(long, default_value_t = 20_000)]
    steps: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Square crop side in pixels (a multiple of the spatial compression).
    #[arg(long, default_value_t = 128)]
    crop: usize,
    /// More square crop sides, comma-separated (e.g. `192,256,320`): each step draws one of them or
    /// `--crop`, with the batch scaled to about the same pixels, so the model sees several sizes.
    #[arg(long, value_delimiter = ',')]
    extra_crops: Vec<usize>,
    /// Colour jitter strength: per crop a brightness shift in ±J, a gain per channel in 1 ± J and
    /// a shift per channel in ±J/2 ([-1, 1] units); 0 for none.
    #[arg(long, default_value_t = 0.0)]
    color_jitter: f64,
    /// Longest temporal window in frames (video networks train on 1 + k·t frames up to this).
    #[arg(long, default_value_t = 17)]
    max_frames: usize,
    /// Share of single-frame steps for video networks.
    #[arg(long, default_value_t = 0.15)]
    image_fraction: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = 500)]
    validate_every: usize,
    /// Frames are scaled so their shorter side is at most this many pixels before cropping.
    #[arg(long, default_value_t = 360)]
    max_side: usize,
    /// Storage type of model.safetensors: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    save_dtype: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Loss recipe of the Cosmos paper: `stage1` (L1 + perceptual) or `stage2` (adds optical-flow
    /// consistency, Gram texture, and an adversarial term for the last 40% of the steps); usually
    /// stage 2 fine-tunes a stage-1 run (same -o, more --steps).
    #[arg(long, value_enum, default_value = "stage1")]
    recipe: Recipe,
    /// torchvision VGG-19 weights (safetensors of `vgg19().state_dict()`) for the perceptual and
    /// texture terms; without them those terms are off and the run says so.
    #[arg(long)]
    vgg19: Option<PathBuf>,
    /// Weight of a chroma L1 term (the error minus its mean over R, G, B); footage of muted
    /// colours otherwise trains luminance first and colour thousands of steps later. 0 for none.
    #[arg(long, default_value_t = 0.0)]
    chroma_weight: f64,
    /// Weight of a mean-squared-error term, the measure PSNR is made of; a late stage with it
    /// raises PSNR that L1 alone leaves (L1 spends little on the few large errors). 0 for none.
    #[arg(long, default_value_t = 0.0)]
    mse_weight: f64,
    /// Override the recipe's term weights.
    #[arg(long)]
    perceptual_weight: Option<f64>,
    #[arg(long)]
    gram_weight: Option<f64>,
    #[arg(long)]
    flow_weight: Option<f64>,
    #[arg(long)]
    adversarial_weight: Option<f64>,
    /// First step of the adversarial term.
    #[arg(long)]
    adversarial_start: Option<usize>,
    /// Print a line every this many steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Stop after this many seconds of training (as Ctrl-C does: the step finishes and a
    /// checkpoint is saved); a later run with the same -o resumes.
    #[arg(long)]
    time_limit: Option<f64>,
    #[command(flatten)]
    compute: ComputeArgs,
}

/// The start of a video network inflated from the image checkpoint at `path`.
fn inflated_weights(
    path: &std::path::Path,
    network: &NetworkConfig,
    seed: u64,
) -> anyhow::Result<std::collections::HashMap<String, candle_core::Tensor>> {
    let context = || format!("--inflate `{}`", path.display());
    let image = checkpoint::read_weights(path).with_context(context)?;
    let fresh = training::params::Parameters::initialised(network, seed, &candle_core::Device::Cpu)
        .and_then(|p| p.snapshot())
        .with_context(context)?;
    let inflation = training::inflate::inflate_image_weights(&image.tensors, network, &fresh)
        .with_context(context)?;
    for note in &inflation.notes {
        eprintln!("  inflate: {note}");
    }
    Ok(inflation.weights)
}

/// The nano width of a released architecture: one residual block per level, 32 channels at the
/// highest resolution (GroupNorm(32) needs 32, and a video patch has 192 Haar channels: a base of
/// 16 lost the colour of textured regions) and the official multipliers halved (32, 64, 64 for
/// `[2, 4, 4]`), the width of every shipped nano model. An official base of 128 with `[2, 4, 4]`
/// would be 7-8 MB in f16, over the 4 MB a shipped model may take.
pub fn nano_config(base: &NetworkConfig) -> NetworkConfig {
    let nano = NetworkConfig {
        channels: 32,
        num_res_blocks: 1,
        ..base.clone()
    };
    let halve = |mult: &[usize]| -> Option<Vec<usize>> {
        mult.iter().map(|m| (m % 2 == 0).then_some(m / 2)).collect()
    };
    match (
        halve(&base.channels_mult),
        halve(&base.decoder_channels_mult),
    ) {
        (Some(channels_mult), Some(decoder_channels_mult)) => NetworkConfig {
            channels_mult,
            decoder_channels_mult,
            ..nano
        },
        // An odd multiplier cannot be halved: the same level widths from a base of 16.
        _ => NetworkConfig {
            channels: 16,
            ..nano
        },
    }
}

fn architecture(args: &TrainArgs) -> anyhow::Result<(String, NetworkConfig)> {
    let variant = config::find_variant(&args.variant).with_context(|| {
        format!(
            "unknown variant `{}`; `tokenscope variants` lists them",
            args.variant
        )
    })?;
    let network = if args.width == "nano" {
        nano_config(&variant.config)
    } else {
        let text = std::fs::read_to_string(&args.width)
            .with_context(|| format!("--width: reading `{}`", args.width))?;
        let custom = config::config_from_json(&text)
            .with_context(|| format!("--width: `{}`", args.width))?;
        if custom.family != variant.config.family {
            bail!(
                "--width `{}` describes a {} network but --variant {} is {}",
                args.width,
                custom.family.name(),
                variant.name,
                variant.config.family.name()
            );
        }
        custom
    };
    network.check()?;
    Ok((variant.name.to_string(), network))
}

fn loss_weights(args: &TrainArgs) -> LossWeights {
    let mut weights = match args.recipe {
        Recipe::Stage1 => LossWeights::default(),
        Recipe::Stage2 => LossWeights::stage2(args.steps),
    };
    weights.chroma = args.chroma_weight;
    weights.mse = args.mse_weight;
    if let Some(w) = args.perceptual_weight {
        weights.perceptual = w;
    }
    if let Some(w) = args.gram_weight {
        weights.gram = w;
    }
    if let Some(w) = args.flow_weight {
        weights.flow = w;
    }
    if let Some(w) = args.adversarial_weight {
        weights.adversarial = w;
    }
    if let Some(s) = args.adversarial_start {
        weights.adversarial_start = s;
    }
    weights
}

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    // Training runs thousands of small element-wise ops; candle's spinning thread barrier costs
    // more than it gains there on a few shared cores, while the convolution kernels keep using
    // every core through rayon. Set before candle's pool starts; an explicit setting wins.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let (variant, network) = architecture(args)?;
    for &crop in std::iter::once(&args.crop).chain(&args.extra_crops) {
        if crop == 0 || !crop.is_multiple_of(network.spatial_compression) {
            bail!(
                "crop side {crop} must be a positive multiple of the spatial compression {}",
                network.spatial_compression
            );
        }
    }
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let (device, _) = args.compute.resolve()?;
    let specs = args
        .data
        .iter()
        .map(|d| DataSpec::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!("decoding the training data…");
    let dataset = data::load(&specs, args.max_side, 0.1, 17)?;
    for source in &dataset.train {
        eprintln!(
            "  train: {} ({} frames, {}x{})",
            source.label, source.frames.frames, source.frames.width, source.frames.height
        );
    }
    for source in &dataset.validation {
        eprintln!("  validation: {}", source.label);
    }
    let init_weights = match (&args.init, &args.inflate) {
        (Some(path), _) => {
            let weights = checkpoint::read_weights(path)
                .with_context(|| format!("--init `{}`", path.display()))?;
            Some(weights.tensors)
        }
        (None, Some(path)) => Some(inflated_weights(path, &network, args.seed)?),
        (None, None) => None,
    };
    let settings = TrainSettings {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| match args.width.as_str() {
                "nano" => format!("tokenscope-nano-{variant}"),
                _ => format!("tokenscope-{variant}-width{}", network.channels),
            }),
        variant,
        config: network,
        steps: args.steps,
        batch: args.batch,
        crop: args.crop,
        extra_crops: args.extra_crops.clone(),
        color_jitter: args.color_jitter,
        max_frames: args.max_frames.max(1),
        max_side: Some(args.max_side),
        image_fraction: args.image_fraction,
        learning_rate: args.lr,
        warmup_steps: args.warmup,
        final_lr_fraction: 0.05,
        weight_decay: args.weight_decay,
        clip_norm: args.clip_norm,
        ema_decay: args.ema_decay,
        checkpoint_every: args.checkpoint_every,
        validate_every: args.validate_every,
        seed: args.seed,
        losses: loss_weights(args),
        save_dtype: args.save_dtype.clone(),
        init: args.init.clone(),
        inflated_from: args.inflate.clone(),
        vgg19: args.vgg19.clone(),
    };
    eprintln!(
        "losses: {}",
        settings.losses.describe(settings.vgg19.is_some())
    );
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = Arc::clone(&cancel);
        let _ = ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\nstopping after this step and saving a checkpoint (Ctrl-C again to quit now)"
            );
        });
    }
    if let Some(seconds) = args.time_limit {
        if !(seconds.is_finite() && seconds > 0.0) {
            bail!("--time-limit {seconds} must be a positive number of seconds");
        }
        let cancel = Arc::clone(&cancel);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
            if !cancel.swap(true, Ordering::SeqCst) {
                eprintln!("time limit of {seconds} s reached: stopping after this step");
            }
        });
    }
    let log_every = args.log_every.max(1);
    let mut report = |p: &Progress| {
        if p.step.is_multiple_of(log_every) || p.validation.is_some() || p.step == p.steps {
            let mut line = format!(
                "step {}/{}  loss {:.4}  lr {:.2e}  |g| {:.3}  {:.2} s/step  eta {}",
                p.step,
                p.steps,
                p.loss.total,
                p.learning_rate,
                p.grad_norm,
                p.seconds_per_step,
                eta(p.eta_seconds)
            );
            if let Some(v) = &p.validation {
                line.push_str(&format!("  val PSNR {:.2} dB SSIM {:.4}", v.psnr, v.ssim));
            }
            if p.checkpointed {
                line.push_str("  [saved]");
            }
            eprintln!("{line}");
        }
    };
    let inputs = TrainInputs {
        dataset: &dataset,
        init_weights: init_weights.as_ref(),
        device: &device,
    };
    let summary = training::train(&settings, &inputs, &args.output, &cancel, &mut report)?;
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    if let Some(step) = summary.resumed_from {
        eprintln!("(resumed from step {step})");
    }
    let last = summary.state.validation.last();
    println!(
        "{} {} at step {} in {}{}",
        if summary.cancelled {
            "stopped"
        } else {
            "trained"
        },
        summary.out_dir.display(),
        summary.state.step,
        eta(summary.state.seconds),
        last.map(|v| format!(": validation PSNR {:.2} dB, SSIM {:.4}", v.psnr, v.ssim))
            .unwrap_or_default()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct FramesArgs {
    /// Images or videos to decode; `clip.mp4@80-` or `clip.mp4@0-120` takes a frame range (as
    /// `train --data` does), so that clips the demo media come from stay out.
    #[arg(required = true, num_args = 1..)]
    inputs: Vec<String>,
    /// Folder for the frames files (`<input stem>.safetensors`), created if missing.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Frames are scaled so their shorter side is at most this many pixels.
    #[arg(long, default_value_t = 360)]
    max_side: usize,
    /// Keep at most this many frames of each video, from the first of its range.
    #[arg(long)]
    max_frames: Option<usize>,
}

/// `frames`: decodes media once into frames files that `train --data` reads without FFmpeg (what
/// headless builds, such as the CUDA kit's, train on).
#[cfg(feature = "media")]
pub fn frames(args: &FramesArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating `{}`", args.output.display()))?;
    for text in &args.inputs {
        let mut spec = DataSpec::parse(text)?;
        if let Some(most) = args.max_frames {
            let capped = spec.start + most.max(1);
            spec.end = Some(spec.end.map_or(capped, |end| end.min(capped)));
        }
        let input = &spec.path;
        let data::DecodedSource { frames, kind, .. } =
            data::read_source(input, &spec, args.max_side)?;
        let stem = input
            .file_stem()
            .with_context(|| format!("`{}` has no file name", input.display()))?;
        let target = args
            .output
            .join(format!("{}.safetensors", stem.to_string_lossy()));
        let name = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = match spec.end {
            Some(end) if kind == data::SourceKind::Video => {
                format!("{name} frames {}-{end}", spec.start)
            }
            _ => name,
        };
        data::save_frames(&target, &frames, kind, &label)?;
        println!(
            "{}: {} frames of {}x{} -> {}",
            input.display(),
            frames.frames,
            frames.width,
            frames.height,
            target.display()
        );
    }
    Ok(())
}

fn eta(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::config::all_variants;

    /// Every nano network starts with 32 channels (a video patch has 192 Haar channels; 16 lost
    /// colour), keeps the official levels at a fixed fraction of their width, and has one
    /// residual block per level.
    #[test]
    fn nano_networks_keep_32_channels_at_the_highest_resolution() {
        for variant in all_variants() {
            let official = &variant.config;
            let nano = nano_config(official);
            assert_eq!(nano.channels, 32, "{}", variant.name);
            assert_eq!(nano.num_res_blocks, 1, "{}", variant.name);
            assert_eq!(
                nano.channels_mult.len(),
                official.channels_mult.len(),
                "{}",
                variant.name
            );
            // Levels are an eighth of the official width, as in every shipped nano model.
            let shrink = 8;
            for (n, o) in nano.channels_mult.iter().zip(&official.channels_mult) {
                assert_eq!(
                    n * nano.channels * shrink,
                    o * official.channels,
                    "{}",
                    variant.name
                );
            }
            assert!(nano.check().is_ok(), "{}", variant.name);
        }
    }

    /// `train --width nano` (the default) builds the architecture of every shipped nano model, so
    /// that continuing one with `--init` needs no `--width` file and loads every tensor.
    #[test]
    fn default_nano_width_is_the_width_of_the_shipped_models() {
        let shipped = crate::shipped::trained_models(&crate::shipped::project_root());
        assert!(shipped.len() >= 4, "only {} shipped models", shipped.len());
        for dir in &shipped {
            let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
            let card: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            let mirrored = card["mirrors_official_variant"]
                .as_str()
                .expect("variant name");
            let variant = config::find_variant(mirrored).expect("a released variant");
            let network = config::config_from_json(&text).expect("network config");
            assert_eq!(nano_config(&variant.config), network, "{}", dir.display());
        }
    }
}
