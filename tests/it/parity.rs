//! Parity with NVIDIA's official PyTorch implementation: every reference model, from every file
//! form, on every tensor of its `io.safetensors` (tolerances from the reference README).

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::common::{assert_close, assert_exact_i64, load_io, model_dir};
use candle_core::Tensor;
use tokenscope::tokenizer::checkpoint::{self, CheckpointForm, LoadOptions};
use tokenscope::tokenizer::Tokens;

fn check_model(name: &str) {
    let dir = model_dir(name);
    let io = load_io(&dir.join("io.safetensors"));
    let get = |k: &str| {
        io.get(k)
            .unwrap_or_else(|| panic!("{name}: io.safetensors lacks {k}"))
    };
    let forms: [(&Path, CheckpointForm); 3] = [
        (&dir.join("model.safetensors"), CheckpointForm::Safetensors),
        (&dir, CheckpointForm::TorchScriptHalves),
        (
            &dir.join("autoencoder.jit"),
            CheckpointForm::TorchScriptAutoencoder,
        ),
    ];
    for (path, form) in forms {
        let loaded = checkpoint::load(path, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name} {form:?}: {e}"));
        assert_eq!(loaded.form, form, "{name}: form");
        let model = &loaded.tokenizer;
        let what = |t: &str| format!("{name} [{}] {t}", form.describe());
        let trace = model
            .encode_traced(get("input"))
            .unwrap_or_else(|e| panic!("{}: {e}", what("encode")));
        assert_close(&what("patcher_out"), &trace.patcher_out, get("patcher_out"));
        assert_close(&what("encoder_out"), &trace.encoder_out, get("encoder_out"));
        let stored_tokens = match &trace.tokens {
            Tokens::Continuous { latent } => {
                assert_close(&what("latent"), latent, get("latent"));
                model.tokens_from_tensor(get("latent")).unwrap()
            }
            Tokens::Discrete { indices, codes } => {
                assert_close(&what("pre_quant"), &trace.quant_conv_out, get("pre_quant"));
                assert_exact_i64(&what("indices"), indices, get("indices"));
                assert_eq!(
                    codes.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    get("codes")
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                    "{}",
                    what("codes")
                );
                model.tokens_from_tensor(get("indices")).unwrap()
            }
        };
        // Decode from the stored tokens, not our own, so the decoder is tested alone.
        let decoded = model
            .decode_traced(&stored_tokens)
            .unwrap_or_else(|e| panic!("{}: {e}", what("decode")));
        assert_close(&what("decoder_in"), &decoded.decoder_in, get("decoder_in"));
        assert_close(
            &what("unpatcher_in"),
            &decoded.unpatcher_in,
            get("unpatcher_in"),
        );
        let err = assert_close(
            &what("reconstruction"),
            &decoded.reconstruction,
            get("reconstruction"),
        );
        // The tighter rule the README says should also hold: 2e-5 of the largest magnitude.
        let peak = get("reconstruction")
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            err <= 2e-5 * f64::from(peak),
            "{}: {err:.2e} > 2e-5·{peak}",
            what("reconstruction (relative)")
        );
        // End to end from our own tokens too.
        let round_trip: Tensor = model.decode(&trace.tokens).unwrap();
        assert_close(
            &what("reconstruction from own tokens"),
            &round_trip,
            get("reconstruction"),
        );
    }
}

macro_rules! parity {
    ($($test:ident => $name:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            check_model($name);
        }
    )*};
}

parity! {
    ci8x8 => "CI8x8-tiny",
    ci16x16 => "CI16x16-tiny",
    di8x8 => "DI8x8-tiny",
    di16x16 => "DI16x16-tiny",
    cv4x8x8 => "CV4x8x8-tiny",
    cv8x8x8 => "CV8x8x8-tiny",
    cv8x16x16 => "CV8x16x16-tiny",
    dv4x8x8 => "DV4x8x8-tiny",
    dv8x8x8 => "DV8x8x8-tiny",
    dv8x16x16 => "DV8x16x16-tiny",
    ci16x16_lowres => "CI16x16-LowRes-tiny",
    dv4x8x8_lowres => "DV4x8x8-LowRes-tiny",
}

