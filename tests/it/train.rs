//! Training: a tiny Cosmos-architecture model learns on a shipped clip (loss falls, PSNR rises),
//! runs resume exactly where they stopped, and what they write loads like any checkpoint.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use tokenscope::media::{self, DecodeOptions};
use tokenscope::tokenizer::checkpoint::{self, LoadOptions};
use tokenscope::tokenizer::config::find_variant;
use tokenscope::tokenizer::NetworkConfig;
use tokenscope::train::data::{self, DataSpec};
use tokenscope::train::losses::LossWeights;
use tokenscope::train::trainer::{self, TrainInputs};
use tokenscope::train::{train, TrainSettings};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenscope-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A very small CV4x8x8: width 8, one block per level.
fn tiny_config(variant: &str) -> NetworkConfig {
    let base = find_variant(variant).unwrap().config;
    NetworkConfig {
        channels: 8,
        num_res_blocks: 1,
        ..base
    }
}

fn settings(config: NetworkConfig, steps: usize) -> TrainSettings {
    TrainSettings {
        name: "test-tiny".into(),
        variant: "CV4x8x8".into(),
        config,
        steps,
        batch: 2,
        crop: 64,
        extra_crops: Vec::new(),
        color_jitter: 0.0,
        max_frames: 9,
        max_side: None,
        image_fraction: 0.0,
        learning_rate: 3e-3,
        warmup_steps: 5,
        final_lr_fraction: 0.1,
        weight_decay: 0.0,
        clip_norm: 1.0,
        ema_decay: 0.9,
        checkpoint_every: 10,
        validate_every: 0,
        seed: 7,
        losses: LossWeights::default(),
        save_dtype: "f32".into(),
        init: None,
        inflated_from: None,
        vgg19: None,
    }
}

fn dataset() -> data::Dataset {
    let spec = DataSpec::parse(&format!("{}@0-40", demo().display())).unwrap();
    data::load(&[spec], 128, 0.1, 9).unwrap()
}

/// Clip PSNR of the weights saved in `dir` on the first 9 frames of the demo at 128 px.
fn saved_model_psnr(dir: &Path) -> f64 {
    let model = checkpoint::load(dir, &LoadOptions::default()).unwrap();
    let clip = media::open(
        demo(),
        &DecodeOptions {
            max_frames: Some(9),
            resize_shorter_side: Some(128),
            ..DecodeOptions::default()
        },
    )
    .unwrap();
    let window = data::centre_crop(&clip.frames, 128).unwrap();
    let (psnr, _) = trainer::validate(&model.tokenizer, &[window], &AtomicBool::new(false))
        .unwrap()
        .unwrap();
    psnr
}

