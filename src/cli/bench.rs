//! `bench`: encode/decode timings and peak memory of a full-size network with random weights.

use anyhow::{bail, Context};
use candle_core::{DType, Device, Shape, Tensor};
use clap::Args;

use super::ComputeArgs;
use crate::analysis::plan;
use crate::sys::{peak_rss_bytes, rss_bytes};
use crate::tokenizer::config::find_variant;
use crate::tokenizer::model::{HaarTaps, Halves, Tokenizer};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Variant whose full-size architecture to build (e.g. CV8x8x8, CI8x8).
    #[arg(long)]
    variant: String,
    /// Input shape, `B x 3 x [T x] H x W`, e.g. 1x3x17x256x256 or 1x3x512x512.
    #[arg(long)]
    input_shape: String,
    /// Timed runs after the warm-up runs.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed runs first (page faults, scratch pools); 0 times a cold first run, which is what a
    /// single minutes-long run at HD needs.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Refuse shapes whose estimated peak exceeds this (`8GiB`, `500MB`); default: what the
    /// process holds plus 80% of the available memory.
    #[arg(long, value_parser = super::parse_budget)]
    memory_budget: Option<u64>,
}

/// Random weights: N(0, 1/fan_in) for convolutions, ones for norms and biases.
struct RandomWeights;

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        _name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = shape.dims();
        if dims.len() < 2 {
            return Tensor::ones(shape, dtype, device);
        }
        let fan_in: usize = dims.iter().skip(1).product();
        Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _device: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights have no unshaped tensor `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

fn parse_shape(text: &str) -> anyhow::Result<Vec<usize>> {
    let dims: Vec<usize> = text
        .split(['x', 'X', ','])
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("`{text}` is not a shape like 1x3x17x256x256"))?;
    if !(dims.len() == 4 || dims.len() == 5) || dims.get(1) != Some(&3) {
        bail!("input shape must be B x 3 x H x W or B x 3 x T x H x W, got `{text}`");
    }
    Ok(dims)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    match values {
        [] => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let variant = find_variant(&args.variant).with_context(|| {
        format!(
            "unknown variant `{}`; see `tokenscope variants`",
            args.variant
        )
    })?;
    let dims = parse_shape(&args.input_shape)?;
    let (device, dtype) = args.compute.resolve()?;
    let cfg = &variant.config;
    let (frames, height, width) = match dims.as_slice() {
        [_, _, t, h, w] => (*t, *h, *w),
        [_, _, h, w] => (1, *h, *w),
        _ => (1, 0, 0),
    };
    if cfg.family.is_video() != (dims.len() == 5) {
        bail!(
            "{} is a {} tokenizer: give a {}-D input shape",
            variant.name,
            cfg.family.describe(),
            if cfg.family.is_video() { 5 } else { 4 }
        );
    }
    cfg.check_input_size(frames, height, width)?;
    let rss_before = rss_bytes().unwrap_or(0);
    let vb = candle_nn::VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone());
    let model = Tokenizer::new(cfg, HaarTaps::default(), Halves::Both, vb)?;
    let weights_bytes = rss_bytes().unwrap_or(0).saturating_sub(rss_before);
    // Bench runs the network on the whole input at once (no windows, no tiles): refuse what
    // cannot fit before the input is allocated.
    let held = plan::held_bytes(&device);
    let budget = args
        .memory_budget
        .map_or_else(|| plan::default_budget(&device, held), plan::Budget::given);
    let estimate = held
        + plan::network_working_bytes(
            cfg,
            frames,
            height,
            width,
            dims.first().copied().unwrap_or(1),
            dtype,
            plan::Target::of(&device),
        );
    if estimate > budget.bytes {
        bail!(
            "{} on {} needs about {} but the memory budget is {}: try a smaller shape or raise --memory-budget",
            variant.name,
            args.input_shape,
            plan::human_bytes(estimate),
            budget
        );
    }
    let input = Tensor::rand(-1f32, 1f32, dims.as_slice(), &device)?.to_dtype(dtype)?;
    crate::device::reset_gpu_peak(&device)?;
    let mut encode_times = Vec::with_capacity(args.runs);
    let mut decode_times = Vec::with_capacity(args.runs);
    let mut totals = Vec::with_capacity(args.runs);
    for run in 0..args.warmup + args.runs {
        let started = std::time::Instant::now();
        let tokens = model.encode(&input)?;
        synchronize(&device)?;
        let encode = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let recon = model.decode(&tokens)?;
        synchronize(&device)?;
        let decode = started.elapsed().as_secs_f64();
        drop(recon);
        if run >= args.warmup {
            encode_times.push(encode);
            decode_times.push(decode);
            totals.push(encode + decode);
        }
    }
    let (enc, dec, total) = (
        median(&mut encode_times),
        median(&mut decode_times),
        median(&mut totals),
    );
    let peak = peak_rss_bytes().unwrap_or(0);
    let gpu = crate::device::gpu_memory(&device)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    // Frames through the network per run: images count one each.
    let frames_per_run = (dims.first().copied().unwrap_or(1) * frames).max(1) as f64;
    let ms_per_frame = |seconds: f64| 1e3 * seconds / frames_per_run;
    if args.json {
        let report = serde_json::json!({
            "variant": variant.name,
            "input_shape": dims,
            "device": crate::device::describe(&device),
            "dtype": format!("{dtype:?}"),
            "runs": args.runs,
            "warmup_runs": args.warmup,
            "threads": rayon::current_num_threads(),
            "encode_s_median": enc,
            "decode_s_median": dec,
            "total_s_median": total,
            "encode_s": encode_times,
            "decode_s": decode_times,
            "peak_rss_bytes": peak,
            "weights_bytes": weights_bytes,
            "estimated_peak_bytes": estimate,
            "frames_per_run": frames_per_run,
            "encode_ms_per_frame": ms_per_frame(enc),
            "decode_ms_per_frame": ms_per_frame(dec),
            "total_ms_per_frame": ms_per_frame(total),
            "gpu_pool_peak_bytes": gpu.map(|g| g.pool_peak),
            "gpu_device_used_bytes": gpu.map(|g| g.device_used),
        });
        println!("{report}");
    } else {
        println!(
            "{} full size, random weights, input {}, {:?} on {}, {} runs after {} warm-up",
            variant.name,
            args.input_shape,
            dtype,
            crate::device::describe(&device),
            args.runs,
            args.warmup
        );
        println!(
            "{:<10} {:>12} {:>10} {:>10} {:>14}",
            "stage", "median (s)", "min (s)", "max (s)", "ms per frame"
        );
        for (name, values, med) in [
            ("encode", &encode_times, enc),
            ("decode", &decode_times, dec),
            ("total", &totals, total),
        ] {
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(0.0, f64::max);
            println!(
                "{name:<10} {med:>12.3} {min:>10.3} {max:>10.3} {:>14.1}",
                ms_per_frame(med)
            );
        }
        if let Some(g) = gpu {
            println!(
                "peak GPU memory {:.2} GiB (memory pool high-water mark; device-wide now {:.2} of {:.0} GiB)",
                gib(g.pool_peak),
                gib(g.device_used),
                gib(g.device_total)
            );
        }
        println!(
            "peak RSS {:.2} GiB (weights {:.2} GiB); the planner expected {:.2} GiB",
            gib(peak),
            gib(weights_bytes),
            gib(estimate)
        );
    }
    Ok(())
}

fn synchronize(device: &Device) -> anyhow::Result<()> {
    device.synchronize()?;
    Ok(())
}