/// NVIDIA ships bf16 archives; a float32 port reading them must reproduce `f32_from_bf16/*`,
/// which only holds with the stored Haar tap 0.70703125 (checked on `patcher_out`).
#[test]
fn bf16_archives_match_their_float32_upcast() {
    for name in ["CV8x8x8-tiny", "DI8x8-tiny"] {
        let dir = model_dir(name).join("bf16");
        let io = load_io(&dir.join("io.safetensors"));
        let parent = load_io(&model_dir(name).join("io.safetensors"));
        let input = parent.get("input").unwrap();
        let get = |k: &str| {
            io.get(&format!("f32_from_bf16/{k}"))
                .unwrap_or_else(|| panic!("{name}: no {k}"))
        };
        for path in [dir.clone(), dir.join("autoencoder.jit")] {
            let loaded = checkpoint::load(&path, &LoadOptions::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                loaded.stored_dtype,
                candle_core::DType::BF16,
                "{name}: stored dtype"
            );
            assert_eq!(
                loaded.haar_taps.encoder, 0.70703125,
                "{name}: tap from the bf16 buffer"
            );
            let model = &loaded.tokenizer;
            let trace = model.encode_traced(input).unwrap();
            assert_close(
                &format!("{name} bf16 patcher_out"),
                &trace.patcher_out,
                get("patcher_out"),
            );
            assert_close(
                &format!("{name} bf16 encoder_out"),
                &trace.encoder_out,
                get("encoder_out"),
            );
            let tokens = match &trace.tokens {
                Tokens::Continuous { latent } => {
                    assert_close(&format!("{name} bf16 latent"), latent, get("latent"));
                    trace.tokens.clone()
                }
                Tokens::Discrete { indices, codes } => {
                    assert_close(
                        &format!("{name} bf16 pre_quant"),
                        &trace.quant_conv_out,
                        get("pre_quant"),
                    );
                    assert_exact_i64(&format!("{name} bf16 indices"), indices, get("indices"));
                    assert_close(&format!("{name} bf16 codes"), codes, get("codes"));
                    model.tokens_from_tensor(get("indices")).unwrap()
                }
            };
            let decoded = model.decode_traced(&tokens).unwrap();
            assert_close(
                &format!("{name} bf16 decoder_in"),
                &decoded.decoder_in,
                get("decoder_in"),
            );
            assert_close(
                &format!("{name} bf16 reconstruction"),
                &decoded.reconstruction,
                get("reconstruction"),
            );
        }
    }
}

/// diffusers' AutoencoderKLCosmos copy of CV8x8x8-tiny loads under the official names and gives
/// the official outputs (diffusers itself differs from the golden by float32 rounding only).
#[test]
fn diffusers_format_loads_and_matches() {
    let dir = model_dir("CV8x8x8-tiny").join("diffusers");
    let io = load_io(&dir.join("io.safetensors"));
    let parent = load_io(&model_dir("CV8x8x8-tiny").join("io.safetensors"));
    let loaded = checkpoint::load(&dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.form, CheckpointForm::Diffusers);
    let model = &loaded.tokenizer;
    let tokens = model.encode(parent.get("input").unwrap()).unwrap();
    let Tokens::Continuous { latent } = &tokens else {
        panic!("CV is continuous")
    };
    assert_close("diffusers latent", latent, io.get("latent").unwrap());
    assert_close(
        "diffusers latent vs official",
        latent,
        parent.get("latent").unwrap(),
    );
    let recon = model.decode(&tokens).unwrap();
    assert_close(
        "diffusers reconstruction",
        &recon,
        io.get("reconstruction").unwrap(),
    );
    assert_close(
        "diffusers reconstruction vs official",
        &recon,
        parent.get("reconstruction").unwrap(),
    );
}

/// Every official key maps to the diffusers name the converter wrote, and back.
#[test]
fn diffusers_key_mapping_inverts_the_converter() {
    let text =
        std::fs::read_to_string(model_dir("CV8x8x8-tiny").join("diffusers/key_mapping.json"))
            .unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for entry in value["mapping"].as_array().unwrap() {
        let official = entry["official_key"].as_str().unwrap();
        let diffusers = entry["diffusers_key"]
            .as_str()
            .or(entry["would_be_diffusers_key"].as_str());
        if let Some(d) = diffusers {
            assert_eq!(
                tokenscope::tokenizer::checkpoint::diffusers::official_key_from_diffusers(d, 3),
                official
            );
            checked += 1;
        }
    }
    assert!(checked >= 238, "only {checked} keys checked");
}
