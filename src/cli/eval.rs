//! `eval`: every model on every input through the official wrapper, with the numbers that choose a
//! compression rate: clip PSNR (TokenBench), per-frame PSNR and SSIM, bits per pixel, timings.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use super::info::compression_label;
use super::ComputeArgs;
use crate::analysis::plan;
use crate::analysis::stream::{self, FrameSource};
use crate::io::write_atomically;
use crate::media::DecodeOptions;
use crate::tokenizer::checkpoint::LoadOptions;
use crate::tokenizer::runner;

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Images or videos to evaluate.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Comma-separated checkpoints (folders, files, variant names or repo ids). Default: every
    /// model Tokenscope trained and ships in `assets/models/`.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Use at most this many frames of each input.
    #[arg(long)]
    frames: Option<usize>,
    /// Resize so the shorter side has this many pixels.
    #[arg(long)]
    resize: Option<usize>,
    /// Temporal window of the official wrapper (frames).
    #[arg(long, default_value_t = runner::DEFAULT_TEMPORAL_WINDOW)]
    window: usize,
    /// Also write the table as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Also write one JSON object per (input, model), with per-frame values.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Memory the whole process may use (`6GiB`, `800MB`); over it, a shorter temporal window
    /// or spatial tiles are chosen. Default: what it holds plus 80% of the available memory.
    #[arg(long, value_parser = super::parse_budget)]
    memory_budget: Option<u64>,
    #[command(flatten)]
    compute: ComputeArgs,
}

impl EvalArgs {
    fn decode_options(&self) -> DecodeOptions {
        DecodeOptions {
            max_frames: self.frames,
            resize_shorter_side: self.resize,
            ..DecodeOptions::default()
        }
    }
}

/// One (input, model) row.
#[derive(Debug, Serialize)]
pub struct EvalRow {
    pub input: String,
    pub model: String,
    pub variant: String,
    pub family: String,
    pub compression: String,
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    pub fps: f64,
    /// Token grid of the first window (t, h, w).
    pub latent_shape: (usize, usize, usize),
    pub windows: usize,
    pub tokens_per_frame: f64,
    pub tokens_per_second: f64,
    pub bits_per_pixel: f64,
    pub psnr_clip: f64,
    #[serde(serialize_with = "finite_or_null")]
    pub psnr_mean: f64,
    #[serde(serialize_with = "finite_or_null")]
    pub psnr_min: f64,
    #[serde(serialize_with = "finite_vec_or_null")]
    pub psnr_frames: Vec<f64>,
    pub ssim_frames: Vec<f64>,
    pub ssim_mean: f64,
    pub encode_s: f64,
    pub decode_s: f64,
    pub peak_rss_bytes: u64,
    /// What the memory planner expected the peak to be.
    pub estimated_peak_bytes: u64,
    /// Tile edge when the planner chose spatial tiling.
    pub tiling: Option<usize>,
    /// Temporal window the run used (the planner may shorten it).
    pub temporal_window: usize,
    pub device: String,
    pub dtype: String,
}

fn finite_or_null<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

fn finite_vec_or_null<S: serde::Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for x in v {
        if x.is_finite() {
            seq.serialize_element(x)?;
        } else {
            seq.serialize_element(&Option::<f64>::None)?;
        }
    }
    seq.end()
}

