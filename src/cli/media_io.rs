//! `encode`, `decode` and `reconstruct` on images and videos: the official wrapper in between, the
//! output kind chosen by the extension of `-o` (`.mp4`, `.mkv`, `.png`, `.safetensors`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::analysis::plan;
use crate::analysis::stream::{self, FrameSource};
use crate::io::save_safetensors;
use crate::media::{self, DecodeOptions, RgbFrames};
use crate::tokenizer::checkpoint::LoadedModel;
use crate::tokenizer::runner::{self, Padding};
use crate::tokenizer::Tokens;

use crate::io::is_tensor_file;

/// One temporal window as stored in a token file's metadata.
#[derive(Debug, Serialize, Deserialize)]
struct WindowRecord {
    start: usize,
    frames: usize,
    /// Token frames (video) or images (image models) this window holds.
    token_frames: usize,
    /// [frames before, after, rows before, after, columns before, after].
    padding: [usize; 6],
}

fn padding_array(p: Padding) -> [usize; 6] {
    [
        p.frames.0, p.frames.1, p.rows.0, p.rows.1, p.cols.0, p.cols.1,
    ]
}

/// Source frames the windows of a token file cover.
fn written_frames(windows: &[WindowRecord]) -> usize {
    windows.iter().map(|w| w.frames).sum()
}

fn padding_from(a: [usize; 6]) -> Padding {
    let [f0, f1, r0, r1, c0, c1] = a;
    Padding {
        frames: (f0, f1),
        rows: (r0, r1),
        cols: (c0, c1),
    }
}

/// The axis along which windows' tokens are concatenated: time for video (`indices` (B, t, h, w),
/// `latent`/`codes` (B, C, t, h, w)), the batch for images.
fn token_time_axis(name: &str, video: bool) -> usize {
    match (video, name) {
        (false, _) => 0,
        (true, "indices") => 1,
        (true, _) => 2,
    }
}

/// The tokens of every window, concatenated along time (video) or batch (images).
/// Tensors to write, by name.
type NamedTensors = Vec<(&'static str, Tensor)>;

fn tokens_tensors(windows: &[Tokens], video: bool) -> anyhow::Result<NamedTensors> {
    let mut latents = Vec::new();
    let mut indices = Vec::new();
    let mut codes = Vec::new();
    for tokens in windows {
        match tokens {
            Tokens::Continuous { latent } => latents.push(latent.to_dtype(DType::F32)?),
            Tokens::Discrete {
                indices: i,
                codes: c,
            } => {
                indices.push(i.to_dtype(DType::I64)?);
                codes.push(c.to_dtype(DType::F32)?);
            }
        }
    }
    let mut out = Vec::new();
    if !latents.is_empty() {
        out.push((
            "latent",
            Tensor::cat(&latents, token_time_axis("latent", video))?,
        ));
    }
    if !indices.is_empty() {
        out.push((
            "indices",
            Tensor::cat(&indices, token_time_axis("indices", video))?,
        ));
        out.push((
            "codes",
            Tensor::cat(&codes, token_time_axis("codes", video))?,
        ));
    }
    Ok(out)
}

/// What a token file records about the frames it was encoded from.
struct SourceFacts<'a> {
    source: &'a Path,
    first_frame: usize,
    stride: usize,
    frames: usize,
    width: usize,
    height: usize,
    fps: f64,
}

fn media_metadata(
    loaded: &LoadedModel,
    clip: &SourceFacts<'_>,
    windows: &[WindowRecord],
) -> anyhow::Result<HashMap<String, String>> {
    let cfg = loaded.tokenizer.config();
    Ok(HashMap::from([
        ("variant".to_string(), loaded.variant_name.clone()),
        ("family".to_string(), cfg.family.name().to_string()),
        ("source".to_string(), clip.source.display().to_string()),
        ("frame_start".to_string(), clip.first_frame.to_string()),
        ("frame_stride".to_string(), clip.stride.to_string()),
        ("frame_count".to_string(), clip.frames.to_string()),
        ("width".to_string(), clip.width.to_string()),
        ("height".to_string(), clip.height.to_string()),
        ("fps".to_string(), format!("{}", clip.fps)),
        ("windows".to_string(), serde_json::to_string(windows)?),
        (
            "producer".to_string(),
            format!("tokenscope {}", env!("CARGO_PKG_VERSION")),
        ),
    ]))
}

