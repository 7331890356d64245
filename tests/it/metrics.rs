//! PSNR/SSIM against committed scikit-image reference values and against FFmpeg's `psnr` filter.
//!
//! The compared frame pairs are rebuilt here from the shipped assets with the deterministic
//! distortions of `tests/fixtures/metrics/README.md` (mirrored exactly below). Video frames are
//! decoded by the `ffmpeg` CLI to yuv420p (bit-exact) and converted to RGB here; tests that need
//! the CLI are skipped, loudly, where it is missing.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Deserialize;
use tokenscope::frames::RgbFrames;
use tokenscope::metrics::{self, psnr, ssim, ClipMetrics, ClipSummary, FrameMetrics, MetricsError};

const PSNR_TOL_DB: f64 = 1e-6;
const SSIM_TOL: f64 = 1e-4;

// ---------------------------------------------------------------------------------------------
// Fixture

#[derive(Deserialize)]
struct Fixture {
    sources: HashMap<String, Source>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Source {
    asset: String,
    width: usize,
    height: usize,
    frames: Option<usize>,
    rgb_fnv1a64: String,
    yuv420p_fnv1a64: Option<String>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    source: String,
    ref_frames: Vec<usize>,
    dist_frames: Vec<usize>,
    transforms: Vec<String>,
    width: usize,
    height: usize,
    mse_frames: Vec<f64>,
    psnr_frames: Vec<f64>,
    ssim_frames: Vec<f64>,
    mse_clip: f64,
    psnr_clip: f64,
    psnr_mean: f64,
    psnr_min: f64,
    ssim_mean: f64,
    tokenbench_f32: TokenBenchF32,
    tokenbench_uint8_wraparound: TokenBenchWrap,
}

#[derive(Deserialize)]
struct TokenBenchF32 {
    psnr_clip: f64,
    ssim_frames: Vec<f64>,
}

#[derive(Deserialize)]
struct TokenBenchWrap {
    psnr_clip: f64,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> Fixture {
    let path = root().join("tests/fixtures/metrics/skimage_reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The shipped asset, or the original it was copied from (`../shared/media/demo`).
fn asset_path(asset: &str) -> PathBuf {
    let shipped = root().join(asset);
    if shipped.is_file() {
        return shipped;
    }
    let original = match asset {
        "assets/astronaut.png" => "demo_astronaut_512.png",
        "assets/coffee.png" => "demo_coffee_592x400.png",
        "assets/demo.mp4" => "demo.mp4",
        other => panic!("no known original for {other}"),
    };
    let fallback = root().join("../shared/media/demo").join(original);
    assert!(
        fallback.is_file(),
        "asset {} is missing (and so is its original {})",
        shipped.display(),
        fallback.display()
    );
    eprintln!("note: {asset} not found, using {}", fallback.display());
    fallback
}

fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    format!("{h:016x}")
}

fn ffmpeg_available(test: &str) -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "\n************************************************************\n\
             SKIPPED {test}: the `ffmpeg` command-line tool is not on PATH.\n\
             Install it (bash .ci/setup --deps-only does) to run this test.\n\
             ************************************************************\n"
        );
    }
    ok
}

