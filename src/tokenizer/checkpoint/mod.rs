//! Loading checkpoints: the official TorchScript archives as released, safetensors with the
//! official key names, and diffusers' `AutoencoderKLCosmos` safetensors; a folder or a single file.
//! Works out which variant the weights belong to and says how it decided.

mod backend;
pub mod diffusers;
mod pickle;
pub mod torchscript;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use self::backend::CheckpointBackend;
use super::config::{self, Family, NetworkConfig};
use super::model::{HaarTaps, Halves, Tokenizer};
use super::{haar, Result, TokenizerError};

/// The file form the weights were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointForm {
    /// `encoder.jit` and/or `decoder.jit`.
    TorchScriptHalves,
    /// `autoencoder.jit`.
    TorchScriptAutoencoder,
    /// safetensors with the official key names.
    Safetensors,
    /// diffusers `AutoencoderKLCosmos` safetensors.
    Diffusers,
}

impl CheckpointForm {
    pub fn describe(self) -> &'static str {
        match self {
            CheckpointForm::TorchScriptHalves => "TorchScript encoder.jit/decoder.jit",
            CheckpointForm::TorchScriptAutoencoder => "TorchScript autoencoder.jit",
            CheckpointForm::Safetensors => "safetensors (official key names)",
            CheckpointForm::Diffusers => "diffusers AutoencoderKLCosmos safetensors",
        }
    }
}

/// Raw weights read from disk, with official key names.
#[derive(Debug)]
pub struct Weights {
    pub tensors: HashMap<String, Tensor>,
    pub form: CheckpointForm,
    pub files: Vec<PathBuf>,
    /// A configuration found next to the weights (`config.json`), if any.
    pub config: Option<NetworkConfig>,
}

impl Weights {
    /// The most common floating-point dtype among the stored tensors.
    pub fn stored_dtype(&self) -> DType {
        let mut counts: BTreeMap<&'static str, (usize, DType)> = BTreeMap::new();
        for t in self.tensors.values() {
            if t.dtype().is_float() {
                let entry = counts.entry(t.dtype().as_str()).or_insert((0, t.dtype()));
                entry.0 += t.elem_count();
            }
        }
        counts
            .values()
            .max_by_key(|(n, _)| *n)
            .map(|(_, d)| *d)
            .unwrap_or(DType::F32)
    }
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> TokenizerError {
    move |source| TokenizerError::Io { context, source }
}

fn checkpoint_error(path: &Path, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(io_error(format!("reading `{}`", path.display())))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| checkpoint_error(path, format!("not a readable safetensors file: {e}")))?;
    Ok(tensors)
}

fn read_jit(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = torchscript::read_torchscript(path)?;
    Ok(tensors.into_iter().map(|t| (t.name, t.tensor)).collect())
}

/// Removes the `inv_quant.` prefix the discrete `decoder.jit` wrapper adds to its quantizer.
fn normalise_jit_keys(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("inv_quant.") {
            Some(rest) => (rest.to_string(), v),
            None => (k, v),
        })
        .collect()
}