/// What a token file keeps of each window while `encode` or `reconstruct` streams a clip: its
/// tokens (small) and where it sits in the clip; [`TokenFile::finish`] turns them into the file's
/// tensors and metadata.
#[derive(Default)]
struct TokenFile {
    records: Vec<WindowRecord>,
    tokens: Vec<Tokens>,
}

impl TokenFile {
    fn push(&mut self, start: usize, frames: usize, padding: Padding, tokens: Tokens) {
        self.records.push(WindowRecord {
            start,
            frames,
            token_frames: tokens.grid().0,
            padding: padding_array(padding),
        });
        self.tokens.push(tokens);
    }

    /// The token tensors and the metadata of a file holding `frames` frames of `input`, after
    /// reporting what the reader warned about.
    fn finish(
        self,
        loaded: &LoadedModel,
        input: &Path,
        source: &stream::MediaInput,
        frames: usize,
    ) -> anyhow::Result<(NamedTensors, HashMap<String, String>)> {
        report_warnings(input, source);
        let video = loaded.tokenizer.config().family.is_video();
        let tensors = tokens_tensors(&self.tokens, video)?;
        let (width, height) = source.size();
        let facts = SourceFacts {
            source: input,
            first_frame: 0,
            stride: 1,
            frames,
            width,
            height,
            fps: source.fps(),
        };
        let metadata = media_metadata(loaded, &facts, &self.records)?;
        Ok((tensors, metadata))
    }
}

fn report_warnings(input: &Path, source: &stream::MediaInput) {
    for warning in source.warnings() {
        eprintln!("warning: {}: {warning}", input.display());
    }
}

fn print_tensor_listing(tensors: &NamedTensors) {
    for (name, t) in tensors {
        println!("{name}: {:?} {:?}", t.dims(), t.dtype());
    }
}

/// How `encode`/`reconstruct` run on media.
#[derive(Clone, Copy, Debug)]
pub struct MediaRunOptions {
    /// Temporal window asked for (the planner may shorten it).
    pub window: usize,
    /// Write original and reconstruction side by side.
    pub side_by_side: bool,
    /// `--memory-budget`; `None` for the default.
    pub memory_budget: Option<u64>,
}

/// `encode`/`reconstruct` of an image or video file. Image tokenizers take a video frame by
/// frame.
pub fn encode_media(
    loaded: &LoadedModel,
    input: &Path,
    output: &Path,
    reconstruct: bool,
    options: MediaRunOptions,
) -> anyhow::Result<()> {
    if reconstruct && media::writes_video(output) {
        return reconstruct_streamed(loaded, input, output, options);
    }
    if !reconstruct && is_tensor_file(output) {
        return encode_streamed(loaded, input, output, options);
    }
    if is_tensor_file(output) {
        return reconstruct_tensors_streamed(loaded, input, output, options);
    }
    if !reconstruct {
        bail!("`encode` writes tokens: give an output ending in .safetensors (or use `reconstruct` for media)");
    }
    // An image output (`.png`, ...): the reconstruction is written whole, so it is planned as
    // kept.
    let clip = media::open(input, &DecodeOptions::default())?;
    for warning in &clip.warnings {
        eprintln!("warning: {}: {warning}", input.display());
    }
    let model = &loaded.tokenizer;
    let video = model.config().family.is_video();
    let clip_bytes = clip.frames.data.len() as u64;
    let job = plan::JobSpec {
        requested_window: options.window,
        // The reconstruction (and the side-by-side composite) of the whole clip.
        kept: clip_bytes * if options.side_by_side { 3 } else { 1 },
        tiling_allowed: true,
        ..plan::JobSpec::for_model(
            model,
            (clip.frames.width, clip.frames.height),
            clip.frames.frames,
        )
    };
    let plan = plan::plan_on(model.device(), &job, options.memory_budget)?;
    if let Some(adjustment) = &plan.adjustment {
        eprintln!("note: {adjustment}");
    }
    let spans = runner::windows(clip.frames.frames, plan.temporal_window, video);
    let mut reconstruction = Vec::with_capacity(clip.frames.data.len());
    let started = std::time::Instant::now();
    let never = std::sync::atomic::AtomicBool::new(false);
    for (i, &(start, count)) in spans.iter().enumerate() {
        let part = clip.frames.slice(start, count)?;
        let run = runner::RunOptions {
            temporal_window: count,
            tiling: plan.tiling,
        };
        let result = runner::reconstruct(model, &part, &run, &never, &mut |_, _| {})?;
        reconstruction.extend_from_slice(&result.reconstruction.data);
        eprint!("\rwindow {}/{}", i + 1, spans.len());
    }
    eprintln!(" done in {:.2} s", started.elapsed().as_secs_f64());
    let inputs: [&Path; 1] = [input];
    let frames = RgbFrames::new(
        clip.frames.frames,
        clip.frames.height,
        clip.frames.width,
        reconstruction,
    )?;
    let frames = if options.side_by_side {
        labelled_composite(loaded, &clip, &frames)?
    } else {
        frames
    };
    let written = media::write(&frames, clip.playback_fps(), output, &inputs)?;
    println!(
        "wrote {} ({}, {} frames)",
        written.path.display(),
        written.codec,
        frames.frames
    );
    Ok(())
}

