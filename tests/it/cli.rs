//! The command line end to end: the tensor protocol, `info`, and one-line errors with a non-zero
//! exit code.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use crate::common::{assert_close, assert_exact_i64, load_io, model_dir};

fn tokenscope(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenscope"))
        .args(args)
        .output()
        .expect("running tokenscope");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenscope-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn encode_then_decode_matches_the_golden_outputs() {
    for name in ["DV8x16x16-tiny", "CI16x16-tiny"] {
        let dir = model_dir(name);
        let io_path = dir.join("io.safetensors");
        let out = scratch(name);
        let tokens = out.join("tokens.safetensors");
        let recon = out.join("recon.safetensors");
        let (ok, stdout, stderr) =
            tokenscope(&["encode", "-m", s(&dir), s(&io_path), "-o", s(&tokens)]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("wrote"), "{stdout}");
        let (ok, _, stderr) = tokenscope(&["decode", "-m", s(&dir), s(&tokens), "-o", s(&recon)]);
        assert!(ok, "{stderr}");
        let golden = load_io(&io_path);
        let written = load_io(&tokens);
        if name.starts_with('D') {
            assert_eq!(written["indices"].dtype(), candle_core::DType::I64);
            assert_exact_i64(name, &written["indices"], &golden["indices"]);
        } else {
            assert_close(name, &written["latent"], &golden["latent"]);
        }
        assert_close(
            name,
            &load_io(&recon)["reconstruction"],
            &golden["reconstruction"],
        );
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}

#[test]
fn reconstruct_writes_tokens_and_reconstruction() {
    let dir = model_dir("CV4x8x8-tiny");
    let out = scratch("reconstruct").join("both.safetensors");
    let (ok, _, stderr) = tokenscope(&[
        "reconstruct",
        "-m",
        s(&dir.join("autoencoder.jit")),
        s(&dir.join("io.safetensors")),
        "-o",
        s(&out),
    ]);
    assert!(ok, "{stderr}");
    let written = load_io(&out);
    let golden = load_io(&dir.join("io.safetensors"));
    assert_close("latent", &written["latent"], &golden["latent"]);
    assert_close(
        "reconstruction",
        &written["reconstruction"],
        &golden["reconstruction"],
    );
}

#[test]
fn info_describes_the_checkpoint() {
    let (ok, stdout, stderr) = tokenscope(&["info", "-m", s(&model_dir("CV8x8x8-tiny"))]);
    assert!(ok, "{stderr}");
    for expected in [
        "CV8x8x8-custom",
        "continuous video",
        "8x8x8",
        "parameters:     465,264",
        "unused keys:    17",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}

#[test]
fn failures_exit_non_zero_with_one_line() {
    let dir = model_dir("CV8x8x8-tiny");
    let out = scratch("fail").join("x.safetensors");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["info".into(), "-m".into(), "/nonexistent/model".into()],
            "no such file",
        ),
        (
            vec![
                "encode".into(),
                "-m".into(),
                s(&dir).into(),
                s(&dir.join("model.safetensors")).into(),
                "-o".into(),
                s(&out).into(),
            ],
            "no tensor named `input`",
        ),
        (
            vec![
                "encode".into(),
                "-m".into(),
                s(&model_dir("CI8x8-tiny")).into(),
                s(&dir.join("io.safetensors")).into(),
                "-o".into(),
                s(&out).into(),
            ],
            "image tokenizers take (B, 3, H, W)",
        ),
        (
            vec![
                "encode".into(),
                "-m".into(),
                s(&dir).into(),
                s(&dir.join("io.safetensors")).into(),
                "-o".into(),
                s(&dir.join("io.safetensors")).into(),
            ],
            "refusing to overwrite the input",
        ),
        (
            vec![
                "bench".into(),
                "--variant".into(),
                "XX9".into(),
                "--input-shape".into(),
                "1x3x64x64".into(),
            ],
            "unknown variant",
        ),
        (
            // 8K video with the full-size network: refused before the input is allocated.
            vec![
                "bench".into(),
                "--variant".into(),
                "CV8x8x8".into(),
                "--input-shape".into(),
                "1x3x17x4320x7680".into(),
                "--memory-budget".into(),
                "8GiB".into(),
            ],
            "needs about",
        ),
        (
            vec![
                "bench".into(),
                "--variant".into(),
                "CI8x8".into(),
                "--input-shape".into(),
                "1x3x64x64".into(),
                "--memory-budget".into(),
                "plenty".into(),
            ],
            "not a memory size",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, stderr) = tokenscope(&args);
        assert!(!ok, "{args:?} succeeded");
        let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(error_lines.len(), 1, "{args:?}: {stderr}");
        assert!(error_lines[0].contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The memory planner's estimate stays within ±25% of the peak `bench` measures, over video and
/// image networks, short and long windows, small and larger frames.
#[test]
fn planner_estimates_match_measured_peaks() {
    let mut report = Vec::new();
    for (variant, shape) in [
        ("CV8x8x8", "1x3x17x128x128"),
        ("CV8x8x8", "1x3x17x256x256"),
        ("CV8x8x8", "1x3x1x256x256"),
        ("CV4x8x8", "1x3x17x256x256"),
        ("CI8x8", "1x3x512x512"),
    ] {
        let (ok, stdout, stderr) = tokenscope(&[
            "bench",
            "--variant",
            variant,
            "--input-shape",
            shape,
            "--runs",
            "0",
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let row: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let measured = row["peak_rss_bytes"].as_f64().unwrap();
        let estimated = row["estimated_peak_bytes"].as_f64().unwrap();
        let ratio = estimated / measured;
        report.push(format!("{variant} {shape}: estimate/measured {ratio:.2}"));
        assert!((0.75..=1.25).contains(&ratio), "{report:?}");
    }
    eprintln!("{}", report.join("\n"));
}