fn read_config_json(path: &Path) -> Result<Option<NetworkConfig>> {
    let text =
        std::fs::read_to_string(path).map_err(io_error(format!("reading `{}`", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| checkpoint_error(path, format!("config.json is not valid JSON: {e}")))?;
    // The Hugging Face repos ship `{"architectures": ["CosmosTokenizer"]}`, which says nothing.
    if value.get("config").is_some()
        || value.get("network").is_some()
        || value.get("channels").is_some()
    {
        return config::config_from_json(&text)
            .map(Some)
            .map_err(|e| checkpoint_error(path, e.to_string()));
    }
    if value.get("_class_name").and_then(|v| v.as_str()) == Some("AutoencoderKLCosmos") {
        return diffusers::config_from_diffusers_json(&value)
            .map(Some)
            .map_err(|e| checkpoint_error(path, e.to_string()));
    }
    Ok(None)
}

/// Reads the weights from a folder (encoder.jit + decoder.jit, autoencoder.jit, model.safetensors,
/// or a diffusers folder, in that order of preference) or from a single file.
pub fn read_weights(path: &Path) -> Result<Weights> {
    if !path.exists() {
        return Err(checkpoint_error(
            path,
            "no such file or folder; give a checkpoint folder, a .jit or .safetensors file, or a variant name",
        ));
    }
    if path.is_dir() {
        return read_folder(path);
    }
    let config = match path.parent().map(|p| p.join("config.json")) {
        Some(c) if c.is_file() => read_config_json(&c)?,
        _ => None,
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (tensors, form) = match ext.as_str() {
        "safetensors" => {
            let tensors = read_safetensors(path)?;
            if diffusers::looks_like_diffusers(tensors.keys()) {
                (diffusers::official_from_diffusers(tensors)?, CheckpointForm::Diffusers)
            } else {
                (tensors, CheckpointForm::Safetensors)
            }
        }
        "jit" | "pt" | "pth" if torchscript::is_torchscript_archive(path) => {
            let tensors = normalise_jit_keys(read_jit(path)?);
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let form = if stem.contains("autoencoder") || stem.contains("ema") {
                CheckpointForm::TorchScriptAutoencoder
            } else {
                CheckpointForm::TorchScriptHalves
            };
            (tensors, form)
        }
        _ => {
            return Err(checkpoint_error(
                path,
                "unsupported checkpoint file: expected a TorchScript archive (.jit) or a .safetensors file",
            ))
        }
    };
    Ok(Weights {
        tensors,
        form,
        files: vec![path.to_path_buf()],
        config,
    })
}

fn read_folder(dir: &Path) -> Result<Weights> {
    let config = {
        let c = dir.join("config.json");
        if c.is_file() {
            read_config_json(&c)?
        } else {
            None
        }
    };
    let encoder = dir.join("encoder.jit");
    let decoder = dir.join("decoder.jit");
    if encoder.is_file() || decoder.is_file() {
        let mut tensors = HashMap::new();
        let mut files = Vec::new();
        for file in [encoder, decoder] {
            if file.is_file() {
                tensors.extend(normalise_jit_keys(read_jit(&file)?));
                files.push(file);
            }
        }
        return Ok(Weights {
            tensors,
            form: CheckpointForm::TorchScriptHalves,
            files,
            config,
        });
    }
    let autoencoder = dir.join("autoencoder.jit");
    if autoencoder.is_file() {
        return Ok(Weights {
            tensors: normalise_jit_keys(read_jit(&autoencoder)?),
            form: CheckpointForm::TorchScriptAutoencoder,
            files: vec![autoencoder],
            config,
        });
    }
    let model = dir.join("model.safetensors");
    if model.is_file() {
        let mut weights = read_weights(&model)?;
        weights.config = config.or(weights.config);
        return Ok(weights);
    }
    for candidate in [
        dir.join("diffusion_pytorch_model.safetensors"),
        dir.join("vae").join("diffusion_pytorch_model.safetensors"),
    ] {
        if candidate.is_file() {
            let mut weights = read_weights(&candidate)?;
            weights.config = weights.config.or(config);
            return Ok(weights);
        }
    }
    Err(checkpoint_error(
        dir,
        "no checkpoint in this folder: expected encoder.jit/decoder.jit, autoencoder.jit, model.safetensors \
         or diffusion_pytorch_model.safetensors",
    ))
}

/// How the variant/configuration was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--variant NAME`.
    Flag(String),
    /// `config.json` next to the weights.
    ConfigJson,
    /// A Hugging Face repo or variant name found in the path.
    PathName(String),
    /// Inferred from tensor shapes.
    Inferred,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Flag(name) => write!(f, "--variant {name}"),
            ConfigSource::ConfigJson => write!(f, "config.json next to the weights"),
            ConfigSource::PathName(name) => write!(f, "the name `{name}` in the checkpoint path"),
            ConfigSource::Inferred => write!(f, "inferred from the tensor shapes"),
        }
    }
}