/// Original | reconstruction, labelled with the source frame, the model and the frame's PSNR.
fn labelled_composite(
    loaded: &LoadedModel,
    clip: &media::Clip,
    reconstruction: &RgbFrames,
) -> anyhow::Result<RgbFrames> {
    Ok(labelled_window(
        &loaded.variant_name,
        &clip.frames,
        reconstruction,
        |i| clip.first_frame + i * clip.stride,
    )?)
}

/// [`labelled_composite`] of one window: `source_frame(i)` numbers its frame `i`.
fn labelled_window(
    model: &str,
    original: &RgbFrames,
    reconstruction: &RgbFrames,
    source_frame: impl Fn(usize) -> usize,
) -> Result<RgbFrames, media::MediaError> {
    let frame_bytes = original.frame_bytes();
    let psnr: Vec<f64> = original
        .data
        .chunks_exact(frame_bytes)
        .zip(reconstruction.data.chunks_exact(frame_bytes))
        .map(|(a, b)| crate::metrics::psnr(a, b).unwrap_or(f64::NAN))
        .collect();
    media::side_by_side(original, reconstruction, |i| media::PanelLabels {
        original: format!("original  frame {}", source_frame(i)),
        reconstruction: match psnr.get(i) {
            Some(p) if p.is_finite() => format!("{model}  PSNR {p:.2} dB"),
            _ => format!("{model}  lossless"),
        },
    })
}

/// `encode` to a token file: decode a window, encode it, keep its tokens (small), drop its
/// frames, so the clip is never held whole.
fn encode_streamed(
    loaded: &LoadedModel,
    input: &Path,
    output: &Path,
    options: MediaRunOptions,
) -> anyhow::Result<()> {
    let model = &loaded.tokenizer;
    // Tokens of a clip need every window whole: no tiles, and nothing kept but the tokens.
    let (mut source, plan, expected) = open_planned(model, input, output, options, &|_| 0, false)?;
    let started = std::time::Instant::now();
    let mut file = TokenFile::default();
    let never = std::sync::atomic::AtomicBool::new(false);
    let frames = stream::encode_with(
        model,
        &mut source,
        plan.temporal_window,
        &never,
        &mut |done, total| eprint!("\rframe {done}/{}", total.unwrap_or(expected)),
        &mut |window| {
            file.push(window.start, window.frames, window.padding, window.tokens);
            Ok(())
        },
    )?;
    eprintln!(" done in {:.2} s", started.elapsed().as_secs_f64());
    let (tensors, metadata) = file.finish(loaded, input, &source, frames)?;
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    save_safetensors(output, &refs, metadata)?;
    print_tensor_listing(&tensors);
    println!("wrote {}", output.display());
    Ok(())
}

