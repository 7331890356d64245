//! `tokenscope eval` end to end on a shipped clip with a reference checkpoint.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use crate::common::model_dir;

#[test]
fn eval_prints_a_full_row_and_writes_json_and_csv() {
    let out = std::env::temp_dir().join(format!("tokenscope-eval-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let json = out.join("rows.json");
    let csv = out.join("rows.csv");
    let clip = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.mp4");
    let models = format!(
        "{},{}",
        model_dir("CV8x8x8-tiny").display(),
        model_dir("DI8x8-tiny").display()
    );
    let output = Command::new(env!("CARGO_BIN_EXE_tokenscope"))
        .args([
            "eval", clip, "--models", &models, "--frames", "9", "--resize", "128",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // The video model gives a full row; the image model takes the video frame by frame.
    let row = stdout
        .lines()
        .find(|l| l.contains("CV8x8x8-tiny"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("8x8x8") && row.contains("2x16x"), "{row}");
    let image_row = stdout
        .lines()
        .find(|l| l.contains("DI8x8-tiny"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        image_row.contains("1x16x") && image_row.contains("×9"),
        "{image_row}"
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = &rows[0];
    for key in [
        "input",
        "model",
        "variant",
        "frames",
        "psnr_clip",
        "psnr_frames",
        "ssim_frames",
        "ssim_mean",
        "encode_s",
        "decode_s",
        "bits_per_pixel",
    ] {
        assert!(!row[key].is_null(), "missing {key} in {row}");
    }
    assert_eq!(row["frames"], 9);
    assert_eq!(row["psnr_frames"].as_array().unwrap().len(), 9);
    assert_eq!(row["ssim_frames"].as_array().unwrap().len(), 9);
    // 9 frames → 2 latent frames of the frame padded to multiples of 16 over 8, 16 channels × 32 bits.
    let (w, h) = (
        row["width"].as_u64().unwrap() as f64,
        row["height"].as_u64().unwrap() as f64,
    );
    assert_eq!(h, 128.0);
    let latent = |n: f64| (n / 16.0).ceil() * 16.0 / 8.0;
    let bpp = row["bits_per_pixel"].as_f64().unwrap();
    let expected = (2.0 * latent(h) * latent(w)) * 16.0 * 32.0 / (9.0 * w * h);
    assert!((bpp - expected).abs() < 1e-9, "bpp {bpp} vs {expected}");
    let psnr = row["psnr_clip"].as_f64().unwrap();
    assert!(psnr.is_finite() && psnr > 0.0);
    // The image model: one 64,000-code token per 8x8 cell of every frame.
    let image = &rows[1];
    assert_eq!(image["frames"], 9);
    let cells = latent(h) * latent(w);
    let expected = cells * 64000f64.log2() / (w * h);
    let bpp = image["bits_per_pixel"].as_f64().unwrap();
    assert!((bpp - expected).abs() < 1e-9, "bpp {bpp} vs {expected}");
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv_text.lines().count(), 3, "{csv_text}");
    assert!(csv_text.starts_with("input,model,variant"));
}

/// `encode` of a video writes tokens with window metadata; `decode` of them gives exactly what
/// `reconstruct` writes (lossless output, so pixels can be compared).
#[test]
fn media_encode_decode_equals_reconstruct() {
    let out = std::env::temp_dir().join(format!("tokenscope-media-cli-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let clip = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.mp4");
    let model = model_dir("DV8x16x16-tiny");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_tokenscope"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let m = model.to_str().unwrap();
    let tokens = out.join("tokens.safetensors");
    let direct = out.join("direct.mkv");
    let via_tokens = out.join("via_tokens.mkv");
    let stdout = run(&["encode", "-m", m, clip, "-o", tokens.to_str().unwrap()]);
    // 65 frames → windows of 17, 17, 17, 14 (padded to 17): 4 × 3 token frames of 22 × 40.
    assert!(stdout.contains("indices: [1, 12, 22, 40]"), "{stdout}");
    run(&["reconstruct", "-m", m, clip, "-o", direct.to_str().unwrap()]);
    run(&[
        "decode",
        "-m",
        m,
        tokens.to_str().unwrap(),
        "-o",
        via_tokens.to_str().unwrap(),
    ]);
    let options = tokenscope::media::DecodeOptions::default();
    let a = tokenscope::media::open(&direct, &options).unwrap();
    let b = tokenscope::media::open(&via_tokens, &options).unwrap();
    assert_eq!(
        (a.frames.frames, a.frames.width, a.frames.height),
        (65, 640, 352)
    );
    assert_eq!(a.frames, b.frames);
    // Encoding to a media file is refused with a reason.
    let o = Command::new(env!("CARGO_BIN_EXE_tokenscope"))
        .args([
            "encode",
            "-m",
            m,
            clip,
            "-o",
            out.join("x.mp4").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(".safetensors"));
}

/// `reconstruct --side-by-side` writes original | reconstruction with a label banner.
#[test]
fn side_by_side_composite_is_written() {
    let out = std::env::temp_dir().join(format!("tokenscope-sbs-{}.png", std::process::id()));
    let image = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.png");
    let o = Command::new(env!("CARGO_BIN_EXE_tokenscope"))
        .args([
            "reconstruct",
            "-m",
            model_dir("CI8x8-tiny").to_str().unwrap(),
            image,
            "-o",
            out.to_str().unwrap(),
            "--side-by-side",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let written =
        tokenscope::media::open(&out, &tokenscope::media::DecodeOptions::default()).unwrap();
    let source =
        tokenscope::media::open(image, &tokenscope::media::DecodeOptions::default()).unwrap();
    assert_eq!(
        written.frames.width,
        2 * source.frames.width + tokenscope::media::composite::PANEL_GAP
    );
    assert!(written.frames.height > source.frames.height);
    let _ = std::fs::remove_file(&out);
}

/// Without `--models`, eval takes the trained models in assets/models/ (one row each, named
/// after the shipped folder); with none there, it says what to pass instead.
#[test]
fn eval_without_models_uses_the_shipped_ones_or_says_what_to_do() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = tokenscope::shipped::trained_models(root);
    let o = Command::new(env!("CARGO_BIN_EXE_tokenscope"))
        .args([
            "eval",
            concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.png"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    if shipped.is_empty() {
        assert!(!o.status.success());
        assert!(
            stderr.contains("no --models given") && stderr.contains("assets/models"),
            "{stderr}"
        );
        return;
    }
    assert!(o.status.success(), "{stderr}");
    for dir in &shipped {
        let name = dir.file_name().unwrap().to_string_lossy();
        assert!(
            stdout.contains(name.as_ref()),
            "{name} missing from:\n{stdout}"
        );
    }
}

/// Runs `eval` with the JSON output and returns its one row and what it wrote to stderr.
fn eval_row(
    input: &std::path::Path,
    model: &str,
    extra: &[&str],
    json: &std::path::Path,
) -> (serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenscope"))
        .arg("eval")
        .arg(input)
        .args(["--models", model])
        .args(extra)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (rows[0].clone(), stderr.into_owned())
}

/// A 1080p clip under a small `--memory-budget`: the planner tiles, the process's peak stays
/// within 20% of the budget (the estimate's tolerance), and the result stays close to the
/// untiled one.
#[test]
fn eval_under_a_small_memory_budget_tiles_and_stays_within_it() {
    let dir = std::env::temp_dir().join(format!("tokenscope-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("hd.mkv");
    stripes(&input, 3, 1080, 1920);
    let model = model_dir("CI8x8-tiny");
    let model = model.to_str().unwrap();
    let (whole, said) = eval_row(&input, model, &[], &dir.join("whole.json"));
    assert!(whole["tiling"].is_null(), "{whole}");
    assert!(!said.contains("note:"), "{said}");
    let estimate = whole["estimated_peak_bytes"].as_f64().unwrap();
    let budget = (0.7 * estimate) as u64;
    let (tiled, said) = eval_row(
        &input,
        model,
        &["--memory-budget", &budget.to_string()],
        &dir.join("tiled.json"),
    );
    assert!(tiled["tiling"].as_u64().is_some(), "{tiled}");
    // The one-line note says so even when stderr is not a terminal (a log, CI).
    assert!(
        said.lines()
            .any(|l| l.starts_with("note: ") && l.contains("tiles")),
        "{said}"
    );
    let peak = tiled["peak_rss_bytes"].as_f64().unwrap();
    assert!(
        peak <= 1.2 * budget as f64,
        "peak {peak} over the budget {budget} (+20%)"
    );
    assert!(tiled["estimated_peak_bytes"].as_f64().unwrap() <= budget as f64);
    assert_eq!(tiled["frames"], 3);
    // Tiles stand for the untiled latent grid: the same shape and token count.
    assert_eq!(tiled["latent_shape"], whole["latent_shape"], "{tiled}");
    assert_eq!(tiled["tokens_per_frame"], whole["tokens_per_frame"]);
    let (a, b) = (
        whole["psnr_clip"].as_f64().unwrap(),
        tiled["psnr_clip"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1.0, "untiled {a:.2} dB, tiled {b:.2} dB");
}

/// Writes a lossless clip of moving stripes.
fn stripes(path: &std::path::Path, frames: usize, height: usize, width: usize) {
    let mut data = Vec::with_capacity(frames * height * width * 3);
    for t in 0..frames {
        for y in 0..height {
            for x in 0..width {
                let v = |k: usize| {
                    (((x * (3 + k) + y * (2 + k) + t * 5) as f64 / 30.0).sin() * 90.0 + 128.0) as u8
                };
                data.extend_from_slice(&[v(0), v(1), v(2)]);
            }
        }
    }
    let clip = tokenscope::media::RgbFrames::new(frames, height, width, data).unwrap();
    tokenscope::media::write(&clip, 24.0, path, &[]).unwrap();
}

/// `eval` reads a video window by window: nine times the frames, the same peak memory (within
/// 15%; holding the clip and its reconstruction would add over a quarter).
#[test]
fn eval_peak_memory_does_not_grow_with_the_clip() {
    let dir = std::env::temp_dir().join(format!("tokenscope-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = model_dir("CV8x8x8-tiny");
    let model = model.to_str().unwrap();
    let mut peaks = Vec::new();
    for frames in [34, 153] {
        let input = dir.join(format!("clip{frames}.mkv"));
        stripes(&input, frames, 352, 640);
        let (row, _) = eval_row(&input, model, &[], &dir.join(format!("row{frames}.json")));
        assert_eq!(row["frames"], frames);
        assert_eq!(row["windows"], frames / 17);
        peaks.push(row["peak_rss_bytes"].as_f64().unwrap());
    }
    assert!(
        peaks[1] <= 1.15 * peaks[0],
        "peak {:.0} MiB for 153 frames, {:.0} MiB for 34",
        peaks[1] / 1048576.0,
        peaks[0] / 1048576.0
    );
}

/// Runs the CLI and returns its output with the peak resident memory of that process alone (in
/// bytes), read from `wait4`: other tests run their own children at the same time.
fn run_measured(args: &[&str]) -> (std::process::Output, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_tokenscope"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Read the pipes before reaping, so a chatty child never blocks on a full pipe.
    let mut child = child;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child; both out-pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4 failed");
    let output = std::process::Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        stdout,
        stderr,
    };
    // ru_maxrss is in KiB on Linux.
    (output, usage.ru_maxrss as u64 * 1024)
}

/// `reconstruct` to a video writes each window as it is done, and to a tensor file spools each
/// window's reconstruction beside the output: from two windows to nine, every frame written, the
/// same peak memory (within 15%; holding the clip and its reconstruction would add over a
/// quarter). Two windows, not one, are the base: the second window's run overlaps the first's
/// released buffers once, whatever the clip's length.
#[test]
fn reconstruct_streams_in_bounded_memory() {
    let dir = std::env::temp_dir().join(format!("tokenscope-recon-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = model_dir("CV8x8x8-tiny");
    for frames in [34, 153] {
        stripes(&dir.join(format!("clip{frames}.mkv")), frames, 352, 640);
    }
    for extension in ["mkv", "safetensors"] {
        let mut peaks = Vec::new();
        for frames in [34, 153] {
            let input = dir.join(format!("clip{frames}.mkv"));
            let output = dir.join(format!("recon{frames}.{extension}"));
            let (out, peak) = run_measured(&[
                "reconstruct",
                "-m",
                model.to_str().unwrap(),
                input.to_str().unwrap(),
                "-o",
                output.to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if extension == "mkv" {
                let back = tokenscope::media::open(&output, &Default::default()).unwrap();
                assert_eq!(back.frames.frames, frames);
                assert_eq!((back.frames.width, back.frames.height), (640, 352));
            } else {
                let tensors =
                    candle_core::safetensors::load(&output, &candle_core::Device::Cpu).unwrap();
                let recon = &tensors["reconstruction_rgb"];
                assert_eq!(recon.dims(), &[frames, 352, 640, 3]);
                assert_eq!(recon.dtype(), candle_core::DType::U8);
                // The tokens of every window: 1 + 16/8 latent frames per 17 source frames.
                let latent = &tensors["latent"];
                assert_eq!(
                    latent.dim(2).unwrap(),
                    frames / 17 * 3,
                    "{:?}",
                    latent.dims()
                );
                // The spooled frames are the reconstruction, in order: the same pixels as the
                // lossless video of the same run.
                let video = dir.join(format!("recon{frames}.mkv"));
                let video = tokenscope::media::open(&video, &Default::default()).unwrap();
                let recon = recon.flatten_all().unwrap().to_vec1::<u8>().unwrap();
                assert!(
                    recon == video.frames.data,
                    "reconstruction_rgb differs from the .mkv"
                );
            }
            peaks.push(peak as f64);
        }
        assert!(
            peaks[1] <= 1.15 * peaks[0],
            ".{extension}: peak {:.0} MiB for 153 frames, {:.0} MiB for 34",
            peaks[1] / 1048576.0,
            peaks[0] / 1048576.0
        );
    }
    // No spool or temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