/// Options for [`load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// A variant name or repo id that overrides everything else.
    pub variant: Option<String>,
    pub device: Device,
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            variant: None,
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// A loaded tokenizer and what is known about where it came from.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub tokenizer: Tokenizer,
    /// Canonical variant name when the configuration is a released one, else `custom`.
    pub variant_name: String,
    pub config_source: ConfigSource,
    pub form: CheckpointForm,
    pub files: Vec<PathBuf>,
    pub stored_dtype: DType,
    /// Parameters the forward pass uses.
    pub parameters: usize,
    /// Keys in the files that the forward pass does not use (buffers, dead resampler convolutions).
    pub unused_keys: Vec<String>,
    /// Things the loader adjusted or wants the user to know.
    pub notes: Vec<String>,
    pub haar_taps: HaarTaps,
    /// The shorter side of the frames a Tokenscope-trained model learnt from (its config.json's
    /// `trained_shorter_side`); `None` for NVIDIA's checkpoints, whose resolution the variant says.
    pub trained_shorter_side: Option<usize>,
}

/// Reads a checkpoint and builds the tokenizer.
pub fn load(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    let weights = read_weights(path)?;
    load_weights(path, weights, options)
}

/// Builds a tokenizer from weights already in memory (`origin` names them in messages).
pub fn load_weights(origin: &Path, weights: Weights, options: &LoadOptions) -> Result<LoadedModel> {
    let (mut config, config_source, variant_name) = resolve_config(origin, &weights, options)?;
    let mut notes = Vec::new();
    reconcile_structure(&mut config, &weights.tensors, &mut notes);
    config.check()?;
    let has_encoder = weights.tensors.keys().any(|k| k.starts_with("encoder."));
    let has_decoder = weights.tensors.keys().any(|k| k.starts_with("decoder."));
    let Some(halves) = Halves::present(has_encoder, has_decoder) else {
        return Err(checkpoint_error(
            origin,
            "holds no `encoder.*` or `decoder.*` tensors; is this a Cosmos tokenizer checkpoint?",
        ));
    };
    let video = config.family.is_video();
    let (enc_tap_key, dec_tap_key) = if video {
        ("encoder.patcher3d.wavelets", "decoder.unpatcher3d.wavelets")
    } else {
        ("encoder.patcher.wavelets", "decoder.unpatcher.wavelets")
    };
    let taps = HaarTaps {
        encoder: haar::tap_from_buffer(weights.tensors.get(enc_tap_key))?,
        decoder: haar::tap_from_buffer(weights.tensors.get(dec_tap_key))?,
    };
    let hint = format!(
        "the weights do not match the {} configuration taken from {} ({} x {:?}); check --variant or config.json",
        variant_name, config_source, config.channels, config.channels_mult
    );
    let stored_dtype = weights.stored_dtype();
    let backend = CheckpointBackend::new(weights.tensors, hint);
    let report = backend.report();
    let vb = VarBuilder::from_backend(Box::new(backend), options.dtype, options.device.clone());
    let tokenizer = match Tokenizer::new(&config, taps, halves, vb) {
        Ok(t) => t,
        Err(e) => return Err(report.take_error().unwrap_or(TokenizerError::Candle(e))),
    };
    let (parameters, unused_keys) = report.usage();
    match halves {
        Halves::Both => {}
        Halves::DecoderOnly => {
            notes.push("only decoder weights found: decoding works, encoding does not".into())
        }
        Halves::EncoderOnly => {
            notes.push("only encoder weights found: encoding works, decoding does not".into())
        }
    }
    Ok(LoadedModel {
        tokenizer,
        variant_name,
        config_source,
        form: weights.form,
        files: weights.files,
        stored_dtype,
        parameters,
        unused_keys,
        notes,
        haar_taps: taps,
        trained_shorter_side: tokenscope_config_json(origin)
            .and_then(|v| v.get("trained_shorter_side")?.as_u64())
            .and_then(|side| usize::try_from(side).ok()),
    })
}

