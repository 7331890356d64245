//! The training loop: sample, autoencode, loss, clip, AdamW, EMA; validation, atomic
//! checkpoints and exact resumption.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::data::{self, BatchShape, Dataset};
use super::discriminator::{self, PatchDiscriminator};
use super::losses::{self, LossContext, LossParts, LossWeights};
use super::optim::{self, AdamW, AdamWSettings, Ema};
use super::params::{self, Parameters};
use super::vgg::Vgg19;
use super::{card, Result, TrainError};
use crate::frames::RgbFrames;
use crate::io;
use crate::metrics;
use crate::tokenizer::runner::{self, RunOptions};
use crate::tokenizer::{NetworkConfig, Tokenizer};

/// File names inside the output folder.
pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const CARD_FILE: &str = "MODEL_CARD.md";
pub const STATE_FILE: &str = "train_state.safetensors";
pub const STATE_JSON: &str = "train_state.json";

/// Everything that defines a run. Saved with the state so a resumed run uses the same recipe.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Name of the trained model (also the `name` in config.json).
    pub name: String,
    /// The released variant whose architecture this is (CV8x8x8, ...).
    pub variant: String,
    pub config: NetworkConfig,
    /// Total optimiser steps.
    pub steps: usize,
    pub batch: usize,
    /// Square crop side in pixels.
    pub crop: usize,
    /// More crop sides drawn per step alongside `crop`, each with the batch scaled so a step
    /// covers about as many pixels (`batch·crop²`). A model trained at one size learns statistics
    /// of that size: the nano CI8x8 trained on 128² crops shifted the colours of larger frames by
    /// up to 20 grey levels, and fine-tuned on 256² crops shifted 128² ones instead.
    #[serde(default)]
    pub extra_crops: Vec<usize>,
    /// Colour jitter per crop (see [`data::BatchShape::color_jitter`]); 0 for none.
    #[serde(default)]
    pub color_jitter: f64,
    /// Longest training window in frames (video networks; 1 + k·t).
    pub max_frames: usize,
    /// Frames were scaled so their shorter side is at most this before cropping: the resolution
    /// the model knows, which the viewer compares inputs with.
    #[serde(default)]
    pub max_side: Option<usize>,
    /// Share of steps on single frames (images train video networks as T = 1).
    pub image_fraction: f64,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    /// The cosine schedule ends at this fraction of the peak rate.
    pub final_lr_fraction: f64,
    pub weight_decay: f64,
    pub clip_norm: f64,
    pub ema_decay: f64,
    pub checkpoint_every: usize,
    pub validate_every: usize,
    pub seed: u64,
    pub losses: LossWeights,
    /// Storage type of model.safetensors: "f32", "f16" or "bf16".
    pub save_dtype: String,
    /// Checkpoint the run started from, if fine-tuning.
    pub init: Option<PathBuf>,
    /// Image checkpoint whose weights were inflated into this video network's start.
    #[serde(default)]
    pub inflated_from: Option<PathBuf>,
    /// torchvision VGG-19 weights for the perceptual and texture terms.
    #[serde(default)]
    pub vgg19: Option<PathBuf>,
}

/// Width of the patch discriminator's first layer.
const DISCRIMINATOR_WIDTH: usize = 32;

/// One logged step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub step: usize,
    pub loss: LossParts,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub frames: usize,
}

/// One validation measurement of the EMA weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValidationPoint {
    pub step: usize,
    /// Mean over validation windows of the TokenBench clip PSNR, dB.
    pub psnr: f64,
    pub ssim: f64,
}

/// What the state JSON holds besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub settings: TrainSettings,
    pub step: usize,
    pub seconds: f64,
    pub history: Vec<HistoryPoint>,
    pub validation: Vec<ValidationPoint>,
    pub data: Vec<String>,
    pub validation_data: Vec<String>,
    pub machine: String,
    pub parameters: usize,
}

/// Reported after every step.
#[derive(Clone, Debug)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    pub loss: LossParts,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub seconds_per_step: f64,
    pub eta_seconds: f64,
    pub validation: Option<ValidationPoint>,
    pub checkpointed: bool,
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub state: TrainState,
    pub out_dir: PathBuf,
    pub resumed_from: Option<usize>,
    pub cancelled: bool,
    /// What the loader changed or initialised fresh when fine-tuning.
    pub notes: Vec<String>,
}

