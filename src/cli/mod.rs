//! The command line: one file per subcommand. Errors are reported once, by `main`.

pub(crate) mod bench;
#[cfg(feature = "media")]
mod eval;
mod info;
#[cfg(feature = "media")]
mod media_io;
mod models;
mod tensors;
mod train;
#[cfg(feature = "gui")]
mod view;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::device::{self, DTypeChoice, DeviceChoice};
use crate::tokenizer::checkpoint::{LoadOptions, LoadedModel};

#[derive(Parser, Debug)]
#[command(
    name = "tokenscope",
    version,
    about = "See what NVIDIA's Cosmos tokenizers do to images and videos",
    long_about = "Runs the Cosmos tokenizers (CI, DI, CV, DV) in Rust from the official checkpoint files \
                  and shows or measures what they do."
)]
pub struct Cli {
    /// No subcommand: open the viewer on the demo clip.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Encode a tensor file (`input`, f32, (B,3,H,W) or (B,3,T,H,W) in [-1,1]) into tokens.
    Encode(tensors::EncodeArgs),
    /// Decode tokens (`latent`, or `indices`) into a `reconstruction`.
    Decode(tensors::DecodeArgs),
    /// Encode and decode; writes the tokens and the `reconstruction` to one file.
    Reconstruct(tensors::EncodeArgs),
    /// Describe a checkpoint: variant, family, compression, parameters, file form, unused keys.
    Info(info::InfoArgs),
    /// List every released variant Tokenscope knows, with its compression and Hugging Face repos.
    Variants,
    /// Time encode and decode of a full-size network with random weights.
    Bench(bench::BenchArgs),
    /// Run models on images/videos through the official wrapper and tabulate PSNR, SSIM, bits per
    /// pixel and timings.
    #[cfg(feature = "media")]
    Eval(eval::EvalArgs),
    /// The released checkpoints on the Hugging Face Hub: list them with their cache status, fetch
    /// them into the cache.
    Models(models::ModelsArgs),
    /// Train a Cosmos-architecture tokenizer (nano width by default) on images and videos; writes
    /// a checkpoint every command loads. Resumes when the output folder holds a run.
    Train(Box<train::TrainArgs>),
    /// Decode images and videos into frames files (u8 tensors) that `train` reads in builds
    /// without FFmpeg.
    #[cfg(feature = "media")]
    Frames(train::FramesArgs),
    /// Open the viewer: original, reconstruction and difference, metrics, tokens, rates.
    #[cfg(feature = "gui")]
    View(view::ViewArgs),
    /// Time the viewer's frames while a model runs, and switching to a computed rate.
    #[cfg(feature = "gui")]
    BenchUi(view::BenchUiArgs),
}

/// Which checkpoint, and where to run it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint folder (encoder.jit + decoder.jit, autoencoder.jit, model.safetensors, diffusers),
    /// a single .jit / .safetensors file, or a model name (CV8x8x8, DV8x16x16-720p,
    /// nvidia/Cosmos-0.1-Tokenizer-CV8x8x8, optionally @revision: a branch, tag or commit) taken
    /// from the Hugging Face cache, fetched when missing.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Variant name or Hugging Face repo id (e.g. CV8x8x8, nvidia/Cosmos-Tokenize1-DV8x16x16-720p);
    /// by default taken from config.json, the path, or the tensor shapes.
    #[arg(long)]
    pub variant: Option<String>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct ComputeArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Compute precision (auto: f32 on the CPU, bf16 on CUDA).
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DTypeChoice,
}

impl ComputeArgs {
    pub fn resolve(&self) -> anyhow::Result<(candle_core::Device, candle_core::DType)> {
        let device = device::select_device(self.device)?;
        let dtype = device::select_dtype(self.dtype, &device)?;
        Ok((device, dtype))
    }
}

impl ModelArgs {
    /// Loads the checkpoint and prints the loader's notes to stderr.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let (device, dtype) = self.compute.resolve()?;
        let options = LoadOptions {
            variant: self.variant.clone(),
            device,
            dtype,
        };
        let (path, loaded) = models::load_model(&self.model.to_string_lossy(), &options)?;
        eprintln!(
            "model: {} ({}) from {} [{}], variant from {}",
            loaded.variant_name,
            loaded.tokenizer.config().family.describe(),
            path.display(),
            loaded.form.describe(),
            loaded.config_source
        );
        for note in &loaded.notes {
            eprintln!("note: {note}");
        }
        Ok(loaded)
    }
}

/// `--memory-budget` values (`6GiB`, `800MB`), checked when the arguments are read; shared by
/// every subcommand that plans memory.
pub fn parse_budget(text: &str) -> Result<u64, String> {
    crate::analysis::plan::parse_size(text).map_err(|e| e.to_string())
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        #[cfg(feature = "gui")]
        return view::run(&view::ViewArgs::default());
        #[cfg(not(feature = "gui"))]
        anyhow::bail!(
            "this build has no viewer (built without the `gui` feature); see `tokenscope --help`"
        );
    };
    match command {
        Command::Encode(args) => tensors::encode(&args, false),
        Command::Reconstruct(args) => tensors::encode(&args, true),
        Command::Decode(args) => tensors::decode(&args),
        Command::Info(args) => info::run(&args),
        Command::Variants => {
            info::list_variants();
            Ok(())
        }
        Command::Bench(args) => bench::run(&args),
        #[cfg(feature = "media")]
        Command::Eval(args) => eval::run(&args),
        Command::Models(args) => models::run(&args),
        Command::Train(args) => train::run(&args),
        #[cfg(feature = "media")]
        Command::Frames(args) => train::frames(&args),
        #[cfg(feature = "gui")]
        Command::View(args) => view::run(&args),
        #[cfg(feature = "gui")]
        Command::BenchUi(args) => view::bench_ui(&args),
    }
}