fn resolve_config(
    origin: &Path,
    weights: &Weights,
    options: &LoadOptions,
) -> Result<(NetworkConfig, ConfigSource, String)> {
    if let Some(name) = &options.variant {
        let variant = config::find_variant(name).ok_or_else(|| {
            TokenizerError::InvalidConfig(format!(
                "unknown variant `{name}`; known: {}",
                config::all_variants()
                    .iter()
                    .map(|v| v.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        return Ok((
            variant.config,
            ConfigSource::Flag(name.clone()),
            variant.name.to_string(),
        ));
    }
    if let Some(config) = &weights.config {
        let name = tokenscope_model_name(origin)
            .or_else(|| released_name_of(config))
            .unwrap_or_else(|| custom_name(config));
        return Ok((config.clone(), ConfigSource::ConfigJson, name));
    }
    let path_text = origin
        .canonicalize()
        .unwrap_or_else(|_| origin.to_path_buf());
    if let Some(variant) = config::find_variant_in_text(&path_text.display().to_string()) {
        return Ok((
            variant.config,
            ConfigSource::PathName(variant.name.to_string()),
            variant.name.to_string(),
        ));
    }
    let config = infer_config(origin, &weights.tensors)?;
    let name = released_name_of(&config).unwrap_or_else(|| custom_name(&config));
    Ok((config, ConfigSource::Inferred, name))
}

/// The `name` of a model Tokenscope trained (its config.json has a `network` object), so such
/// models are labelled as themselves, never as NVIDIA's.
fn tokenscope_model_name(origin: &Path) -> Option<String> {
    tokenscope_config_json(origin)?
        .get("name")?
        .as_str()
        .map(str::to_string)
}

/// The config.json beside `origin` when Tokenscope wrote it (it has a `network` object).
fn tokenscope_config_json(origin: &Path) -> Option<serde_json::Value> {
    let json = if origin.is_dir() {
        origin.join("config.json")
    } else {
        origin.parent()?.join("config.json")
    };
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).ok()?).ok()?;
    value.get("network")?;
    Some(value)
}

/// `CV4x8x8-custom`: the compression a custom configuration shares with the released variants.
fn custom_name(config: &NetworkConfig) -> String {
    let s = config.spatial_compression;
    let rate = if config.family.is_video() {
        format!("{}x{s}x{s}", config.temporal_compression)
    } else {
        format!("{s}x{s}")
    };
    let lowres = if config.patch_size == 2 {
        "-LowRes"
    } else {
        ""
    };
    format!("{}{rate}{lowres}-custom", config.family.name())
}

/// The released variant whose configuration equals `config`, if any.
fn released_name_of(config: &NetworkConfig) -> Option<String> {
    config::all_variants()
        .into_iter()
        .find(|v| &v.config == config)
        .map(|v| v.name.to_string())
}

fn shape_of(tensors: &HashMap<String, Tensor>, key: &str) -> Option<Vec<usize>> {
    tensors.get(key).map(|t| t.dims().to_vec())
}

/// Output width of `encoder.down.{level}` / `decoder.up.{level}` (from its first block's conv1).
fn level_width(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    level: usize,
    video: bool,
) -> Option<usize> {
    let key = if video {
        format!("{prefix}.{level}.block.0.conv1.0.conv3d.weight")
    } else {
        format!("{prefix}.{level}.block.0.conv1.weight")
    };
    shape_of(tensors, &key).and_then(|s| s.first().copied())
}

fn level_mults(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    channels: usize,
    video: bool,
) -> Vec<usize> {
    (0..)
        .map_while(|level| level_width(tensors, prefix, level, video))
        .map(|width| width / channels.max(1))
        .collect()
}

/// The checkpoint's own structure (widths, levels, blocks per level) wins over the configuration:
/// the released CV4x8x8 files and the official 0.1 class disagree about the levels, and a name in a
/// path says which compression a model has, not how wide it is. Every change is noted.
fn reconcile_structure(
    config: &mut NetworkConfig,
    tensors: &HashMap<String, Tensor>,
    notes: &mut Vec<String>,
) {
    let video = config.family.is_video();
    let conv_in = if video {
        "encoder.conv_in.0.conv3d.weight"
    } else {
        "encoder.conv_in.weight"
    };
    if let Some(channels) = shape_of(tensors, conv_in).and_then(|s| s.first().copied()) {
        if channels != config.channels {
            notes.push(format!(
                "the checkpoint's base width is {channels}, the configuration said {}; using the checkpoint's",
                config.channels
            ));
            config.channels = channels;
        }
    }
    let blocks = (0..)
        .take_while(|b| {
            tensors
                .keys()
                .any(|k| k.starts_with(&format!("encoder.down.0.block.{b}.")))
        })
        .count();
    if blocks > 0 && blocks != config.num_res_blocks {
        notes.push(format!(
            "the checkpoint has {blocks} residual blocks per encoder level, the configuration said {}; using the checkpoint's",
            config.num_res_blocks
        ));
        config.num_res_blocks = blocks;
    }
    let conv_out = if video {
        "encoder.conv_out.0.conv3d.weight"
    } else {
        "encoder.conv_out.weight"
    };
    let post_quant = if video {
        "post_quant_conv.conv3d.weight"
    } else {
        "post_quant_conv.weight"
    };
    let z_channels = shape_of(tensors, conv_out)
        .and_then(|s| s.first().copied())
        .or_else(|| shape_of(tensors, post_quant).and_then(|s| s.first().copied()));
    if let Some(z) = z_channels {
        if z != config.z_channels {
            notes.push(format!(
                "the checkpoint's z_channels is {z}, the configuration said {}; using the checkpoint's",
                config.z_channels
            ));
            config.z_channels = z;
        }
    }
    let encoder = level_mults(tensors, "encoder.down", config.channels, video);
    let decoder = level_mults(tensors, "decoder.up", config.channels, video);
    if !encoder.is_empty() && encoder != config.channels_mult {
        notes.push(format!(
            "the checkpoint's encoder has channels_mult {encoder:?}, the configuration said {:?}; using the checkpoint's",
            config.channels_mult
        ));
        config.channels_mult = encoder;
    }
    if !decoder.is_empty() && decoder != config.decoder_channels_mult {
        notes.push(format!(
            "the checkpoint's decoder has channels_mult {decoder:?}, the configuration said {:?}; using the checkpoint's",
            config.decoder_channels_mult
        ));
        config.decoder_channels_mult = decoder;
    }
}

/// Infers a configuration from tensor shapes when no name or config.json says what it is.
fn infer_config(origin: &Path, tensors: &HashMap<String, Tensor>) -> Result<NetworkConfig> {
    let fail = |why: &str| {
        checkpoint_error(
            origin,
            format!("cannot tell which Cosmos variant this is ({why}); pass --variant NAME (e.g. CV8x8x8) or put a config.json next to it"),
        )
    };
    let video = tensors.keys().any(|k| k.contains(".conv3d."));
    let prefix = if tensors.keys().any(|k| k.starts_with("encoder.")) {
        "encoder"
    } else {
        "decoder"
    };
    let conv_in = if video {
        shape_of(tensors, &format!("{prefix}.conv_in.0.conv3d.weight"))
    } else {
        shape_of(tensors, &format!("{prefix}.conv_in.weight"))
    }
    .ok_or_else(|| fail("no conv_in weight"))?;
    let discrete = tensors.keys().any(|k| k.starts_with("quantizer."))
        || shape_of(
            tensors,
            if video {
                "quant_conv.conv3d.weight"
            } else {
                "quant_conv.weight"
            },
        )
        .or_else(|| {
            shape_of(
                tensors,
                if video {
                    "post_quant_conv.conv3d.weight"
                } else {
                    "post_quant_conv.weight"
                },
            )
        })
        .is_some_and(|s| s.first() == Some(&6) || s.get(1) == Some(&6));
    let family = match (video, discrete) {
        (false, false) => Family::CI,
        (false, true) => Family::DI,
        (true, false) => Family::CV,
        (true, true) => Family::DV,
    };
    let (channels, patched, z_channels) = if prefix == "encoder" {
        let [out, inp, ..] = conv_in[..] else {
            return Err(fail(&format!("conv_in weight of shape {conv_in:?}")));
        };
        let z = if video {
            shape_of(tensors, "encoder.conv_out.0.conv3d.weight")
        } else {
            shape_of(tensors, "encoder.conv_out.weight")
        }
        .and_then(|s| s.first().copied())
        .ok_or_else(|| fail("no encoder.conv_out weight"))?;
        (out, inp, z)
    } else {
        return Err(fail(
            "only decoder weights, which do not pin down the encoder",
        ));
    };
    let patch_size = match (video, patched) {
        (false, 48) | (true, 192) => 4,
        (false, 12) | (true, 24) => 2,
        _ => {
            return Err(fail(&format!(
                "{patched} input channels after the wavelet patcher"
            )))
        }
    };
    let channels_mult = level_mults(tensors, "encoder.down", channels, video);
    let decoder_channels_mult = {
        let d = level_mults(tensors, "decoder.up", channels, video);
        if d.is_empty() {
            channels_mult.clone()
        } else {
            d
        }
    };
    let num_res_blocks = (0..)
        .take_while(|b| {
            tensors
                .keys()
                .any(|k| k.starts_with(&format!("encoder.down.0.block.{b}.")))
        })
        .count();
    // Resampler keys: spatial steps are unambiguous for images; for video only when the file
    // holds just the convolutions that are used (the 1.0 / diffusers key set).
    let levels = channels_mult.len();
    let has = |key: String| tensors.contains_key(&key);
    let (spatial_steps, temporal_steps) = if video {
        let spatial: Vec<bool> = (0..levels)
            .map(|i| has(format!("encoder.down.{i}.downsample.conv1.conv3d.weight")))
            .collect();
        let temporal: Vec<bool> = (0..levels)
            .map(|i| has(format!("encoder.down.{i}.downsample.conv2.conv3d.weight")))
            .collect();
        let prefix_len = |flags: &[bool]| flags.iter().take_while(|f| **f).count();
        let (s, t) = (prefix_len(&spatial), prefix_len(&temporal));
        let consistent = spatial.iter().filter(|f| **f).count() == s
            && temporal.iter().filter(|f| **f).count() == t;
        if !consistent
            || s == levels
            || t == levels
            || s + 1 == levels && t + 1 == levels && levels > 2
        {
            return Err(fail("the file holds resampler weights that the forward pass never uses, so the compression rate is ambiguous"));
        }
        (s, t)
    } else {
        let s = (0..levels)
            .filter(|i| has(format!("encoder.down.{i}.downsample.conv.weight")))
            .count();
        (s, 0)
    };
    let config = NetworkConfig {
        family,
        channels,
        channels_mult,
        decoder_channels_mult,
        num_res_blocks,
        z_channels,
        latent_channels: if discrete {
            6
        } else {
            shape_of(
                tensors,
                if video {
                    "quant_conv.conv3d.weight"
                } else {
                    "quant_conv.weight"
                },
            )
            .and_then(|s| s.first().copied())
            .unwrap_or(16)
        },
        patch_size,
        spatial_compression: patch_size << spatial_steps,
        temporal_compression: if video {
            patch_size << temporal_steps
        } else {
            1
        },
        legacy_mode: false,
    };
    config.check()?;
    Ok(config)
}