fn evaluate(
    input: &Path,
    source: &mut stream::MediaInput,
    model_spec: &str,
    args: &EvalArgs,
    cancel: &AtomicBool,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<EvalRow> {
    let (device, dtype) = args.compute.resolve()?;
    let options = LoadOptions {
        variant: None,
        device: device.clone(),
        dtype,
    };
    let (_, loaded) = super::models::load_model(model_spec, &options)?;
    let model = &loaded.tokenizer;
    let cfg = model.config();
    let (width, height) = source.size();
    let expected_frames = source.frames_hint().unwrap_or(1).max(1);
    let job = plan::JobSpec {
        requested_window: args.window,
        // Per-frame PSNR, SSIM and MSE.
        kept: expected_frames as u64 * 24,
        ..plan::JobSpec::for_model(model, (width, height), expected_frames)
    };
    let plan = plan::plan_on(&device, &job, args.memory_budget)?;
    if let Some(adjustment) = &plan.adjustment {
        // `println` would drop the line when stderr is not a terminal (the bar is hidden then).
        bar.suspend(|| eprintln!("note: {} × {model_spec}: {adjustment}", input.display()));
    }
    let mut progress = |done: usize, total: Option<usize>| {
        let total = total.map_or_else(|| "?".to_string(), |t| t.to_string());
        bar.set_message(format!("{model_spec}: frame {done}/{total}"));
    };
    let analysis = stream::analyse(model, source, &plan, cancel, &mut progress)?;
    let summary = &analysis.summary;
    let frame_count = analysis.frames;
    let positions = analysis.token_positions;
    let tokens_per_frame = positions as f64 / frame_count.max(1) as f64;
    let fps = source.fps();
    Ok(EvalRow {
        input: input.display().to_string(),
        model: model_spec.to_string(),
        variant: loaded.variant_name.clone(),
        family: cfg.family.name().to_string(),
        compression: compression_label(cfg),
        frames: frame_count,
        width,
        height,
        fps,
        latent_shape: analysis.first_grid().unwrap_or((0, 0, 0)),
        windows: analysis.windows.len(),
        tokens_per_frame,
        tokens_per_second: tokens_per_frame * fps,
        bits_per_pixel: analysis.bits_per_pixel(model),
        psnr_clip: summary.psnr_clip,
        psnr_mean: summary.psnr_mean,
        psnr_min: summary.psnr_min,
        psnr_frames: summary.psnr_frames.clone(),
        ssim_frames: summary.ssim_frames.clone(),
        ssim_mean: summary.ssim_mean,
        encode_s: analysis.encode_seconds(),
        decode_s: analysis.decode_seconds(),
        peak_rss_bytes: crate::sys::peak_rss_bytes().unwrap_or(0),
        estimated_peak_bytes: plan.estimate,
        tiling: plan.tiling.map(|t| t.tile),
        temporal_window: plan.temporal_window,
        device: crate::device::describe(&device),
        dtype: format!("{dtype:?}"),
    })
}

const HEADER: [&str; 14] = [
    "input",
    "model",
    "family",
    "T×H×W",
    "latent",
    "tok/frame",
    "tok/s",
    "bpp",
    "PSNR clip",
    "PSNR mean/min",
    "SSIM",
    "enc s",
    "dec s",
    "peak GiB",
];

fn table_cells(row: &EvalRow) -> Vec<String> {
    let (t, h, w) = row.latent_shape;
    let show = |v: f64| {
        if v.is_finite() {
            format!("{v:.2}")
        } else {
            "inf".into()
        }
    };
    vec![
        Path::new(&row.input)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        // A checkpoint path is long: its folder (or file) name says which model it is.
        Path::new(&row.model)
            .file_name()
            .filter(|_| Path::new(&row.model).exists())
            .map_or_else(|| row.model.clone(), |n| n.to_string_lossy().into_owned()),
        row.family.clone(),
        row.compression.clone(),
        format!(
            "{t}x{h}x{w}{}",
            if row.windows > 1 {
                format!(" ×{}", row.windows)
            } else {
                String::new()
            }
        ),
        format!("{:.0}", row.tokens_per_frame),
        format!("{:.0}", row.tokens_per_second),
        format!("{:.4}", row.bits_per_pixel),
        format!("{:.2}", row.psnr_clip),
        format!("{}/{}", show(row.psnr_mean), show(row.psnr_min)),
        format!("{:.4}", row.ssim_mean),
        format!("{:.2}", row.encode_s),
        format!("{:.2}", row.decode_s),
        format!("{:.2}", row.peak_rss_bytes as f64 / (1u64 << 30) as f64),
    ]
}

fn print_table(rows: &[EvalRow], failures: &[(String, String, String)]) {
    let mut cells: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).collect()];
    cells.extend(rows.iter().map(table_cells));
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|c| {
            cells
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    for (input, model, error) in failures {
        println!("{input} × {model}: FAILED: {error}");
    }
    println!("PSNR clip: one MSE over all frames (TokenBench); mean/min: over per-frame PSNR. SSIM: mean of per-frame SSIM.");
}