/// What a run trains on, starts from and runs on.
#[derive(Clone, Copy)]
pub struct TrainInputs<'a> {
    pub dataset: &'a Dataset,
    /// Weights to fine-tune from (ignored when resuming).
    pub init_weights: Option<&'a HashMap<String, Tensor>>,
    pub device: &'a Device,
}

struct Run {
    params: Parameters,
    optimiser: AdamW,
    ema: Ema,
    state: TrainState,
    /// The patch discriminator and its optimiser, when the adversarial term is on.
    discriminator: Option<(PatchDiscriminator, AdamW)>,
}

fn new_discriminator(
    settings: &TrainSettings,
    device: &Device,
) -> Result<Option<(PatchDiscriminator, AdamW)>> {
    if settings.losses.adversarial <= 0.0 {
        return Ok(None);
    }
    let d = PatchDiscriminator::new(DISCRIMINATOR_WIDTH, settings.seed, device)?;
    let opt = AdamW::new(
        d.vars(),
        AdamWSettings {
            learning_rate: settings.learning_rate,
            beta1: 0.5,
            ..AdamWSettings::default()
        },
    )?;
    Ok(Some((d, opt)))
}

fn storage_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(TrainError::Invalid(format!(
            "unknown save dtype `{other}` (f32, f16 or bf16)"
        ))),
    }
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // The kernels' pool (RAYON_NUM_THREADS), not the machine's cores: runs side by side each
    // take a share.
    let threads = rayon::current_num_threads();
    let plural = if threads == 1 { "" } else { "s" };
    format!("{cpu}, {threads} thread{plural}, CPU f32")
}

fn read_state(out_dir: &Path) -> Result<Option<(TrainState, HashMap<String, Tensor>)>> {
    let json = out_dir.join(STATE_JSON);
    let tensors = out_dir.join(STATE_FILE);
    if !json.is_file() || !tensors.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&json).map_err(|source| TrainError::Io {
        context: format!("reading `{}`", json.display()),
        source,
    })?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| {
        TrainError::Invalid(format!(
            "`{}` is not a Tokenscope training state ({e}); move it away to start afresh",
            json.display()
        ))
    })?;
    let tensors = candle_core::safetensors::load(&tensors, &Device::Cpu)?;
    Ok(Some((state, tensors)))
}

fn start_run(
    settings: &TrainSettings,
    dataset: &Dataset,
    init_weights: Option<&HashMap<String, Tensor>>,
    device: &Device,
    notes: &mut Vec<String>,
) -> Result<Run> {
    let params = match init_weights {
        Some(weights) => {
            let (params, init_notes) =
                Parameters::from_weights(&settings.config, weights, settings.seed, device)?;
            notes.extend(init_notes);
            params
        }
        None => Parameters::initialised(&settings.config, settings.seed, device)?,
    };
    let optimiser = AdamW::new(params.iter(), adamw_settings(settings))?;
    let ema = Ema::new(&params, settings.ema_decay)?;
    let state = TrainState {
        settings: settings.clone(),
        step: 0,
        seconds: 0.0,
        history: Vec::new(),
        validation: Vec::new(),
        data: dataset.train.iter().map(|s| s.label.clone()).collect(),
        validation_data: dataset.validation.iter().map(|s| s.label.clone()).collect(),
        machine: machine_description(),
        parameters: params.count(),
    };
    Ok(Run {
        params,
        optimiser,
        ema,
        state,
        discriminator: new_discriminator(settings, device)?,
    })
}

fn adamw_settings(settings: &TrainSettings) -> AdamWSettings {
    AdamWSettings {
        learning_rate: settings.learning_rate,
        weight_decay: settings.weight_decay,
        ..AdamWSettings::default()
    }
}

