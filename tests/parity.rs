//! Parity with NVIDIA's official PyTorch implementation: every reference model, from every file
//! form, on every tensor of its `io.safetensors` (tolerances from the reference README).

mod common;

use std::path::Path;

use candle_core::Tensor;
use common::{assert_close, assert_exact_i64, load_io, model_dir};
use tokenscope::tokenizer::checkpoint::{self, CheckpointForm, LoadOptions};
use tokenscope::tokenizer::Tokens;

fn check_model(name: &str) {
    let dir = model_dir(name);
    let io = load_io(&dir.join("io.safetensors"));
    let get = |k: &str| io.get(k).unwrap_or_else(|| panic!("{name}: io.safetensors lacks {k}"));
    let forms: [(&Path, CheckpointForm); 3] = [
        (&dir.join("model.safetensors"), CheckpointForm::Safetensors),
        (&dir, CheckpointForm::TorchScriptHalves),
        (&dir.join("autoencoder.jit"), CheckpointForm::TorchScriptAutoencoder),
    ];
    for (path, form) in forms {
        let loaded = checkpoint::load(path, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name} {form:?}: {e}"));
        assert_eq!(loaded.form, form, "{name}: form");
        let model = &loaded.tokenizer;
        let what = |t: &str| format!("{name} [{}] {t}", form.describe());
        let trace = model.encode_traced(get("input")).unwrap_or_else(|e| panic!("{}: {e}", what("encode")));
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
                    get("codes").flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    "{}",
                    what("codes")
                );
                model.tokens_from_tensor(get("indices")).unwrap()
            }
        };
        // Decode from the stored tokens, not our own, so the decoder is tested alone.
        let decoded = model.decode_traced(&stored_tokens).unwrap_or_else(|e| panic!("{}: {e}", what("decode")));
        assert_close(&what("decoder_in"), &decoded.decoder_in, get("decoder_in"));
        assert_close(&what("unpatcher_in"), &decoded.unpatcher_in, get("unpatcher_in"));
        let err = assert_close(&what("reconstruction"), &decoded.reconstruction, get("reconstruction"));
        // The tighter rule the README says should also hold: 2e-5 of the largest magnitude.
        let peak = get("reconstruction").abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err <= 2e-5 * f64::from(peak), "{}: {err:.2e} > 2e-5·{peak}", what("reconstruction (relative)"));
        // End to end from our own tokens too.
        let round_trip: Tensor = model.decode(&trace.tokens).unwrap();
        assert_close(&what("reconstruction from own tokens"), &round_trip, get("reconstruction"));
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