fn csv_escape(field: &str) -> String {
    if field.contains([',', '"', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

fn write_csv(path: &Path, rows: &[EvalRow]) -> anyhow::Result<()> {
    let mut text = String::from(
        "input,model,variant,family,compression,frames,width,height,fps,latent_t,latent_h,latent_w,windows,tokens_per_frame,tokens_per_second,bits_per_pixel,psnr_clip,psnr_mean,psnr_min,ssim_mean,encode_s,decode_s,peak_rss_bytes\n",
    );
    for r in rows {
        let (t, h, w) = r.latent_shape;
        let fields = [
            csv_escape(&r.input),
            csv_escape(&r.model),
            csv_escape(&r.variant),
            r.family.clone(),
            r.compression.clone(),
            r.frames.to_string(),
            r.width.to_string(),
            r.height.to_string(),
            format!("{:.3}", r.fps),
            t.to_string(),
            h.to_string(),
            w.to_string(),
            r.windows.to_string(),
            format!("{:.3}", r.tokens_per_frame),
            format!("{:.3}", r.tokens_per_second),
            format!("{:.6}", r.bits_per_pixel),
            format!("{:.4}", r.psnr_clip),
            format!("{:.4}", r.psnr_mean),
            format!("{:.4}", r.psnr_min),
            format!("{:.6}", r.ssim_mean),
            format!("{:.4}", r.encode_s),
            format!("{:.4}", r.decode_s),
            r.peak_rss_bytes.to_string(),
        ];
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    write_atomically(path, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| e.to_string())
    })?;
    Ok(())
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    if args.models.is_empty() {
        let root = crate::shipped::project_root();
        let shipped: Vec<String> = crate::shipped::trained_models(&root)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        if shipped.is_empty() {
            bail!(
                "no --models given and no trained models in assets/models/; name some, e.g. \
                 --models CV8x8x8,DV8x16x16 (fetched from the Hugging Face Hub) or a checkpoint folder"
            );
        }
        eprintln!(
            "models: Tokenscope's own trained models from assets/models/ (not NVIDIA's): {}",
            shipped.join(", ")
        );
        let mut with_models = args.clone();
        with_models.models = shipped;
        return run(&with_models);
    }
    for out in [&args.csv, &args.json].into_iter().flatten() {
        let inputs: Vec<&Path> = args.inputs.iter().map(PathBuf::as_path).collect();
        crate::io::ensure_not_input(out, &inputs)?;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = Arc::clone(&cancel);
        // A second Ctrl-C while stopping falls through to the default handler.
        let _ = ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after the current window; finished rows are kept (Ctrl-C again to quit now)");
        });
    }
    let decode = args.decode_options();
    let total = (args.inputs.len() * args.models.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} runs, {elapsed} elapsed, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    'inputs: for input in &args.inputs {
        let mut source = match stream::MediaInput::open(input, &decode) {
            Ok(source) => source,
            Err(e) => {
                for model in &args.models {
                    failures.push((input.display().to_string(), model.clone(), e.to_string()));
                    bar.inc(1);
                }
                continue;
            }
        };
        for (index, model) in args.models.iter().enumerate() {
            if cancel.load(Ordering::SeqCst) {
                break 'inputs;
            }
            let run = match index {
                0 => Ok(()),
                _ => source.rewind().map_err(anyhow::Error::from),
            }
            .and_then(|()| evaluate(input, &mut source, model, args, &cancel, &bar));
            // The reader's warnings are the same for every model: say them once.
            if index == 0 {
                for warning in source.warnings() {
                    bar.suspend(|| eprintln!("warning: {}: {warning}", input.display()));
                }
            }
            match run {
                Ok(row) => rows.push(row),
                Err(e) if cancel.load(Ordering::SeqCst) => {
                    let _ = e;
                    break 'inputs;
                }
                Err(e) => {
                    let reason: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                    failures.push((
                        input.display().to_string(),
                        model.clone(),
                        reason.join(": "),
                    ));
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    print_table(&rows, &failures);
    if let Some(path) = &args.csv {
        write_csv(path, &rows)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&rows)?;
        write_atomically(path, |tmp| {
            std::fs::write(tmp, &text).map_err(|e| e.to_string())
        })?;
        println!("wrote {}", path.display());
    }
    if cancel.load(Ordering::SeqCst) {
        bail!("stopped by Ctrl-C after {} finished rows", rows.len());
    }
    if rows.is_empty() && !failures.is_empty() {
        bail!("every run failed");
    }
    Ok(())
}