/// One RGB frame of `w x h`.
#[derive(Clone)]
struct Frame {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

/// The decoded frames of a fixture source, checked against the fixture's pixel hashes.
fn load_source(name: &str, src: &Source) -> Vec<Frame> {
    let path = asset_path(&src.asset);
    if src.asset.ends_with(".png") {
        let img = image::open(&path)
            .unwrap_or_else(|e| panic!("decoding {}: {e}", path.display()))
            .to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        assert_eq!((w, h), (src.width, src.height), "{name}: size");
        let rgb = img.into_raw();
        assert_eq!(
            fnv1a64(&rgb),
            src.rgb_fnv1a64,
            "{} decodes to other pixels than the fixture was made from; \
             regenerate it with the script in tests/fixtures/metrics/README.md",
            path.display()
        );
        vec![Frame { w, h, rgb }]
    } else {
        let frames = src.frames.expect("video source without a frame count");
        let (w, h) = (src.width, src.height);
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&path)
            .args(["-frames:v", &frames.to_string()])
            .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
            .output()
            .expect("running ffmpeg");
        assert!(
            out.status.success(),
            "ffmpeg failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let raw = out.stdout;
        assert_eq!(raw.len(), frames * w * h * 3 / 2, "{name}: decoded size");
        assert_eq!(
            Some(fnv1a64(&raw)),
            src.yuv420p_fnv1a64,
            "{} decodes to other YUV than the fixture was made from",
            path.display()
        );
        let out: Vec<Frame> = raw
            .chunks_exact(w * h * 3 / 2)
            .map(|f| Frame {
                w,
                h,
                rgb: yuv420p_to_rgb(f, w, h),
            })
            .collect();
        let all: Vec<u8> = out.iter().flat_map(|f| f.rgb.iter().copied()).collect();
        assert_eq!(fnv1a64(&all), src.rgb_fnv1a64, "{name}: RGB conversion");
        out
    }
}

/// Integer BT.601 limited-range YUV -> RGB, nearest-neighbour chroma (as in the README script).
fn yuv420p_to_rgb(f: &[u8], w: usize, h: usize) -> Vec<u8> {
    assert!(w.is_multiple_of(2) && h.is_multiple_of(2));
    let (yp, chroma) = f.split_at(w * h);
    let (up, vp) = chroma.split_at(w * h / 4);
    let mut rgb = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        for col in 0..w {
            let c = i32::from(yp[row * w + col]) - 16;
            let ci = (row / 2) * (w / 2) + col / 2;
            let d = i32::from(up[ci]) - 128;
            let e = i32::from(vp[ci]) - 128;
            let r = (298 * c + 409 * e + 128) >> 8;
            let g = (298 * c - 100 * d - 208 * e + 128) >> 8;
            let b = (298 * c + 516 * d + 128) >> 8;
            rgb.extend([r, g, b].map(|v| v.clamp(0, 255) as u8));
        }
    }
    rgb
}

// ---------------------------------------------------------------------------------------------
// Deterministic distortions (same as the README script)

fn quant5(f: &Frame) -> Vec<u8> {
    f.rgb.iter().map(|v| v & 0xF8).collect()
}

fn blur3(f: &Frame) -> Vec<u8> {
    let (w, h) = (f.w as isize, f.h as isize);
    let px = |x: isize, y: isize, c: usize| {
        let (x, y) = (x.clamp(0, w - 1) as usize, y.clamp(0, h - 1) as usize);
        u32::from(f.rgb[(y * f.w + x) * 3 + c])
    };
    let mut out = Vec::with_capacity(f.rgb.len());
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut s = 0;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        s += px(x + dx, y + dy, c);
                    }
                }
                out.push(((s + 4) / 9) as u8);
            }
        }
    }
    out
}

fn shift1(f: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.rgb.len());
    for y in 0..f.h {
        for x in 0..f.w {
            let i = (y * f.w + x.saturating_sub(1)) * 3;
            out.extend_from_slice(&f.rgb[i..i + 3]);
        }
    }
    out
}

fn noise(f: &Frame, t: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.rgb.len());
    for y in 0..f.h as u32 {
        for x in 0..f.w as u32 {
            for c in 0..3u32 {
                let mut k = x.wrapping_mul(0x9E37_79B1)
                    ^ y.wrapping_mul(0x85EB_CA77)
                    ^ c.wrapping_mul(0xC2B2_AE3D)
                    ^ t.wrapping_mul(0x27D4_EB2F);
                k ^= k >> 15;
                k = k.wrapping_mul(0x2C1B_3C6D);
                k ^= k >> 12;
                k = k.wrapping_mul(0x297A_2D39);
                k ^= k >> 15;
                let n = (k % 17) as i32 - 8;
                let v = f.rgb[((y * f.w as u32 + x) * 3 + c) as usize];
                out.push((i32::from(v) + n).clamp(0, 255) as u8);
            }
        }
    }
    out
}

fn distort(name: &str, f: &Frame, t: usize) -> Vec<u8> {
    match name {
        "quant5" => quant5(f),
        "blur3" => blur3(f),
        "shift1" => shift1(f),
        "noise" => noise(f, t as u32),
        "none" => f.rgb.clone(),
        other => panic!("unknown transform {other}"),
    }
}