#[test]
fn a_tiny_video_model_learns_on_the_demo_clip() {
    let dataset = dataset();
    assert!(!dataset.validation.is_empty(), "the tail is held out");
    let out = scratch("learns");
    let inputs = TrainInputs {
        dataset: &dataset,
        init_weights: None,
        device: &Device::Cpu,
    };
    let never = AtomicBool::new(false);
    let config = tiny_config("CV4x8x8");
    let first = train(
        &settings(config.clone(), 1),
        &inputs,
        &out,
        &never,
        &mut |_| {},
    )
    .unwrap();
    let psnr_before = saved_model_psnr(&out);
    let summary = train(&settings(config, 40), &inputs, &out, &never, &mut |_| {}).unwrap();
    assert_eq!(first.resumed_from, None);
    assert_eq!(summary.resumed_from, Some(1), "the second call resumes");
    assert_eq!(summary.state.step, 40);
    let losses: Vec<f64> = summary.state.history.iter().map(|h| h.loss.total).collect();
    let head: f64 = losses.iter().take(5).sum::<f64>() / 5.0;
    let tail: f64 = losses.iter().rev().take(5).sum::<f64>() / 5.0;
    assert!(
        tail < 0.8 * head,
        "loss must fall: first steps {head:.4}, last {tail:.4}"
    );
    let psnr_after = saved_model_psnr(&out);
    assert!(
        psnr_after > psnr_before + 3.0,
        "PSNR must rise: {psnr_before:.2} dB before, {psnr_after:.2} dB after"
    );
    for file in [
        "model.safetensors",
        "config.json",
        "MODEL_CARD.md",
        "train_state.json",
    ] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("not an NVIDIA release") && card.contains("demo.mp4"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_discrete_model_trains_through_the_straight_through_fsq() {
    let dataset = dataset();
    let out = scratch("fsq");
    let inputs = TrainInputs {
        dataset: &dataset,
        init_weights: None,
        device: &Device::Cpu,
    };
    let mut config_settings = settings(tiny_config("DV4x8x8"), 25);
    config_settings.variant = "DV4x8x8".into();
    let summary = train(
        &config_settings,
        &inputs,
        &out,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let losses: Vec<f64> = summary.state.history.iter().map(|h| h.loss.total).collect();
    let head: f64 = losses.iter().take(5).sum::<f64>() / 5.0;
    let tail: f64 = losses.iter().rev().take(5).sum::<f64>() / 5.0;
    assert!(tail < 0.9 * head, "loss must fall: {head:.4} → {tail:.4}");
    // The saved model is a real discrete tokenizer: indices in the codebook.
    let model = checkpoint::load(&out, &LoadOptions::default()).unwrap();
    assert!(model.tokenizer.config().family.is_discrete());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn cancelling_saves_a_checkpoint_that_resumes() {
    let dataset = dataset();
    let out = scratch("cancel");
    let inputs = TrainInputs {
        dataset: &dataset,
        init_weights: None,
        device: &Device::Cpu,
    };
    let cancel = AtomicBool::new(false);
    let config = tiny_config("CV4x8x8");
    let mut steps_seen = 0;
    let summary = train(
        &settings(config.clone(), 50),
        &inputs,
        &out,
        &cancel,
        &mut |p| {
            steps_seen = p.step;
            if p.step == 3 {
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert!(summary.cancelled);
    assert_eq!((summary.state.step, steps_seen), (3, 3));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 3);
    // Another architecture in the same folder is refused, not silently mixed.
    let other = train(
        &settings(tiny_config("CV8x8x8"), 5),
        &inputs,
        &out,
        &AtomicBool::new(false),
        &mut |_| {},
    );
    assert!(other
        .unwrap_err()
        .to_string()
        .contains("another architecture"));
    let _ = std::fs::remove_dir_all(&out);
}

/// Runs the tokenscope binary with `args`.
fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokenscope"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_train_command_writes_a_loadable_model_and_names_bad_input() {
    let out = scratch("cli");
    let data = format!("{}@0-40", demo().display());
    let result = run(&[
        "train",
        "--variant",
        "DI8x8",
        "--data",
        &data,
        "-o",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "1",
        "--crop",
        "64",
        "--warmup",
        "1",
        "--validate-every",
        "2",
        "--max-side",
        "96",
        "--chroma-weight",
        "2",
        "--mse-weight",
        "5",
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("val PSNR"), "{stderr}");
    // The chroma and MSE terms are on, logged, and the card does not pass them off as the
    // Cosmos recipe.
    assert!(stderr.contains("chroma L1 x2, MSE x5"), "{stderr}");
    let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
    assert!(
        card.contains("the Cosmos recipe plus Tokenscope's chroma and MSE terms"),
        "{card}"
    );
    let info = run(&["info", "-m", out.to_str().unwrap()]);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    // Labelled as Tokenscope's own model, never as NVIDIA's variant.
    let described = String::from_utf8_lossy(&info.stdout);
    assert!(described.contains("tokenscope-nano-DI8x8"), "{described}");
    // The resolution it learnt at, which the viewer compares inputs with.
    assert!(
        described.contains("trained on:     frames at most 96 pixels"),
        "{described}"
    );

    let bad = run(&["train", "--variant", "XX9", "--data", &data, "-o", "/tmp/x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown variant"));
    let bad = run(&[
        "train",
        "--variant",
        "CV8x8x8",
        "--data",
        "/nonexistent.mp4",
        "-o",
        "/tmp/x",
    ]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("/nonexistent.mp4"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--inflate` starts a video network from a shipped image nano, says so in the log and the
/// card, and refuses a checkpoint that is not an image network.
#[test]
fn the_train_command_inflates_an_image_model_into_a_video_network() {
    let out = scratch("inflate");
    let image_model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/tokenscope-nano-CI8x8");
    let data = format!("{}@0-40", demo().display());
    let common = [
        "--data",
        &data,
        "--steps",
        "1",
        "--batch",
        "1",
        "--crop",
        "64",
        "--warmup",
        "1",
        "--validate-every",
        "1",
        "--max-side",
        "96",
    ];
    let mut args = vec!["train", "--variant", "CV4x8x8", "-o", out.to_str().unwrap()];
    args.extend(common);
    args.extend(["--inflate", image_model.to_str().unwrap()]);
    let result = run(&args);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(
        stderr.contains("inflate: the temporal attention"),
        "{stderr}"
    );
    assert!(!stderr.contains("initialised fresh"), "{stderr}");
    let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("inflated to 3-D"), "{card}");

    let video_model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/tokenscope-nano-DV8x8x8");
    let mut args = vec!["train", "--variant", "DV8x8x8", "-o", "/tmp/never-written"];
    args.extend(common);
    args.extend(["--inflate", video_model.to_str().unwrap()]);
    let refused = run(&args);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("already a video network"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn stage_two_adds_flow_and_a_late_adversary_and_resumes_them() {
    let dataset = dataset();
    let out = scratch("stage2");
    let inputs = TrainInputs {
        dataset: &dataset,
        init_weights: None,
        device: &Device::Cpu,
    };
    let never = AtomicBool::new(false);
    let mut recipe = settings(tiny_config("CV4x8x8"), 6);
    recipe.losses = LossWeights::stage2(10);
    assert_eq!(recipe.losses.adversarial_start, 6);
    let first = train(&recipe, &inputs, &out, &never, &mut |_| {}).unwrap();
    assert!(
        first.state.history.iter().all(|h| h.loss.flow > 0.0),
        "flow term on video windows"
    );
    assert!(
        first
            .state
            .history
            .iter()
            .all(|h| h.loss.adversarial == 0.0),
        "adversary not yet"
    );
    recipe.steps = 10;
    let second = train(&recipe, &inputs, &out, &never, &mut |_| {}).unwrap();
    let late: Vec<_> = second.state.history.iter().skip(6).collect();
    assert_eq!(late.len(), 4);
    assert!(late
        .iter()
        .all(|h| h.loss.adversarial != 0.0 && h.loss.discriminator > 0.0));
    let state =
        candle_core::safetensors::load(out.join("train_state.safetensors"), &Device::Cpu).unwrap();
    assert!(state.contains_key("d.0.weight") && state.contains_key("dm.0.weight"));
    let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
    assert!(
        card.contains("optical-flow consistency") && card.contains("no VGG-19 weights"),
        "{card}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