fn resume_run(
    saved: TrainState,
    tensors: &HashMap<String, Tensor>,
    settings: &TrainSettings,
    device: &Device,
) -> Result<Run> {
    if saved.settings.config != settings.config {
        return Err(TrainError::Invalid(
            "the output folder holds a run of another architecture; choose another -o or delete its train_state.*"
                .into(),
        ));
    }
    let shapes = params::parameter_shapes(&settings.config)?;
    let params = Parameters::from_exact(&shapes, tensors, "p.", device)?;
    let mut optimiser = AdamW::new(params.iter(), adamw_settings(settings))?;
    optimiser.restore(tensors, "", saved.step)?;
    let ema_params = Parameters::from_exact(&shapes, tensors, "e.", device)?;
    let ema = Ema {
        decay: settings.ema_decay,
        weights: ema_params.snapshot()?,
    };
    let mut discriminator = new_discriminator(settings, device)?;
    if let Some((d, opt)) = discriminator.as_mut() {
        // A run that switches the adversarial term on later starts a fresh discriminator.
        if tensors.keys().any(|k| k.starts_with("d.")) {
            d.restore(tensors, "d.")?;
            opt.restore(tensors, "d", saved.step)?;
        }
    }
    let mut state = saved;
    // The step budget, cadence and storage type may change between sessions; the recipe may not.
    state.settings.steps = settings.steps;
    state.settings.checkpoint_every = settings.checkpoint_every;
    state.settings.validate_every = settings.validate_every;
    state.settings.save_dtype = settings.save_dtype.clone();
    // Stage 2 continues a stage-1 run: the loss recipe and VGG weights may change.
    state.settings.losses = settings.losses;
    state.settings.vgg19 = settings.vgg19.clone();
    Ok(Run {
        params,
        optimiser,
        ema,
        state,
        discriminator,
    })
}

/// Frames per step: 1 for image networks and image steps, else 1 + k·t with k random.
fn frames_for_step(config: &NetworkConfig, settings: &TrainSettings, rng: &mut StdRng) -> usize {
    if !config.family.is_video() {
        return 1;
    }
    if rng.random_bool(settings.image_fraction.clamp(0.0, 1.0)) {
        return 1;
    }
    let t = config.temporal_compression.max(1);
    let k_max = (settings.max_frames.saturating_sub(1) / t).max(1);
    1 + t * rng.random_range(1..=k_max)
}

/// Frames of one validation window.
fn validation_frames(config: &NetworkConfig, settings: &TrainSettings) -> usize {
    if config.family.is_video() {
        let t = config.temporal_compression.max(1);
        1 + (settings.max_frames.saturating_sub(1) / t).max(1) * t
    } else {
        4
    }
}

/// The crop side and batch of one step: `crop` and `batch`, or one of `extra_crops` with the
/// batch scaled to cover about as many pixels (at least one item).
fn crop_for_step(recipe: &TrainSettings, rng: &mut StdRng) -> (usize, usize) {
    if recipe.extra_crops.is_empty() {
        return (recipe.crop, recipe.batch);
    }
    let pick = rng.random_range(0..=recipe.extra_crops.len());
    match recipe.extra_crops.get(pick) {
        Some(&crop) => {
            let pixels = (recipe.batch * recipe.crop * recipe.crop) as f64;
            let items = (pixels / (crop * crop) as f64).round().max(1.0) as usize;
            (crop, items)
        }
        None => (recipe.crop, recipe.batch),
    }
}

/// Mean clip PSNR and SSIM of `model` over the validation windows (None without any).
pub fn validate(
    model: &Tokenizer,
    windows: &[RgbFrames],
    cancel: &AtomicBool,
) -> Result<Option<(f64, f64)>> {
    if windows.is_empty() {
        return Ok(None);
    }
    let (mut psnr, mut ssim) = (0.0, 0.0);
    for window in windows {
        let options = RunOptions {
            temporal_window: window.frames,
            tiling: None,
        };
        let result = runner::reconstruct(model, window, &options, cancel, &mut |_, _| {})?;
        let summary = metrics::clip_metrics(window, &result.reconstruction)
            .map_err(|e| TrainError::Invalid(format!("validation metrics: {e}")))?;
        psnr += summary.psnr_clip;
        ssim += summary.ssim_mean;
    }
    let n = windows.len() as f64;
    Ok(Some((psnr / n, ssim / n)))
}

fn save(run: &Run, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|source| TrainError::Io {
        context: format!("creating `{}`", out_dir.display()),
        source,
    })?;
    let settings = &run.state.settings;
    let dtype = storage_dtype(&settings.save_dtype)?;
    let model_tensors: Vec<(String, Tensor)> = run
        .ema
        .weights
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("tokenscope_model".to_string(), settings.name.clone()),
        ("step".to_string(), run.state.step.to_string()),
    ]);
    let refs: Vec<(&str, &Tensor)> = model_tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    io::save_safetensors(&out_dir.join(MODEL_FILE), &refs, metadata)?;

    let mut state_tensors: Vec<(String, Tensor)> = Vec::new();
    for (k, var) in run.params.iter() {
        state_tensors.push((format!("p.{k}"), var.as_tensor().detach()));
    }
    for (k, v) in &run.ema.weights {
        state_tensors.push((format!("e.{k}"), v.clone()));
    }
    state_tensors.extend(run.optimiser.state_tensors(""));
    if let Some((d, opt)) = &run.discriminator {
        for (k, var) in d.vars() {
            state_tensors.push((format!("d.{k}"), var.as_tensor().detach()));
        }
        state_tensors.extend(opt.state_tensors("d"));
    }
    let refs: Vec<(&str, &Tensor)> = state_tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    io::save_safetensors(&out_dir.join(STATE_FILE), &refs, HashMap::new())?;

    write_text(&out_dir.join(CONFIG_FILE), &config_json(settings)?)?;
    let state_json = serde_json::to_string_pretty(&run.state)
        .map_err(|e| TrainError::Invalid(format!("serialising the training state: {e}")))?;
    write_text(&out_dir.join(STATE_JSON), &state_json)?;
    write_text(&out_dir.join(CARD_FILE), &card::model_card(&run.state))?;
    Ok(())
}