/// A case's frame pairs: (reference, distorted), each one RGB frame.
struct Pairs {
    w: usize,
    h: usize,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Pairs {
    fn reference_clip(&self) -> Vec<u8> {
        self.pairs
            .iter()
            .flat_map(|p| p.0.iter().copied())
            .collect()
    }
    fn distorted_clip(&self) -> Vec<u8> {
        self.pairs
            .iter()
            .flat_map(|p| p.1.iter().copied())
            .collect()
    }
}

fn build(case: &Case, frames: &[Frame]) -> Pairs {
    let pairs = case
        .ref_frames
        .iter()
        .zip(&case.dist_frames)
        .zip(&case.transforms)
        .enumerate()
        .map(|(t, ((&r, &d), tr))| (frames[r].rgb.clone(), distort(tr, &frames[d], t)))
        .collect();
    Pairs {
        w: case.width,
        h: case.height,
        pairs,
    }
}

/// Loads every case whose source can be decoded here (video sources need the ffmpeg CLI).
fn load_cases(fx: &Fixture, video: bool) -> Vec<(&Case, Pairs)> {
    let mut decoded: HashMap<&str, Vec<Frame>> = HashMap::new();
    let mut out = vec![];
    for case in &fx.cases {
        let src = &fx.sources[&case.source];
        let is_video = src.frames.is_some();
        if is_video != video {
            continue;
        }
        let frames = decoded
            .entry(case.source.as_str())
            .or_insert_with(|| load_source(&case.source, src));
        out.push((case, build(case, frames)));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// scikit-image fixtures

fn check_frames_against_fixture(case: &Case, pairs: &Pairs) -> (f64, f64) {
    assert_eq!(pairs.pairs.len(), case.psnr_frames.len(), "{}", case.name);
    let (mut worst_psnr, mut worst_ssim) = (0.0f64, 0.0f64);
    for (i, (a, b)) in pairs.pairs.iter().enumerate() {
        let m = metrics::frame_metrics(a, b, pairs.w, pairs.h).unwrap();
        let what = format!("{} frame {i}", case.name);
        assert!(
            (m.mse - case.mse_frames[i]).abs() <= 1e-9 * case.mse_frames[i],
            "{what}: mse {} vs {}",
            m.mse,
            case.mse_frames[i]
        );
        let dp = (m.psnr - case.psnr_frames[i]).abs();
        let ds = (m.ssim - case.ssim_frames[i]).abs();
        assert!(
            dp <= PSNR_TOL_DB,
            "{what}: psnr {} vs skimage {}",
            m.psnr,
            case.psnr_frames[i]
        );
        assert!(
            ds <= SSIM_TOL,
            "{what}: ssim {} vs skimage {}",
            m.ssim,
            case.ssim_frames[i]
        );
        // TokenBench itself runs skimage on float32 frames: that is within tolerance too.
        let tb = case.tokenbench_f32.ssim_frames[i];
        assert!(
            (m.ssim - tb).abs() <= SSIM_TOL,
            "{what}: ssim {} vs TokenBench {tb}",
            m.ssim
        );
        worst_psnr = worst_psnr.max(dp);
        worst_ssim = worst_ssim.max(ds);
    }
    (worst_psnr, worst_ssim)
}

#[test]
fn images_match_scikit_image() {
    let fx = fixture();
    let cases = load_cases(&fx, false);
    assert_eq!(cases.len(), 8);
    for (case, pairs) in &cases {
        let (dp, ds) = check_frames_against_fixture(case, pairs);
        eprintln!(
            "{:18} psnr {:.4} dB (|Δ| {dp:.1e})  ssim {:.6} (|Δ| {ds:.1e})",
            case.name, case.psnr_frames[0], case.ssim_frames[0]
        );
        // A one-frame clip: TokenBench's clip PSNR is the frame's (up to its epsilon).
        let clip = psnr::clip_psnr(&pairs.reference_clip(), &pairs.distorted_clip()).unwrap();
        assert!(
            (clip - case.psnr_clip).abs() <= PSNR_TOL_DB,
            "{}",
            case.name
        );
        assert!((clip - case.psnr_frames[0]).abs() < 1e-5, "{}", case.name);
        // The distortions give PSNR in the useful range.
        assert!((20.0..45.0).contains(&case.psnr_clip), "{}", case.name);
    }
}

#[test]
fn video_frames_match_scikit_image() {
    if !ffmpeg_available("video_frames_match_scikit_image") {
        return;
    }
    let fx = fixture();
    let cases = load_cases(&fx, true);
    assert_eq!(cases.len(), 3);
    for (case, pairs) in &cases {
        let (dp, ds) = check_frames_against_fixture(case, pairs);
        let mut clip = ClipMetrics::new(pairs.w, pairs.h);
        for (a, b) in &pairs.pairs {
            clip.push(a, b).unwrap();
        }
        let s = clip.finish().unwrap();
        eprintln!(
            "{:18} clip psnr {:.4} dB, mean {:.4} dB, ssim {:.6} (max |Δ| psnr {dp:.1e}, ssim {ds:.1e})",
            case.name, s.psnr_clip, s.psnr_mean, s.ssim_mean
        );
        assert_eq!(s.frames, case.psnr_frames.len());
        assert!((s.mse_clip - case.mse_clip).abs() <= 1e-9 * case.mse_clip);
        assert!(
            (s.psnr_clip - case.psnr_clip).abs() <= PSNR_TOL_DB,
            "{}",
            case.name
        );
        assert!(
            (s.psnr_mean - case.psnr_mean).abs() <= PSNR_TOL_DB,
            "{}",
            case.name
        );
        assert!(
            (s.psnr_min - case.psnr_min).abs() <= PSNR_TOL_DB,
            "{}",
            case.name
        );
        assert!(
            (s.ssim_mean - case.ssim_mean).abs() <= SSIM_TOL,
            "{}",
            case.name
        );
        // TokenBench's own float32 evaluation of the same formula.
        assert!(
            (s.psnr_clip - case.tokenbench_f32.psnr_clip).abs() < 1e-4,
            "{}",
            case.name
        );
        // The RgbFrames convenience gives the same summary.
        let (n, w, h) = (pairs.pairs.len(), pairs.w, pairs.h);
        let a = RgbFrames::new(n, h, w, pairs.reference_clip()).unwrap();
        let b = RgbFrames::new(n, h, w, pairs.distorted_clip()).unwrap();
        assert_eq!(metrics::clip_metrics(&a, &b).unwrap(), s);
    }
}

// ---------------------------------------------------------------------------------------------
// Conventions

fn case<'a>(fx: &'a Fixture, name: &str) -> &'a Case {
    fx.cases.iter().find(|c| c.name == name).unwrap()
}

#[test]
fn clip_psnr_is_tokenbench_convention_not_mean_of_frames() {
    // Two frames of very different quality: astronaut quantised (≈36 dB) and shifted (≈24 dB).
    let fx = fixture();
    let src = &fx.sources["astronaut"];
    let frame = load_source("astronaut", src).remove(0);
    let mut clip = ClipMetrics::new(frame.w, frame.h);
    let names = ["astronaut_quant5", "astronaut_shift1"];
    for (name, dist) in names.iter().zip([quant5(&frame), shift1(&frame)]) {
        let m = clip.push(&frame.rgb, &dist).unwrap();
        assert!((m.psnr - case(&fx, name).psnr_frames[0]).abs() <= PSNR_TOL_DB);
    }
    let s: ClipSummary = clip.finish().unwrap();

    // TokenBench: one MSE over all frames, 20·log10(255 / (sqrt(mse) + float32 eps)).
    let pooled = names
        .iter()
        .map(|n| case(&fx, n).mse_frames[0])
        .sum::<f64>()
        / 2.0;
    let eps = f64::from(f32::EPSILON);
    let want = 20.0 * (255.0 / (pooled.sqrt() + eps)).log10();
    assert!(
        (s.psnr_clip - want).abs() < 1e-9,
        "{} vs {want}",
        s.psnr_clip
    );
    assert!((s.mse_clip - pooled).abs() < 1e-9);

    // The mean of per-frame values is a different, higher number.
    let mean = names
        .iter()
        .map(|n| case(&fx, n).psnr_frames[0])
        .sum::<f64>()
        / 2.0;
    assert!((s.psnr_mean - mean).abs() <= PSNR_TOL_DB);
    assert!(
        s.psnr_mean - s.psnr_clip > 3.0,
        "{} vs {}",
        s.psnr_mean,
        s.psnr_clip
    );
    assert_eq!(s.psnr_min, s.psnr_frames[1]);

    // Same on the committed video case (no decoding needed for the numbers themselves).
    let v = case(&fx, "demo_mixed");
    let pooled = v.mse_frames.iter().sum::<f64>() / v.mse_frames.len() as f64;
    assert!((psnr::tokenbench_psnr_from_mse(pooled) - v.psnr_clip).abs() < 1e-9);
    assert!(v.psnr_mean - v.psnr_clip > 0.1);
}

#[test]
fn identical_frames() {
    let fx = fixture();
    let frame = load_source("coffee", &fx.sources["coffee"]).remove(0);
    let m = metrics::frame_metrics(&frame.rgb, &frame.rgb, frame.w, frame.h).unwrap();
    assert_eq!(
        m,
        FrameMetrics {
            psnr: f64::INFINITY,
            ssim: 1.0,
            mse: 0.0
        }
    );
    let mut clip = ClipMetrics::new(frame.w, frame.h);
    clip.push(&frame.rgb, &frame.rgb).unwrap();
    clip.push(&frame.rgb, &quant5(&frame)).unwrap();
    let s = clip.finish().unwrap();
    assert_eq!(s.psnr_frames[0], f64::INFINITY);
    assert_eq!(s.psnr_mean, f64::INFINITY);
    assert!(s.psnr_min.is_finite() && s.psnr_clip.is_finite());

    // TokenBench's epsilon keeps an identical clip finite: 20·log10(255 / eps) ≈ 186.60 dB.
    let c = psnr::clip_psnr(&frame.rgb, &frame.rgb).unwrap();
    assert!((c - 186.604_602).abs() < 1e-5, "{c}");

    // JSON: +∞ is written as null and read back as +∞; the display helper caps it.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["psnr_mean"], serde_json::Value::Null);
    assert_eq!(json["psnr_frames"][0], serde_json::Value::Null);
    assert!(json["psnr_frames"][1].is_f64());
    let back: ClipSummary = serde_json::from_value(json).unwrap();
    assert_eq!(back, s);
    assert_eq!(psnr::psnr_json(m.psnr), None);
    assert_eq!(psnr::psnr_capped(m.psnr), psnr::PSNR_CAP_DB);
}

#[test]
fn mismatched_sizes_are_errors_not_panics() {
    let fx = fixture();
    let a = load_source("astronaut", &fx.sources["astronaut"]).remove(0);
    let c = load_source("coffee", &fx.sources["coffee"]).remove(0);
    assert_eq!(
        metrics::frame_metrics(&a.rgb, &c.rgb, a.w, a.h),
        Err(MetricsError::SizeMismatch {
            left: a.rgb.len(),
            right: c.rgb.len()
        })
    );
    assert!(matches!(
        metrics::frame_metrics(&c.rgb, &c.rgb, a.w, a.h),
        Err(MetricsError::Dimensions { .. })
    ));
    assert!(matches!(
        psnr::psnr(&a.rgb, &c.rgb),
        Err(MetricsError::SizeMismatch { .. })
    ));
    assert!(matches!(
        ssim::ssim(&a.rgb, &c.rgb, a.w, a.h),
        Err(MetricsError::SizeMismatch { .. })
    ));
    assert!(matches!(
        metrics::pool_error(&a.rgb, &c.rgb, a.w, a.h, 16),
        Err(MetricsError::SizeMismatch { .. })
    ));
    assert!(matches!(
        metrics::abs_diff_map(&a.rgb, &c.rgb, a.w, a.h),
        Err(MetricsError::SizeMismatch { .. })
    ));
    // Overflowing dimensions are a size error too.
    assert!(matches!(
        metrics::frame_metrics(&a.rgb, &a.rgb, usize::MAX, 2),
        Err(MetricsError::Dimensions { .. })
    ));
    assert_eq!(
        metrics::frame_metrics(&[], &[], 0, 0),
        Err(MetricsError::Empty)
    );
    assert_eq!(psnr::clip_psnr(&[], &[]), Err(MetricsError::Empty));
    let tiny = vec![0u8; 6 * 6 * 3];
    assert_eq!(
        metrics::frame_metrics(&tiny, &tiny, 6, 6),
        Err(MetricsError::TooSmall {
            width: 6,
            height: 6
        })
    );
    assert_eq!(
        metrics::pool_error(&a.rgb, &a.rgb, a.w, a.h, 0),
        Err(MetricsError::ZeroCell)
    );

    let mut clip = ClipMetrics::new(a.w, a.h);
    assert!(clip.push(&c.rgb, &c.rgb).is_err());
    assert!(clip.push(&a.rgb, &c.rgb).is_err());
    assert!(clip.is_empty());
    assert_eq!(clip.finish(), Err(MetricsError::NoFrames));

    let ra = RgbFrames::new(1, a.h, a.w, a.rgb.clone()).unwrap();
    let rc = RgbFrames::new(1, c.h, c.w, c.rgb.clone()).unwrap();
    assert!(matches!(
        metrics::clip_metrics(&ra, &rc),
        Err(MetricsError::ClipMismatch { .. })
    ));
}

#[test]
fn no_uint8_wraparound() {
    // 0 − 255 wraps to 1 in u8 (and 255 − 0 squared wraps to 1): both must count as 255².
    let (w, h) = (8, 8);
    let black = vec![0u8; w * h * 3];
    let white = vec![255u8; w * h * 3];
    for (a, b) in [(&black, &white), (&white, &black)] {
        let m = metrics::frame_metrics(a, b, w, h).unwrap();
        assert_eq!(m.mse, 65025.0);
        assert_eq!(m.psnr, 0.0);
    }
    let wrapped: u64 = black
        .iter()
        .zip(&white)
        .map(|(&x, &y)| {
            let d = x.wrapping_sub(y);
            u64::from(d.wrapping_mul(d))
        })
        .sum();
    assert_eq!(wrapped, (w * h * 3) as u64); // what uint8 arithmetic would have summed

    // On a real image: blurring makes differences of 16 and more, where TokenBench's first
    // metrics code (uint8 subtraction, commit 1fa61b5) was wrong. We match scikit-image instead.
    let fx = fixture();
    let c = case(&fx, "astronaut_blur3");
    let frame = load_source("astronaut", &fx.sources["astronaut"]).remove(0);
    let dist = blur3(&frame);
    let ours = psnr::clip_psnr(&frame.rgb, &dist).unwrap();
    assert!((ours - c.psnr_clip).abs() <= PSNR_TOL_DB);
    let wrap_mse = frame
        .rgb
        .iter()
        .zip(&dist)
        .map(|(&x, &y)| {
            let d = x.wrapping_sub(y);
            f64::from(d.wrapping_mul(d))
        })
        .sum::<f64>()
        / dist.len() as f64;
    let wrap_psnr = psnr::tokenbench_psnr_from_mse(wrap_mse);
    assert!((wrap_psnr - c.tokenbench_uint8_wraparound.psnr_clip).abs() < 1e-4);
    assert!(
        wrap_psnr - ours > 5.0,
        "wrap-around {wrap_psnr} vs exact {ours}"
    );
}

// ---------------------------------------------------------------------------------------------
// FFmpeg's psnr filter

struct FfmpegPsnr {
    r: f64,
    g: f64,
    b: f64,
    average: f64,
    min: f64,
    max: f64,
}

/// Runs `ffmpeg ... -lavfi psnr` on two raw rgb24 clips and parses its summary line
/// (`PSNR r:.. g:.. b:.. average:.. min:.. max:..`, printed with 6 decimals).
fn ffmpeg_psnr(name: &str, a: &[u8], b: &[u8], w: usize, h: usize) -> FfmpegPsnr {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics");
    std::fs::create_dir_all(&dir).unwrap();
    let pid = std::process::id();
    let (pa, pb) = (
        dir.join(format!("{name}_{pid}_a.rgb")),
        dir.join(format!("{name}_{pid}_b.rgb")),
    );
    std::fs::write(&pa, a).unwrap();
    std::fs::write(&pb, b).unwrap();
    let size = format!("{w}x{h}");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin"]);
    for p in [&pa, &pb] {
        cmd.args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &size, "-i"])
            .arg(p);
    }
    let out = cmd
        .args(["-lavfi", "psnr", "-f", "null", "-"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffmpeg psnr failed: {log}");
    let line = log
        .lines()
        .find(|l| l.contains("Parsed_psnr") && l.contains("average:"))
        .unwrap_or_else(|| panic!("no psnr summary in ffmpeg's output:\n{log}"));
    let field = |key: &str| -> f64 {
        let v = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix(key))
            .unwrap_or_else(|| panic!("no `{key}` in {line}"));
        if v == "inf" {
            f64::INFINITY
        } else {
            v.parse().unwrap_or_else(|e| panic!("`{key}{v}`: {e}"))
        }
    };
    let _ = std::fs::remove_file(&pa);
    let _ = std::fs::remove_file(&pb);
    FfmpegPsnr {
        r: field("r:"),
        g: field("g:"),
        b: field("b:"),
        average: field("average:"),
        min: field("min:"),
        max: field("max:"),
    }
}

