//! `info` and `variants`.

use clap::Args;

use super::ModelArgs;
use crate::tokenizer::config::{all_variants, NetworkConfig};

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// List every unused key instead of a count.
    #[arg(long)]
    all_keys: bool,
}

/// "T×H×W" (video) or "H×W" (image) compression.
pub fn compression_label(cfg: &NetworkConfig) -> String {
    let s = cfg.spatial_compression;
    if cfg.family.is_video() {
        format!("{}x{s}x{s}", cfg.temporal_compression)
    } else {
        format!("{s}x{s}")
    }
}

pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let cfg = loaded.tokenizer.config();
    let halves = match (
        loaded.tokenizer.has_encoder(),
        loaded.tokenizer.has_decoder(),
    ) {
        (true, true) => "encoder + decoder",
        (true, false) => "encoder only",
        (false, true) => "decoder only",
        (false, false) => "none",
    };
    println!("variant:        {}", loaded.variant_name);
    println!("configuration:  from {}", loaded.config_source);
    println!(
        "family:         {} ({})",
        cfg.family.name(),
        cfg.family.describe()
    );
    println!("compression:    {}", compression_label(cfg));
    if let Some(side) = loaded.trained_shorter_side {
        println!("trained on:     frames at most {side} pixels on the shorter side");
    }
    println!(
        "architecture:   channels {} x {:?} (decoder {:?}), {} res blocks, z {}, latent {}, patch {}",
        cfg.channels,
        cfg.channels_mult,
        cfg.decoder_channels_mult,
        cfg.num_res_blocks,
        cfg.z_channels,
        cfg.latent_channels,
        cfg.patch_size
    );
    println!(
        "parameters:     {} used in forward",
        group_thousands(loaded.parameters)
    );
    println!("stored dtype:   {:?}", loaded.stored_dtype);
    println!(
        "compute:        {:?} on {}",
        loaded.tokenizer.dtype(),
        crate::device::describe(loaded.tokenizer.device())
    );
    println!("file form:      {}", loaded.form.describe());
    for file in &loaded.files {
        println!("file:           {}", file.display());
    }
    println!("halves:         {halves}");
    println!(
        "haar tap:       encoder {} / decoder {}",
        loaded.haar_taps.encoder, loaded.haar_taps.decoder
    );
    if args.all_keys {
        println!("unused keys:    {}", loaded.unused_keys.len());
        for key in &loaded.unused_keys {
            println!("  {key}");
        }
    } else {
        println!(
            "unused keys:    {} (buffers and never-used resampler weights; --all-keys lists them)",
            loaded.unused_keys.len()
        );
    }
    Ok(())
}

pub fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn list_variants() {
    println!(
        "{:<16} {:<6} {:<12} {:<6} Hugging Face repos",
        "variant", "family", "compression", "patch"
    );
    for v in all_variants() {
        println!(
            "{:<16} {:<6} {:<12} {:<6} {}",
            v.name,
            v.config.family.name(),
            compression_label(&v.config),
            v.config.patch_size,
            v.hf_repos.join(", ")
        );
    }
}