/// config.json in the layout the loader reads (`network`), plus what a reader wants to know.
pub fn config_json(settings: &TrainSettings) -> Result<String> {
    let value = serde_json::json!({
        "name": settings.name,
        "trained_by": "tokenscope train",
        "mirrors_official_variant": settings.variant,
        "trained_shorter_side": settings.max_side,
        "family": settings.config.family.name(),
        "network": settings.config,
    });
    serde_json::to_string_pretty(&value)
        .map_err(|e| TrainError::Invalid(format!("serialising config.json: {e}")))
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    io::write_atomically(path, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| e.to_string())
    })?;
    Ok(())
}

/// Trains (or resumes training) into `out_dir`. `report` sees every step. Cancelling saves a
/// checkpoint and returns normally with `cancelled` set.
pub fn train(
    settings: &TrainSettings,
    inputs: &TrainInputs,
    out_dir: &Path,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(&Progress),
) -> Result<TrainSummary> {
    settings.config.check()?;
    storage_dtype(&settings.save_dtype)?;
    let TrainInputs {
        dataset,
        init_weights,
        device,
    } = *inputs;
    let mut notes = Vec::new();
    let (mut run, resumed_from) = match read_state(out_dir)? {
        Some((saved, tensors)) => {
            let step = saved.step;
            (resume_run(saved, &tensors, settings, device)?, Some(step))
        }
        None => (
            start_run(settings, dataset, init_weights, device, &mut notes)?,
            None,
        ),
    };
    if resumed_from.is_some() {
        // A resumed run may bring more data (a curriculum); the card lists everything it saw.
        for source in &dataset.train {
            if !run.state.data.contains(&source.label) {
                run.state.data.push(source.label.clone());
            }
        }
    }
    let config = run.state.settings.config.clone();
    let recipe = run.state.settings.clone();
    let video = config.family.is_video();
    let validation_windows =
        data::validation_windows(dataset, validation_frames(&config, &recipe), 256)?;
    let vgg = match (&recipe.vgg19, recipe.losses.needs_vgg()) {
        (Some(path), true) => Some(Vgg19::load(path, device)?),
        _ => None,
    };
    let mut rng = StdRng::seed_from_u64(recipe.seed.wrapping_add(run.state.step as u64));
    let started = Instant::now();
    let seconds_before = run.state.seconds;
    let first_step = run.state.step;
    let mut cancelled = false;
    while run.state.step < recipe.steps {
        if cancel.load(Ordering::Relaxed) {
            cancelled = true;
            break;
        }
        let step = run.state.step;
        let frames = frames_for_step(&config, &recipe, &mut rng);
        let (crop, items) = crop_for_step(&recipe, &mut rng);
        let batch = data::sample_batch(
            dataset,
            BatchShape {
                batch: items,
                frames,
                crop,
                color_jitter: recipe.color_jitter as f32,
            },
            video,
            &mut rng,
            device,
        )?;
        let model = run.params.tokenizer(&config)?;
        let reconstruction = model.autoencode(&batch)?;
        let context = LossContext {
            vgg: vgg.as_ref(),
            discriminator: run.discriminator.as_ref().map(|(d, _)| d),
            step,
        };
        let (loss, mut parts) =
            losses::total_loss(&batch, &reconstruction, &recipe.losses, &context)?;
        if !parts.total.is_finite() {
            return Err(TrainError::Diverged(format!(
                "the loss is {} at step {step}; lower --lr",
                parts.total
            )));
        }
        let grads = loss.backward()?;
        let (grad_norm, scale) = optim::clip_scale(run.params.iter(), &grads, recipe.clip_norm)?;
        let learning_rate = optim::learning_rate_at(
            step,
            recipe.steps,
            recipe.warmup_steps,
            recipe.learning_rate,
            recipe.final_lr_fraction,
        );
        run.optimiser.set_learning_rate(learning_rate);
        run.optimiser.step(run.params.iter(), &grads, scale)?;
        run.ema.update(&run.params, step)?;
        if let (Some((d, opt)), true) = (
            run.discriminator.as_mut(),
            recipe.losses.adversarial_at(step),
        ) {
            let real = d.forward(&discriminator::frames_of(&batch)?)?;
            let fake = d.forward(&discriminator::frames_of(&reconstruction.detach())?)?;
            let d_loss = discriminator::discriminator_loss(&real, &fake)?;
            parts.discriminator = f64::from(d_loss.to_scalar::<f32>()?);
            let d_grads = d_loss.backward()?;
            opt.set_learning_rate(learning_rate);
            opt.step(d.vars(), &d_grads, 1.0)?;
        }
        run.state.step += 1;
        let done = run.state.step;
        run.state.seconds = seconds_before + started.elapsed().as_secs_f64();
        run.state.history.push(HistoryPoint {
            step: done,
            loss: parts.clone(),
            learning_rate,
            grad_norm,
            frames,
        });

        let mut validation = None;
        let last = done == recipe.steps;
        if recipe.validate_every > 0 && (done % recipe.validate_every == 0 || last) {
            let ema_weights = run.ema.weights.iter().map(|(k, v)| (k.clone(), v.clone()));
            let ema_model = params::tokenizer_from_tensors(&config, ema_weights, device)?;
            let never = AtomicBool::new(false);
            if let Some((psnr, ssim)) = validate(&ema_model, &validation_windows, &never)? {
                let point = ValidationPoint {
                    step: done,
                    psnr,
                    ssim,
                };
                run.state.validation.push(point.clone());
                validation = Some(point);
            }
        }
        let checkpointed = recipe.checkpoint_every > 0 && done % recipe.checkpoint_every == 0;
        if checkpointed || last {
            save(&run, out_dir)?;
        }
        let per_step = started.elapsed().as_secs_f64() / (done - first_step) as f64;
        report(&Progress {
            step: done,
            steps: recipe.steps,
            loss: parts,
            learning_rate,
            grad_norm,
            seconds_per_step: per_step,
            eta_seconds: per_step * (recipe.steps - done) as f64,
            validation,
            checkpointed: checkpointed || last,
        });
    }
    if cancelled || run.state.step == first_step {
        save(&run, out_dir)?;
    }
    Ok(TrainSummary {
        state: run.state,
        out_dir: out_dir.to_path_buf(),
        resumed_from,
        cancelled,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra_crops: Vec<usize>) -> TrainSettings {
        TrainSettings {
            name: "test".into(),
            variant: "CI8x8".into(),
            config: crate::tokenizer::config::find_variant("CI8x8")
                .expect("CI8x8 is a released variant")
                .config
                .clone(),
            steps: 1,
            batch: 4,
            crop: 128,
            extra_crops,
            color_jitter: 0.0,
            max_frames: 1,
            max_side: None,
            image_fraction: 0.0,
            learning_rate: 1e-3,
            warmup_steps: 0,
            final_lr_fraction: 0.05,
            weight_decay: 0.0,
            clip_norm: 1.0,
            ema_decay: 0.999,
            checkpoint_every: 1,
            validate_every: 1,
            seed: 0,
            losses: LossWeights::default(),
            save_dtype: "f32".into(),
            init: None,
            inflated_from: None,
            vgg19: None,
        }
    }

    /// Every listed crop side is drawn, with the batch scaled to about `batch·crop²` pixels.
    #[test]
    fn steps_draw_every_crop_size_at_equal_pixels() {
        let mut rng = StdRng::seed_from_u64(3);
        let plain = settings(Vec::new());
        assert_eq!(crop_for_step(&plain, &mut rng), (128, 4));
        let mixed = settings(vec![256, 320]);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..300 {
            let (crop, items) = crop_for_step(&mixed, &mut rng);
            *seen.entry((crop, items)).or_insert(0) += 1;
        }
        let drawn: Vec<_> = seen.keys().copied().collect();
        assert_eq!(drawn, vec![(128, 4), (256, 1), (320, 1)]);
        assert!(seen.values().all(|&n| n > 50), "{seen:?}");
    }
}