/// PSNR of one channel over a whole clip.
fn channel_psnr(a: &[u8], b: &[u8], c: usize) -> f64 {
    let (mut sse, mut n) = (0u64, 0u64);
    for (pa, pb) in a.chunks_exact(3).zip(b.chunks_exact(3)) {
        let d = u64::from(pa[c].abs_diff(pb[c]));
        sse += d * d;
        n += 1;
    }
    psnr::psnr_from_mse(sse as f64 / n as f64)
}

#[test]
fn ffmpeg_psnr_filter_agrees() {
    if !ffmpeg_available("ffmpeg_psnr_filter_agrees") {
        return;
    }
    // ffmpeg prints 6 decimals: agreement within half a unit of the last digit.
    let close = |ours: f64, theirs: f64| (ours - theirs).abs() <= 5e-7 + 1e-12;
    let fx = fixture();
    let mut all = load_cases(&fx, false);
    all.extend(load_cases(&fx, true));
    assert!(all.len() >= 9);
    for (case, pairs) in &all {
        let (a, b) = (pairs.reference_clip(), pairs.distorted_clip());
        let f = ffmpeg_psnr(&case.name, &a, &b, pairs.w, pairs.h);
        let mut clip = ClipMetrics::new(pairs.w, pairs.h);
        for (x, y) in &pairs.pairs {
            clip.push(x, y).unwrap();
        }
        let s = clip.finish().unwrap();
        // Over frames, ffmpeg averages the MSE (not the dB): the pooled MSE, without TokenBench's
        // epsilon.
        let pooled = psnr::psnr_from_mse(s.mse_clip);
        eprintln!(
            "{:18} ffmpeg average {:.6} min {:.6} max {:.6} | ours {pooled:.9} {:.9} {:.9}",
            case.name,
            f.average,
            f.min,
            f.max,
            s.psnr_min,
            s.psnr_frames
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max)
        );
        assert!(
            close(pooled, f.average),
            "{}: {pooled} vs {}",
            case.name,
            f.average
        );
        assert!(
            close(s.psnr_min, f.min),
            "{}: min {} vs {}",
            case.name,
            s.psnr_min,
            f.min
        );
        let max = s
            .psnr_frames
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(close(max, f.max), "{}: max {max} vs {}", case.name, f.max);
        for (c, theirs) in [f.r, f.g, f.b].into_iter().enumerate() {
            let ours = channel_psnr(&a, &b, c);
            assert!(
                close(ours, theirs),
                "{} channel {c}: {ours} vs {theirs}",
                case.name
            );
        }
        // And against the committed scikit-image numbers.
        if pairs.pairs.len() == 1 {
            assert!(close(case.psnr_frames[0], f.average), "{}", case.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timing (run with: cargo test --release --test it -- --ignored --nocapture metrics::)

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn timing() {
    let fx = fixture();
    let astro = load_source("astronaut", &fx.sources["astronaut"]).remove(0);
    // Tile the astronaut over the target size so the content is natural.
    let tile = |w: usize, h: usize| -> Frame {
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let i = ((y % astro.h) * astro.w + x % astro.w) * 3;
                rgb.extend_from_slice(&astro.rgb[i..i + 3]);
            }
        }
        Frame { w, h, rgb }
    };
    eprintln!("rayon threads: {}", rayon::current_num_threads());
    for (w, h) in [(640, 352), (1920, 1080)] {
        let a = tile(w, h);
        let b = blur3(&a);
        let time = |f: &dyn Fn()| {
            let mut runs: Vec<f64> = (0..15)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            runs[runs.len() / 2]
        };
        let t_ssim = time(&|| {
            std::hint::black_box(ssim::ssim(&a.rgb, &b, w, h).unwrap());
        });
        let t_psnr = time(&|| {
            std::hint::black_box(psnr::psnr(&a.rgb, &b).unwrap());
        });
        let t_frame = time(&|| {
            std::hint::black_box(metrics::frame_metrics(&a.rgb, &b, w, h).unwrap());
        });
        let t_pool = time(&|| {
            std::hint::black_box(metrics::pool_error(&a.rgb, &b, w, h, 16).unwrap());
        });
        eprintln!(
            "{w}x{h}: ssim {t_ssim:.2} ms, psnr {t_psnr:.2} ms, frame_metrics {t_frame:.2} ms, \
             pool_error(16) {t_pool:.2} ms (median of 15)"
        );
    }
}