/// `reconstruct` to a tensor file: tokens and `reconstruction_rgb`. Window by window, like
/// [`encode_streamed`]: the tokens are kept (small) and each window's reconstruction goes to a
/// spool file beside the output, copied into it at the end, so neither the clip nor its
/// reconstruction is ever held whole.
fn reconstruct_tensors_streamed(
    loaded: &LoadedModel,
    input: &Path,
    output: &Path,
    options: MediaRunOptions,
) -> anyhow::Result<()> {
    let model = &loaded.tokenizer;
    // Tokens of a clip need every window whole: no tiles.
    let (mut source, plan, expected) = open_planned(model, input, output, options, &|_| 0, false)?;
    let (width, height) = source.size();
    let started = std::time::Instant::now();
    let mut spool = crate::io::SpooledTensor::create(output)?;
    let mut file = TokenFile::default();
    let mut keep = |window: stream::FinishedWindow<'_>| -> Result<(), stream::AnalysisError> {
        for w in window.run.windows {
            let tokens = w.tokens.ok_or_else(|| {
                stream::AnalysisError::Source("a tiled window has no tokens to write".into())
            })?;
            file.push(window.start + w.start, w.frames, w.padding, tokens);
        }
        spool.append(&window.run.reconstruction.data)?;
        Ok(())
    };
    let never = std::sync::atomic::AtomicBool::new(false);
    let mut progress = |done: usize, total: Option<usize>| {
        eprint!("\rframe {done}/{}", total.unwrap_or(expected));
    };
    let measured =
        stream::analyse_with(model, &mut source, &plan, &never, &mut progress, &mut keep)?;
    eprintln!(" done in {:.2} s", started.elapsed().as_secs_f64());
    let (tensors, metadata) = file.finish(loaded, input, &source, measured.frames)?;
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let shape = [measured.frames, height, width, 3];
    crate::io::save_safetensors_spooled(
        output,
        &refs,
        ("reconstruction_rgb", safetensors::Dtype::U8, &shape, spool),
        metadata,
    )?;
    print_tensor_listing(&tensors);
    println!("reconstruction_rgb: {shape:?} U8");
    println!(
        "wrote {} (clip PSNR {:.2} dB, SSIM {:.4})",
        output.display(),
        measured.summary.psnr_clip,
        measured.summary.ssim_mean
    );
    Ok(())
}

/// What the streamed commands share: refuse to overwrite the input, open it to be read window
/// by window, and plan the job (printing what the planner changed); `kept` gives the bytes the
/// job keeps beside its window for the input's frame size. Returns the source, the plan and the
/// frames expected.
fn open_planned(
    model: &crate::tokenizer::Tokenizer,
    input: &Path,
    output: &Path,
    options: MediaRunOptions,
    kept: &dyn Fn((usize, usize)) -> u64,
    tiling_allowed: bool,
) -> anyhow::Result<(stream::MediaInput, plan::Plan, usize)> {
    crate::io::ensure_not_input(output, &[input])?;
    let source = stream::MediaInput::open(input, &DecodeOptions::default())?;
    let expected = source.frames_hint().unwrap_or(1).max(1);
    let job = plan::JobSpec {
        requested_window: options.window,
        kept: kept(source.size()),
        tiling_allowed,
        ..plan::JobSpec::for_model(model, source.size(), expected)
    };
    let plan = plan::plan_on(model.device(), &job, options.memory_budget)?;
    if let Some(adjustment) = &plan.adjustment {
        eprintln!("note: {adjustment}");
    }
    Ok((source, plan, expected))
}

/// `reconstruct` to a video: decode a window, run it, write its frames, drop it, so the clip is
/// never held whole (peak memory is one window's, however long the clip). Tiles when the plan
/// says so, since no tokens are kept.
fn reconstruct_streamed(
    loaded: &LoadedModel,
    input: &Path,
    output: &Path,
    options: MediaRunOptions,
) -> anyhow::Result<()> {
    let model = &loaded.tokenizer;
    // The window's composite, when one is drawn.
    let kept = |(w, h): (usize, usize)| {
        if options.side_by_side {
            (options.window * w * h * 3 * 3) as u64
        } else {
            0
        }
    };
    let (mut source, plan, expected) = open_planned(model, input, output, options, &kept, true)?;
    let fps = source.fps();
    let started = std::time::Instant::now();
    let mut writer: Option<media::VideoWriter> = None;
    let mut keep = |window: stream::FinishedWindow<'_>| -> Result<(), stream::AnalysisError> {
        let frames = if options.side_by_side {
            labelled_window(
                &loaded.variant_name,
                window.original,
                &window.run.reconstruction,
                |i| window.start + i,
            )?
        } else {
            window.run.reconstruction
        };
        let writer = match &mut writer {
            Some(writer) => writer,
            None => writer.insert(media::VideoWriter::create(
                output,
                fps,
                (frames.width, frames.height),
                &[input],
            )?),
        };
        for pixels in frames.data.chunks_exact(frames.frame_bytes()) {
            writer.push(pixels)?;
        }
        Ok(())
    };
    let never = std::sync::atomic::AtomicBool::new(false);
    let mut progress = |done: usize, total: Option<usize>| {
        eprint!("\rframe {done}/{}", total.unwrap_or(expected));
    };
    let measured =
        stream::analyse_with(model, &mut source, &plan, &never, &mut progress, &mut keep)?;
    eprintln!(" done in {:.2} s", started.elapsed().as_secs_f64());
    report_warnings(input, &source);
    let writer = writer.ok_or_else(|| anyhow::anyhow!("`{}` gave no frames", input.display()))?;
    let written = writer.finish()?;
    for note in &written.notes {
        eprintln!("note: {note}");
    }
    println!(
        "wrote {} ({}, {} frames; clip PSNR {:.2} dB, SSIM {:.4})",
        written.path.display(),
        written.codec,
        measured.frames,
        measured.summary.psnr_clip,
        measured.summary.ssim_mean
    );
    Ok(())
}

