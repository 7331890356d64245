//! `encode`, `decode`, `reconstruct`: on safetensors tensor files the network's raw I/O (no
//! padding); on images and videos the official wrapper (see `media_io`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::Args;

use super::ModelArgs;
use crate::io::{ensure_not_input, save_safetensors};
use crate::tokenizer::Tokens;

#[derive(Args, Debug)]
pub struct EncodeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// An image or video, or a safetensors file holding `input`.
    input: PathBuf,
    /// Output: `.safetensors` (tokens, and for `reconstruct` the reconstruction), or for
    /// `reconstruct` of media `.mp4` (H.264), `.mkv` (FFV1, lossless) or `.png`.
    #[arg(short, long)]
    output: PathBuf,
    /// Temporal window of the official wrapper, in frames (media inputs).
    #[arg(long, default_value_t = crate::tokenizer::runner::DEFAULT_TEMPORAL_WINDOW)]
    window: usize,
    /// `reconstruct` to media: write original and reconstruction side by side, labelled with the
    /// model, frame and PSNR (for decks).
    #[arg(long)]
    side_by_side: bool,
    /// Memory the whole process may use (`6GiB`, `800MB`); over it, a shorter window (and for
    /// media output, spatial tiles) is chosen. Default: what it holds plus 80% of the available
    /// memory.
    #[arg(long, value_parser = super::parse_budget)]
    memory_budget: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// safetensors file holding `latent` (continuous) or `indices` (discrete), as `encode` writes.
    tokens: PathBuf,
    /// Output: `.safetensors`, or for tokens encoded from media `.mp4`, `.mkv` or `.png`.
    #[arg(short, long)]
    output: PathBuf,
}

fn read_tensors(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading tensors from `{}`", path.display()))
}

fn read_metadata(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("`{}` is not a safetensors file", path.display()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

fn metadata(
    loaded: &crate::tokenizer::checkpoint::LoadedModel,
    source: &Path,
) -> HashMap<String, String> {
    let cfg = loaded.tokenizer.config();
    HashMap::from([
        ("variant".to_string(), loaded.variant_name.clone()),
        ("family".to_string(), cfg.family.name().to_string()),
        ("source".to_string(), source.display().to_string()),
        (
            "producer".to_string(),
            format!("tokenscope {}", env!("CARGO_PKG_VERSION")),
        ),
    ])
}

pub fn encode(args: &EncodeArgs, reconstruct: bool) -> anyhow::Result<()> {
    ensure_not_input(&args.output, &[&args.input, &args.model.model])?;
    if !crate::io::is_tensor_file(&args.input) {
        #[cfg(feature = "media")]
        {
            let loaded = args.model.load()?;
            return super::media_io::encode_media(
                &loaded,
                &args.input,
                &args.output,
                reconstruct,
                super::media_io::MediaRunOptions {
                    window: args.window,
                    side_by_side: args.side_by_side,
                    memory_budget: args.memory_budget,
                },
            );
        }
        #[cfg(not(feature = "media"))]
        bail!(
            "`{}` is not a .safetensors tensor file, and this build reads no images or videos \
             (built without the `media` feature)",
            args.input.display()
        );
    }
    let tensors = read_tensors(&args.input)?;
    let Some(input) = tensors.get("input") else {
        bail!(
            "`{}` has no tensor named `input` (found: {})",
            args.input.display(),
            tensors.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    if input.dtype() != DType::F32 {
        bail!("`input` must be float32, got {:?}", input.dtype());
    }
    let loaded = args.model.load()?;
    let model = &loaded.tokenizer;
    let started = std::time::Instant::now();
    let tokens = model.encode(input)?;
    eprintln!(
        "encoded {:?} in {:.3} s",
        input.dims(),
        started.elapsed().as_secs_f64()
    );
    let mut outputs: Vec<(&str, Tensor)> = match &tokens {
        Tokens::Continuous { latent } => vec![("latent", latent.to_dtype(DType::F32)?)],
        Tokens::Discrete { indices, codes } => vec![
            ("indices", indices.to_dtype(DType::I64)?),
            ("codes", codes.to_dtype(DType::F32)?),
        ],
    };
    if reconstruct {
        let started = std::time::Instant::now();
        let reconstruction = model.decode(&tokens)?;
        eprintln!("decoded in {:.3} s", started.elapsed().as_secs_f64());
        outputs.push(("reconstruction", reconstruction.to_dtype(DType::F32)?));
    }
    let refs: Vec<(&str, &Tensor)> = outputs.iter().map(|(n, t)| (*n, t)).collect();
    save_safetensors(&args.output, &refs, metadata(&loaded, &args.input))?;
    for (name, tensor) in &outputs {
        println!("{name}: {:?} {:?}", tensor.dims(), tensor.dtype());
    }
    println!("wrote {}", args.output.display());
    Ok(())
}

pub fn decode(args: &DecodeArgs) -> anyhow::Result<()> {
    ensure_not_input(&args.output, &[&args.tokens, &args.model.model])?;
    let tensors = read_tensors(&args.tokens)?;
    let loaded = args.model.load()?;
    let stored = read_metadata(&args.tokens)?;
    if stored.contains_key("windows") {
        #[cfg(feature = "media")]
        return super::media_io::decode_media(
            &loaded,
            &args.tokens,
            &tensors,
            &stored,
            &args.output,
        );
        #[cfg(not(feature = "media"))]
        bail!(
            "`{}` holds the tokens of an image or video, which this build cannot write back \
             (built without the `media` feature)",
            args.tokens.display()
        );
    }
    let model = &loaded.tokenizer;
    let wanted = if model.config().family.is_discrete() {
        "indices"
    } else {
        "latent"
    };
    let Some(source) = tensors.get(wanted) else {
        bail!(
            "`{}` has no `{wanted}` tensor, which a {} tokenizer decodes (found: {})",
            args.tokens.display(),
            model.config().family.describe(),
            tensors.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let tokens = model.tokens_from_tensor(source)?;
    let started = std::time::Instant::now();
    let reconstruction = model.decode(&tokens)?.to_dtype(DType::F32)?;
    eprintln!("decoded in {:.3} s", started.elapsed().as_secs_f64());
    save_safetensors(
        &args.output,
        &[("reconstruction", &reconstruction)],
        metadata(&loaded, &args.tokens),
    )?;
    println!("reconstruction: {:?}", reconstruction.dims());
    println!("wrote {}", args.output.display());
    Ok(())
}
