//! MODEL_CARD.md for a trained model: what it is, what it saw, how it was trained, how well it
//! does on held-out frames.

use std::fmt::Write;

use super::trainer::TrainState;

fn duration(seconds: f64) -> String {
    let minutes = (seconds / 60.0).round() as u64;
    if minutes >= 60 {
        format!("{} h {:02} min", minutes / 60, minutes % 60)
    } else {
        format!("{minutes} min")
    }
}

/// The card's Markdown.
pub fn model_card(state: &TrainState) -> String {
    let s = &state.settings;
    let c = &s.config;
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", s.name);
    let official_width = crate::tokenizer::config::find_variant(&s.variant)
        .map(|v| v.config.channels)
        .unwrap_or(c.channels);
    let (kind, width) = if c.channels < official_width {
        ("A **Tokenscope nano model**", "at a much smaller width")
    } else {
        ("A **model trained by Tokenscope**", "at the official width")
    };
    let _ = writeln!(
        out,
        "{kind}, not an NVIDIA release: a {} tokenizer with the architecture of Cosmos {} (the \
         same modules and key names, so every Tokenscope command loads it), {width}, trained by \
         `tokenscope train` on a few freely licensed clips and photos. It exists so that demos, \
         tests and screenshots show meaningful reconstructions without downloading NVIDIA's \
         checkpoints; judge Cosmos itself with the official weights.\n",
        c.family.describe(),
        s.variant
    );
    let _ = writeln!(out, "## Architecture\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| family | {} |", c.family.name());
    let _ = writeln!(
        out,
        "| compression | {}x{}x{} (time x height x width) |",
        c.temporal_compression, c.spatial_compression, c.spatial_compression
    );
    let _ = writeln!(out, "| base width | {} (official: 128) |", c.channels);
    let _ = writeln!(
        out,
        "| channel multipliers | encoder {:?}, decoder {:?} |",
        c.channels_mult, c.decoder_channels_mult
    );
    let _ = writeln!(
        out,
        "| residual blocks per level | {} (official: 2) |",
        c.num_res_blocks
    );
    let _ = writeln!(
        out,
        "| latent | {} |",
        if c.family.is_discrete() {
            "FSQ levels [8,8,8,5,5,5], 64,000 codes".to_string()
        } else {
            format!("{} channels", c.latent_channels)
        }
    );
    let _ = writeln!(out, "| Haar patch size | {} |", c.patch_size);
    let _ = writeln!(out, "| parameters | {} |", state.parameters);
    let _ = writeln!(out, "| weights stored as | {} (EMA) |\n", s.save_dtype);

    let _ = writeln!(out, "## Training data\n");
    for label in &state.data {
        let _ = writeln!(out, "- {label}");
    }
    if !state.validation_data.is_empty() {
        let _ = writeln!(out, "\nHeld out for validation (never trained on):\n");
        for label in &state.validation_data {
            let _ = writeln!(out, "- {label}");
        }
    }
    let _ = writeln!(
        out,
        "\nProvenance and licences of every file: `assets/SOURCES.md` and `assets/licenses/`.\n"
    );

    let _ = writeln!(out, "## Recipe\n");
    // Terms Tokenscope adds, so a card never passes them off as the Cosmos recipe.
    let added: Vec<&str> = [(s.losses.chroma, "chroma"), (s.losses.mse, "MSE")]
        .into_iter()
        .filter(|(weight, _)| *weight > 0.0)
        .map(|(_, name)| name)
        .collect();
    let origin = match added.as_slice() {
        [] => "the Cosmos recipe".to_string(),
        [one] => format!("the Cosmos recipe plus Tokenscope's {one} term"),
        many => format!(
            "the Cosmos recipe plus Tokenscope's {} terms",
            many.join(" and ")
        ),
    };
    let _ = writeln!(
        out,
        "- Loss ({origin}): {}.",
        s.losses.describe(s.vgg19.is_some())
    );
    if c.family.is_discrete() {
        let _ = writeln!(out, "- FSQ trained with the straight-through estimator.");
    }
    let _ = writeln!(
        out,
        "- {} steps of batch {}, random {}x{} crops{} with horizontal flips{}{}.",
        state.step,
        s.batch,
        s.crop,
        s.crop,
        if s.extra_crops.is_empty() {
            String::new()
        } else {
            format!(
                " (or, as often each, {} crops with the batch scaled to as many pixels)",
                s.extra_crops
                    .iter()
                    .map(|c| format!("{c}x{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        if s.color_jitter > 0.0 {
            format!(" and colour jitter {}", s.color_jitter)
        } else {
            String::new()
        },
        if c.family.is_video() {
            format!(
                ", random temporal windows of 1 + k·{} frames up to {} (sometimes every 2nd frame), \
                 and {:.0}% single-frame steps",
                c.temporal_compression,
                s.max_frames,
                s.image_fraction * 100.0
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "- AdamW (lr {:.1e}, betas 0.9/0.99, weight decay {:.0e}), {} warm-up steps, cosine decay to \
         {:.0}% of the peak, gradient clipping at norm {}, EMA decay {}. Seed {}.",
        s.learning_rate,
        s.weight_decay,
        s.warmup_steps,
        s.final_lr_fraction * 100.0,
        s.clip_norm,
        s.ema_decay,
        s.seed
    );
    if let Some(init) = &s.init {
        let _ = writeln!(out, "- Fine-tuned from `{}`.", init.display());
    }
    if let Some(image) = &s.inflated_from {
        let _ = writeln!(
            out,
            "- Started from the image network `{}` inflated to 3-D: its 2-D kernels became the \
             spatial halves, the temporal halves started as identities, the temporal attention \
             as a no-op and the temporal resamplers as their pooling paths.",
            image.display()
        );
    }
    let _ = writeln!(
        out,
        "- Trained for {} on {}.\n",
        duration(state.seconds),
        state.machine
    );

    let _ = writeln!(out, "## Validation (EMA weights, held-out frames)\n");
    match state.validation.last() {
        Some(v) => {
            let _ = writeln!(
                out,
                "At step {}: clip PSNR {:.2} dB, mean SSIM {:.4} (TokenBench conventions; centred \
                 256x256 windows of the held-out frames).\n",
                v.step, v.psnr, v.ssim
            );
            let _ = writeln!(out, "| step | PSNR (dB) | SSIM |\n|---:|---:|---:|");
            let every = (state.validation.len() / 8).max(1);
            for (i, v) in state.validation.iter().enumerate() {
                if i % every == 0 || i + 1 == state.validation.len() {
                    let _ = writeln!(out, "| {} | {:.2} | {:.4} |", v.step, v.psnr, v.ssim);
                }
            }
        }
        None => {
            let _ = writeln!(
                out,
                "No validation split (no video long enough to hold frames out)."
            );
        }
    }
    out
}