/// `decode` of a token file written by `encode` from media: decodes each window, crops the
/// padding and writes media or tensors by the extension of `-o`.
pub fn decode_media(
    loaded: &LoadedModel,
    tokens_path: &Path,
    tensors: &HashMap<String, Tensor>,
    metadata: &HashMap<String, String>,
    output: &Path,
) -> anyhow::Result<()> {
    let model = &loaded.tokenizer;
    let video = model.config().family.is_video();
    let field = |k: &str| {
        metadata.get(k).with_context(|| {
            format!(
                "`{}` lacks the `{k}` metadata that `encode` writes",
                tokens_path.display()
            )
        })
    };
    let windows: Vec<WindowRecord> = serde_json::from_str(field("windows")?)?;
    let (width, height): (usize, usize) = (field("width")?.parse()?, field("height")?.parse()?);
    let fps: f64 = field("fps")?.parse().unwrap_or(media::FALLBACK_FPS);
    let name = if model.config().family.is_discrete() {
        "indices"
    } else {
        "latent"
    };
    let all = tensors
        .get(name)
        .with_context(|| format!("`{}` has no `{name}` tensor", tokens_path.display()))?;
    let axis = token_time_axis(name, video);
    let inputs: [&Path; 1] = [tokens_path];
    let mut offset = 0;
    let mut decode = |w: &WindowRecord| -> anyhow::Result<RgbFrames> {
        let part = all.narrow(axis, offset, w.token_frames.max(1))?;
        offset += w.token_frames.max(1);
        let tokens = model.tokens_from_tensor(&part)?;
        Ok(runner::decode_window(
            model,
            &tokens,
            padding_from(w.padding),
        )?)
    };
    if media::writes_video(output) {
        // Window by window into the video: the decoded clip is never held whole.
        let mut writer = media::VideoWriter::create(output, fps, (width, height), &inputs)?;
        for w in &windows {
            let decoded = decode(w)?;
            for pixels in decoded.data.chunks_exact(decoded.frame_bytes()) {
                writer.push(pixels)?;
            }
        }
        let written = writer.finish()?;
        println!(
            "wrote {} ({}, {} frames)",
            written.path.display(),
            written.codec,
            written_frames(&windows)
        );
        return Ok(());
    }
    let mut data = Vec::new();
    let mut frames = 0;
    for w in &windows {
        let decoded = decode(w)?;
        frames += decoded.frames;
        data.extend_from_slice(&decoded.data);
    }
    let clip = RgbFrames::new(frames, height, width, data)?;
    if is_tensor_file(output) {
        let t = Tensor::from_vec(
            clip.data,
            (clip.frames, clip.height, clip.width, 3),
            &candle_core::Device::Cpu,
        )?;
        crate::io::ensure_not_input(output, &inputs)?;
        save_safetensors(output, &[("reconstruction_rgb", &t)], HashMap::new())?;
        println!("wrote {}", output.display());
    } else {
        let written = media::write(&clip, fps, output, &inputs)?;
        println!(
            "wrote {} ({}, {} frames)",
            written.path.display(),
            written.codec,
            clip.frames
        );
    }
    Ok(())
}
