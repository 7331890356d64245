//! Tests of the TorchScript archive reader against the reference archives in
//! `../shared/reference` (made with PyTorch from the official Cosmos tokenizer code), plus
//! robustness tests with truncated, corrupted and hostile archives.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::bf16;
use tokenscope::tokenizer::checkpoint::torchscript::{
    is_torchscript_archive, read_torchscript, read_torchscript_bytes, ArchiveTensor,
    TorchScriptError,
};

const MODELS: [&str; 12] = [
    "CI8x8-tiny",
    "CI16x16-tiny",
    "DI8x8-tiny",
    "DI16x16-tiny",
    "CV4x8x8-tiny",
    "CV8x8x8-tiny",
    "DV4x8x8-tiny",
    "DV8x16x16-tiny",
    "CV8x16x16-tiny",
    "DV8x8x8-tiny",
    "CI16x16-LowRes-tiny",
    "DV4x8x8-LowRes-tiny",
];

const ARCHIVES: [&str; 3] = ["autoencoder.jit", "encoder.jit", "decoder.jit"];

const BF16_MODELS: [&str; 2] = ["CV8x8x8-tiny", "DI8x8-tiny"];

fn reference_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference"));
    assert!(
        dir.join("README.md").is_file(),
        "the reference data is missing: expected `{}` (the shared Cosmos reference folder next \
         to the crate); these tests cannot run without it",
        dir.display()
    );
    for model in MODELS {
        assert!(
            dir.join(model).join("model.safetensors").is_file(),
            "reference model `{model}` is missing from `{}`",
            dir.display()
        );
    }
    dir
}

fn is_discrete(model: &str) -> bool {
    model.starts_with('D')
}

fn is_video(model: &str) -> bool {
    model.starts_with("CV") || model.starts_with("DV")
}

fn read(path: &Path) -> Vec<ArchiveTensor> {
    match read_torchscript(path) {
        Ok(t) => t,
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

fn by_name(tensors: &[ArchiveTensor]) -> HashMap<&str, &Tensor> {
    let map: HashMap<&str, &Tensor> = tensors
        .iter()
        .map(|t| (t.name.as_str(), &t.tensor))
        .collect();
    assert_eq!(map.len(), tensors.len(), "duplicate tensor names");
    map
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 tensor")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn bf16_bits(t: &Tensor) -> Vec<u16> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<bf16>())
        .expect("bf16 tensor")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn i64_values(t: &Tensor) -> Vec<i64> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::I64))
        .and_then(|t| t.to_vec1::<i64>())
        .expect("integer tensor")
}

/// The part of `model.safetensors` an archive holds, and the prefix of its FSQ buffers.
fn belongs_to(archive: &str, key: &str) -> bool {
    match archive {
        "autoencoder.jit" => true,
        "encoder.jit" => key.starts_with("encoder.") || key.starts_with("quant_conv."),
        "decoder.jit" => key.starts_with("decoder.") || key.starts_with("post_quant_conv."),
        _ => unreachable!(),
    }
}

fn quantizer_prefix(archive: &str) -> &'static str {
    if archive == "decoder.jit" {
        "inv_quant.quantizer."
    } else {
        "quantizer."
    }
}

fn load_safetensors(model_dir: &Path) -> HashMap<String, Tensor> {
    let path = model_dir.join("model.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn load_config(model_dir: &Path) -> serde_json::Value {
    let path = model_dir.join("config.json");
    let text = std::fs::read_to_string(&path).expect("config.json");
    serde_json::from_str(&text).expect("config.json parses")
}

/// The constant buffers this archive should hold (name -> (shape, dtype)), from config.json.
fn expected_buffers(
    config: &serde_json::Value,
    archive: &str,
) -> HashMap<String, (Vec<usize>, DType)> {
    let buffers = config["non_persistent_buffers_not_in_model_safetensors"]
        .as_object()
        .expect("buffer list in config.json");
    let mut out = HashMap::new();
    for (name, info) in buffers {
        let name = match name.strip_prefix("quantizer.") {
            Some(rest) => format!("{}{rest}", quantizer_prefix(archive)),
            None => name.clone(),
        };
        let in_part = match archive {
            "autoencoder.jit" => true,
            "encoder.jit" => name.starts_with("encoder.") || name.starts_with("quantizer."),
            "decoder.jit" => name.starts_with("decoder.") || name.starts_with("inv_quant."),
            _ => unreachable!(),
        };
        if !in_part {
            continue;
        }
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_u64().expect("dim") as usize)
            .collect();
        let dtype = match info["dtype"].as_str().expect("dtype") {
            "float32" => DType::F32,
            "bfloat16" => DType::BF16,
            "int32" => DType::I32,
            "int64" => DType::I64,
            other => panic!("unexpected dtype {other}"),
        };
        out.insert(name, (shape, dtype));
    }
    out
}

// ----- 1. every weight of model.safetensors, bit for bit ------------------------------------

#[test]
fn f32_archives_match_model_safetensors() {
    let dir = reference_dir();
    for model in MODELS {
        let model_dir = dir.join(model);
        let weights = load_safetensors(&model_dir);
        let config = load_config(&model_dir);
        for archive in ARCHIVES {
            let path = model_dir.join(archive);
            let tensors = read(&path);
            let map = by_name(&tensors);
            let what = format!("{model}/{archive}");

            let expected_count = config["jit"]["state_dicts"][archive]["n_entries"]
                .as_u64()
                .expect("n_entries") as usize;
            assert_eq!(tensors.len(), expected_count, "{what}: number of tensors");

            let mut checked = 0;
            for (key, want) in &weights {
                if !belongs_to(archive, key) {
                    continue;
                }
                let got = map
                    .get(key.as_str())
                    .unwrap_or_else(|| panic!("{what}: `{key}` is missing"));
                assert_eq!(got.dims(), want.dims(), "{what}: shape of `{key}`");
                assert_eq!(got.dtype(), DType::F32, "{what}: dtype of `{key}`");
                assert!(got.is_contiguous(), "{what}: `{key}` is not contiguous");
                assert!(
                    f32_bits(got) == f32_bits(want),
                    "{what}: values of `{key}` differ"
                );
                checked += 1;
            }
            assert!(checked > 0, "{what}: no weights checked");

            // Everything else is one of the constant buffers, with the documented shape/dtype.
            let buffers = expected_buffers(&config, archive);
            for t in &tensors {
                if weights.contains_key(&t.name) {
                    continue;
                }
                let (shape, dtype) = buffers
                    .get(&t.name)
                    .unwrap_or_else(|| panic!("{what}: unexpected tensor `{}`", t.name));
                assert_eq!(t.tensor.dims(), shape.as_slice(), "{what}: `{}`", t.name);
                assert_eq!(t.tensor.dtype(), *dtype, "{what}: `{}`", t.name);
            }
            for name in buffers.keys() {
                assert!(
                    map.contains_key(name.as_str()),
                    "{what}: buffer `{name}` missing"
                );
            }
            assert_eq!(
                checked + buffers.len(),
                tensors.len(),
                "{what}: tensor count"
            );

            if is_discrete(model) {
                let prefix = quantizer_prefix(archive);
                assert!(
                    map.contains_key(format!("{prefix}_levels").as_str()),
                    "{what}: `{prefix}_levels` missing"
                );
                if archive == "decoder.jit" {
                    assert!(
                        !tensors.iter().any(|t| t.name.starts_with("quantizer.")),
                        "{what}: decoder quantizer keys must start with `inv_quant.quantizer.`"
                    );
                }
            }
        }
    }
}

#[test]
fn tensors_come_in_pickling_order() {
    let dir = reference_dir();
    let tensors = read(&dir.join("CV8x8x8-tiny/autoencoder.jit"));
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.first(), Some(&"encoder.patcher3d.wavelets"));
    let pos = |n: &str| {
        names
            .iter()
            .position(|&x| x == n)
            .unwrap_or_else(|| panic!("`{n}` missing"))
    };
    assert!(pos("encoder.conv_in.0.conv3d.weight") < pos("encoder.conv_in.0.conv3d.bias"));
    assert!(pos("encoder.conv_in.0.conv3d.bias") < pos("encoder.down.0.block.0.norm1.norm.weight"));
    assert!(pos("encoder.norm_out.norm.weight") < pos("decoder.conv_in.0.conv3d.weight"));
    assert!(names.contains(&"encoder.down.0.block.0.conv1.0.conv3d.weight"));
}

// ----- 2. constant buffers ----------------------------------------------------------------

fn check_buffers(model: &str, dir: &Path, bf16_archive: bool) {
    let (patcher, unpatcher) = if is_video(model) {
        ("encoder.patcher3d", "decoder.unpatcher3d")
    } else {
        ("encoder.patcher", "decoder.unpatcher")
    };
    for archive in ARCHIVES {
        let path = dir.join(archive);
        let tensors = read(&path);
        let map = by_name(&tensors);
        let what = format!("{}", path.display());
        let mut wavelets = Vec::new();
        if archive != "decoder.jit" {
            wavelets.push(format!("{patcher}.wavelets"));
        }
        if archive != "encoder.jit" {
            wavelets.push(format!("{unpatcher}.wavelets"));
        }
        for name in &wavelets {
            let t = map
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{what}: `{name}` missing"));
            assert_eq!(t.dims(), &[2], "{what}: `{name}`");
            if bf16_archive {
                assert_eq!(t.dtype(), DType::BF16, "{what}: `{name}`");
                let want = bf16::from_f32(0.70703125).to_bits();
                assert_eq!(bf16_bits(t), vec![want, want], "{what}: `{name}`");
            } else {
                assert_eq!(t.dtype(), DType::F32, "{what}: `{name}`");
                let want = 0.707_106_77_f32.to_bits();
                assert_eq!(want, std::f32::consts::FRAC_1_SQRT_2.to_bits());
                assert_eq!(f32_bits(t), vec![want, want], "{what}: `{name}`");
            }
        }
        for name in wavelets.iter().map(|w| w.replace("wavelets", "_arange")) {
            let t = map
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{what}: `{name}` missing"));
            assert_eq!(t.dtype(), DType::I64, "{what}: `{name}`");
            assert_eq!(i64_values(t), vec![0, 1], "{what}: `{name}`");
        }
        if is_video(model) && archive != "decoder.jit" {
            let name = format!("{patcher}.patch_size_buffer");
            let t = map
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{what}: `{name}` missing"));
            assert_eq!(t.dtype(), DType::I32, "{what}: `{name}`");
            let want = if model.contains("LowRes") { 2 } else { 4 };
            assert_eq!(i64_values(t), vec![want], "{what}: `{name}`");
        }
        if is_discrete(model) {
            let prefix = quantizer_prefix(archive);
            let levels = map[format!("{prefix}_levels").as_str()];
            assert_eq!(levels.dtype(), DType::I32, "{what}: levels dtype");
            assert_eq!(i64_values(levels), vec![8, 8, 8, 5, 5, 5], "{what}: levels");
            let basis = map[format!("{prefix}_basis").as_str()];
            assert_eq!(basis.dtype(), DType::I32, "{what}: basis dtype");
            assert_eq!(
                i64_values(basis),
                vec![1, 8, 64, 512, 2560, 12800],
                "{what}: basis"
            );
            let codebook = map[format!("{prefix}implicit_codebook").as_str()];
            assert_eq!(codebook.dtype(), DType::BF16, "{what}: codebook dtype");
            assert_eq!(codebook.dims(), &[64000, 6], "{what}: codebook shape");
            // Row i holds the codes of index i: digit d = (i / basis_d) % L_d, code = (digit - L/2) / (L/2).
            let rows = codebook
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec2::<f32>())
                .expect("codebook values");
            let levels = [8i64, 8, 8, 5, 5, 5];
            let basis = [1i64, 8, 64, 512, 2560, 12800];
            for index in [0usize, 1, 7, 8, 511, 12345, 63999] {
                let want: Vec<f32> = (0..6)
                    .map(|d| {
                        let half = levels[d] / 2;
                        let digit = (index as i64 / basis[d]) % levels[d];
                        (digit - half) as f32 / half as f32
                    })
                    .collect();
                assert_eq!(rows[index], want, "{what}: codebook row {index}");
            }
        }
    }
}

#[test]
fn f32_archives_hold_the_constant_buffers() {
    let dir = reference_dir();
    for model in MODELS {
        check_buffers(model, &dir.join(model), false);
    }
}

#[test]
fn bf16_archives_hold_the_constant_buffers() {
    let dir = reference_dir();
    for model in BF16_MODELS {
        check_buffers(model, &dir.join(model).join("bf16"), true);
    }
}

#[test]
fn shared_storage_gives_both_tensors() {
    // In the float32 autoencoder.jit the patcher's and unpatcher's Haar taps share one storage.
    let dir = reference_dir();
    let tensors = read(&dir.join("CI8x8-tiny/autoencoder.jit"));
    let map = by_name(&tensors);
    let a = f32_bits(map["encoder.patcher.wavelets"]);
    let b = f32_bits(map["decoder.unpatcher.wavelets"]);
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
}

// ----- 3. bfloat16 archives ---------------------------------------------------------------

#[test]
fn bf16_archives_match_rounded_weights() {
    let dir = reference_dir();
    for model in BF16_MODELS {
        let weights = load_safetensors(&dir.join(model));
        for archive in ARCHIVES {
            let path = dir.join(model).join("bf16").join(archive);
            let tensors = read(&path);
            let map = by_name(&tensors);
            let what = format!("{model}/bf16/{archive}");
            for t in &tensors {
                let dtype = t.tensor.dtype();
                assert!(
                    !matches!(dtype, DType::F32 | DType::F16 | DType::F64),
                    "{what}: `{}` is {dtype:?}, expected every float tensor in BF16",
                    t.name
                );
            }
            let mut checked = 0;
            for (key, want) in &weights {
                if !belongs_to(archive, key) {
                    continue;
                }
                let got = map
                    .get(key.as_str())
                    .unwrap_or_else(|| panic!("{what}: `{key}` is missing"));
                assert_eq!(got.dtype(), DType::BF16, "{what}: `{key}`");
                assert_eq!(got.dims(), want.dims(), "{what}: `{key}`");
                // candle's f32 -> bf16 conversion rounds to nearest even, like PyTorch's.
                let rounded = want.to_dtype(DType::BF16).expect("to bf16");
                assert!(
                    bf16_bits(got) == bf16_bits(&rounded),
                    "{what}: `{key}` differs from the rounded float32 weight"
                );
                // And upcast, it is the rounded weight as float32.
                let up = got.to_dtype(DType::F32).expect("to f32");
                let rounded_up = rounded.to_dtype(DType::F32).expect("to f32");
                assert!(f32_bits(&up) == f32_bits(&rounded_up), "{what}: `{key}`");
                checked += 1;
            }
            assert!(checked > 0, "{what}: nothing checked");
        }
    }
}

// ----- is_torchscript_archive ------------------------------------------------------------

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "tokenscope-torchscript-test-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn detects_torchscript_archives() {
    let dir = reference_dir();
    for model in MODELS {
        for archive in ARCHIVES {
            let path = dir.join(model).join(archive);
            assert!(is_torchscript_archive(&path), "{}", path.display());
        }
        assert!(!is_torchscript_archive(
            &dir.join(model).join("model.safetensors")
        ));
        assert!(!is_torchscript_archive(
            &dir.join(model).join("config.json")
        ));
    }
    assert!(!is_torchscript_archive(&dir.join("README.md")));
    assert!(!is_torchscript_archive(&dir.join("does-not-exist.jit")));
    assert!(!is_torchscript_archive(&dir));
    let empty = TempFile::new("empty.jit", b"");
    assert!(!is_torchscript_archive(&empty.0));
    // A torch.save checkpoint: data.pkl but no code/ or constants.pkl.
    let pt = TempFile::new(
        "checkpoint.pt",
        &build_zip(&[("archive/data.pkl", b"\x80\x02}q\x00.".as_slice())]),
    );
    assert!(!is_torchscript_archive(&pt.0));
    let err = read_torchscript(&pt.0).expect_err("torch.save checkpoint");
    assert!(err.to_string().contains("torch.save checkpoint"), "{err}");
    let ts = TempFile::new("tiny.jit", &tiny_archive());
    assert!(is_torchscript_archive(&ts.0));
    assert!(read_torchscript(&ts.0).is_ok());
}

// ----- helpers to build archives and pickles ------------------------------------------------

fn build_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        writer.start_file(*name, options).expect("start_file");
        writer.write_all(data).expect("write");
    }
    writer.finish().expect("finish").into_inner()
}

/// A TorchScript-like archive under `archive/` with the given data.pkl and storages.
fn ts_zip(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let names: Vec<String> = storages
        .iter()
        .map(|(k, _)| format!("archive/data/{k}"))
        .collect();
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("archive/data.pkl", pkl),
        ("archive/constants.pkl", b"\x80\x02).".as_slice()),
        ("archive/byteorder", b"little".as_slice()),
        ("archive/version", b"4\n".as_slice()),
    ];
    for (name, (_, data)) in names.iter().zip(storages) {
        entries.push((name.as_str(), data.as_slice()));
    }
    build_zip(&entries)
}

/// Writes protocol-2 pickles the way torch.jit.save does.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'\n');
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: i64) -> &mut Self {
        if (0..256).contains(&v) {
            self.0.extend_from_slice(&[b'K', v as u8]);
        } else if (0..65536).contains(&v) {
            self.0.push(b'M');
            self.0.extend_from_slice(&(v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        self
    }
    fn tuple(&mut self, values: &[i64]) -> &mut Self {
        self.op(b'(');
        for &v in values {
            self.int(v);
        }
        self.op(b't')
    }
    /// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), offset, size, stride,
    /// False, OrderedDict())`.
    fn tensor(
        &mut self,
        class: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(').op(b'(').str("storage").global("torch", class);
        self.str(key).str("cpu").int(numel).op(b't').op(b'Q');
        self.int(offset).tuple(size).tuple(stride).op(0x89);
        self.global("collections", "OrderedDict").op(b')').op(b'R');
        self.op(b't').op(b'R')
    }
    fn module_start(&mut self, class: &str) -> &mut Self {
        self.global("__torch__.test.module", class);
        self.op(b')').op(0x81).op(b'}').op(b'(');
        self.str("training").op(0x88);
        self.str("_is_full_backward_hook").op(b'N')
    }
    fn module_end(&mut self) -> &mut Self {
        self.op(b'u').op(b'b')
    }
    fn finish(&mut self) -> Vec<u8> {
        self.op(b'.');
        std::mem::take(&mut self.0)
    }
}

fn f32_storage(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A module with one child and views of one shared storage in several layouts.
fn tiny_archive() -> Vec<u8> {
    let mut p = Pickle::new();
    p.module_start("Root");
    p.str("plain")
        .tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
    p.str("child").module_start("Child");
    p.str("transposed")
        .tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
    p.str("strided")
        .tensor("FloatStorage", "0", 6, 2, &[2], &[2]);
    p.module_end();
    p.str("broadcast")
        .tensor("FloatStorage", "0", 6, 1, &[2, 2], &[0, 1]);
    p.str("scalar").tensor("FloatStorage", "0", 6, 5, &[], &[]);
    p.str("empty")
        .tensor("FloatStorage", "0", 6, 0, &[0, 3], &[3, 1]);
    p.str("ints").tensor("IntStorage", "1", 3, 0, &[3], &[1]);
    p.module_end();
    let pkl = p.finish();
    let ints: Vec<u8> = [7i32, -8, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    ts_zip(
        &pkl,
        &[
            ("0", f32_storage(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])),
            ("1", ints),
        ],
    )
}

#[test]
fn views_of_a_shared_storage_are_materialised_correctly() {
    let tensors = read_torchscript_bytes(&tiny_archive(), "tiny.jit").expect("tiny archive");
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "plain",
            "child.transposed",
            "child.strided",
            "broadcast",
            "scalar",
            "empty",
            "ints"
        ]
    );
    let map = by_name(&tensors);
    let v2 = |n: &str| map[n].to_vec2::<f32>().expect(n);
    assert_eq!(v2("plain"), vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]);
    assert_eq!(
        v2("child.transposed"),
        vec![vec![0.0, 3.0], vec![1.0, 4.0], vec![2.0, 5.0]]
    );
    assert_eq!(
        map["child.strided"].to_vec1::<f32>().unwrap(),
        vec![2.0, 4.0]
    );
    assert_eq!(v2("broadcast"), vec![vec![1.0, 2.0], vec![1.0, 2.0]]);
    assert_eq!(map["scalar"].dims(), &[] as &[usize]);
    assert_eq!(map["scalar"].to_scalar::<f32>().unwrap(), 5.0);
    assert_eq!(map["empty"].dims(), &[0, 3]);
    assert_eq!(map["ints"].to_vec1::<i32>().unwrap(), vec![7, -8, 9]);
    for t in &tensors {
        assert!(t.tensor.is_contiguous(), "`{}`", t.name);
    }
}

// ----- 4. robustness ------------------------------------------------------------------------

/// Runs the reader, proving it does not panic; returns its result.
fn no_panic(bytes: &[u8], what: &str) -> Result<Vec<ArchiveTensor>, TorchScriptError> {
    match catch_unwind(AssertUnwindSafe(|| {
        read_torchscript_bytes(bytes, "test.jit")
    })) {
        Ok(result) => result,
        Err(_) => panic!("the reader panicked on {what}"),
    }
}

fn expect_err(bytes: &[u8], what: &str) -> String {
    match no_panic(bytes, what) {
        Ok(t) => panic!("{what}: expected an error, got {} tensors", t.len()),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("`test.jit`"),
                "{what}: message lacks the file name: {msg}"
            );
            msg
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The entries an archive needs (data.pkl, constants.pkl, byteorder, data/*), uncompressed.
fn essential_entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(Cursor::new(archive)).expect("zip");
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).expect("entry");
        let name = entry.name().expect("entry name").to_string();
        let rest = name.split_once('/').map(|(_, r)| r).unwrap_or("");
        if rest == "data.pkl"
            || rest == "constants.pkl"
            || rest == "byteorder"
            || rest.starts_with("data/")
        {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            out.push((name, data));
        }
    }
    out
}

fn rezip(entries: &[(String, Vec<u8>)], edit: impl Fn(&str, &[u8]) -> Option<Vec<u8>>) -> Vec<u8> {
    let edited: Vec<(String, Vec<u8>)> = entries
        .iter()
        .filter_map(|(name, data)| edit(name, data).map(|d| (name.clone(), d)))
        .collect();
    let refs: Vec<(&str, &[u8])> = edited
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    build_zip(&refs)
}

fn reference_archive(rel: &str) -> Vec<u8> {
    let path = reference_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn rezipped_essential_entries_still_read() {
    let original = reference_archive("DI8x8-tiny/encoder.jit");
    let entries = essential_entries(&original);
    let want = read_torchscript_bytes(&original, "original").expect("original");
    let got = read_torchscript_bytes(&rezip(&entries, |_, d| Some(d.to_vec())), "rezipped")
        .expect("rezipped");
    assert_eq!(want.len(), got.len());
    for (a, b) in want.iter().zip(&got) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.tensor.dims(), b.tensor.dims());
    }
}

#[test]
fn truncated_files_are_rejected() {
    let original = reference_archive("CV8x8x8-tiny/autoencoder.jit");
    let len = original.len();
    let mut cuts: Vec<usize> = (0..40).map(|i| i * len / 40).collect();
    cuts.extend([
        1,
        2,
        3,
        4,
        21,
        22,
        100,
        len - 100,
        len - 23,
        len - 22,
        len - 21,
        len - 1,
    ]);
    for cut in cuts {
        let msg = expect_err(
            &original[..cut],
            &format!("a copy cut at {cut} of {len} bytes"),
        );
        assert!(!msg.is_empty());
    }
}

#[test]
fn truncated_entries_are_rejected() {
    let original = reference_archive("CV8x8x8-tiny/encoder.jit");
    let entries = essential_entries(&original);
    let pkl_len = entries
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl"))
        .map(|(_, d)| d.len())
        .expect("data.pkl");
    // data.pkl cut at 50 points.
    for i in 0..50 {
        let cut = i * pkl_len / 50;
        let bytes = rezip(&entries, |name, d| {
            Some(if name.ends_with("/data.pkl") {
                d[..cut].to_vec()
            } else {
                d.to_vec()
            })
        });
        expect_err(&bytes, &format!("data.pkl cut at {cut} of {pkl_len} bytes"));
    }
    // The largest storage cut short: a clear "truncated" message naming tensor and sizes.
    let (big_name, big_data) = entries
        .iter()
        .filter(|(n, _)| n.contains("/data/"))
        .max_by_key(|(_, d)| d.len())
        .expect("a storage");
    let short = big_data.len() / 3;
    let bytes = rezip(&entries, |name, d| {
        Some(if name == big_name {
            d[..short].to_vec()
        } else {
            d.to_vec()
        })
    });
    let msg = expect_err(&bytes, "a short storage");
    let storage = big_name.split_once('/').map(|(_, r)| r).unwrap_or_default();
    assert!(
        msg.contains("truncated")
            && msg.contains(&format!("storage `{storage}` holds {short} bytes"))
            && msg.contains(&format!("needs {}", big_data.len())),
        "{msg}"
    );
    // A missing storage.
    let bytes = rezip(&entries, |name, d| (name != big_name).then(|| d.to_vec()));
    let msg = expect_err(&bytes, "a missing storage");
    assert!(msg.contains("missing") && msg.contains(storage), "{msg}");
    // A storage longer than declared.
    let bytes = rezip(&entries, |name, d| {
        let mut d = d.to_vec();
        if name == big_name {
            d.extend_from_slice(&[0; 4]);
        }
        Some(d)
    });
    let msg = expect_err(&bytes, "a long storage");
    assert!(msg.contains("declares"), "{msg}");
}

#[test]
fn corrupted_data_pkl_never_panics() {
    let original = reference_archive("CV8x8x8-tiny/encoder.jit");
    let entries = essential_entries(&original);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut errors = 0;
    let runs = 300;
    for run in 0..runs {
        let flips = 1 + rng.below(4);
        let picks: Vec<(usize, u8)> = (0..flips)
            .map(|_| (rng.next() as usize, 1u8 << rng.below(8)))
            .collect();
        let bytes = rezip(&entries, |name, d| {
            let mut d = d.to_vec();
            if name.ends_with("/data.pkl") {
                let len = d.len();
                for &(pos, bit) in &picks {
                    d[pos % len] ^= bit;
                }
            }
            Some(d)
        });
        match no_panic(&bytes, &format!("flip run {run}")) {
            Ok(_) => {}
            Err(e) => {
                assert!(e.to_string().contains("`test.jit`"));
                errors += 1;
            }
        }
    }
    // Most flips hit structure; a few only rename something or change a flag.
    assert!(
        errors > runs / 2,
        "only {errors} of {runs} corrupted copies were rejected"
    );
}

#[test]
fn corrupted_raw_files_never_panic() {
    let original = reference_archive("DI8x8-tiny/bf16/encoder.jit");
    let mut rng = Rng(12345);
    for run in 0..100 {
        let mut bytes = original.clone();
        for _ in 0..1 + rng.below(8) {
            let pos = rng.below(bytes.len());
            bytes[pos] ^= 1 << rng.below(8);
        }
        let _ = no_panic(&bytes, &format!("raw flip run {run}"));
    }
    // A flipped byte inside a stored tensor is caught by the zip CRC.
    let entries = essential_entries(&original);
    let bytes = rezip(&entries, |_, d| Some(d.to_vec()));
    let (_, big) = entries
        .iter()
        .filter(|(n, _)| n.contains("/data/"))
        .max_by_key(|(_, d)| d.len())
        .expect("a storage");
    let data_start = bytes
        .windows(big.len())
        .position(|w| w == big.as_slice())
        .expect("stored data in the zip");
    let mut flipped = bytes.clone();
    flipped[data_start] ^= 0x40;
    let msg = expect_err(&flipped, "a flipped storage byte");
    assert!(msg.contains("damaged"), "{msg}");
}

#[test]
fn non_archives_are_rejected() {
    let msg = expect_err(b"", "an empty file");
    assert!(msg.contains("empty"), "{msg}");
    let msg = expect_err(b"hello, world\n", "a text file");
    assert!(msg.contains("not a TorchScript archive"), "{msg}");
    let msg = expect_err(
        &reference_archive("CI8x8-tiny/model.safetensors"),
        "safetensors",
    );
    assert!(msg.contains("not a TorchScript archive"), "{msg}");

    let empty = TempFile::new("empty-file.jit", b"");
    let err = read_torchscript(&empty.0).expect_err("empty file");
    let msg = err.to_string();
    assert!(
        msg.contains(&empty.0.display().to_string()) && msg.contains("empty"),
        "{msg}"
    );
    let missing = reference_dir().join("no-such-file.jit");
    let err = read_torchscript(&missing).expect_err("missing file");
    assert!(matches!(err, TorchScriptError::Io { .. }), "{err}");
    let err = read_torchscript(&reference_dir()).expect_err("a directory");
    assert!(err.to_string().contains("directory"), "{err}");
}

#[test]
fn zips_without_exactly_one_data_pkl_are_rejected() {
    let msg = expect_err(&build_zip(&[("archive/version", b"4\n")]), "no data.pkl");
    assert!(
        msg.contains(
            "is not a TorchScript archive (no `*/data.pkl` entry); expected a file saved \
                      with torch.jit.save"
        ),
        "{msg}"
    );
    let msg = expect_err(
        &build_zip(&[("data.pkl", b"\x80\x02}.")]),
        "data.pkl at top level",
    );
    assert!(msg.contains("no `*/data.pkl`"), "{msg}");
    let pkl = Pickle::new().module_start("M").module_end().finish();
    let two = build_zip(&[
        ("a/data.pkl", &pkl),
        ("a/constants.pkl", b"\x80\x02)."),
        ("b/data.pkl", &pkl),
    ]);
    let msg = expect_err(&two, "two data.pkl");
    assert!(msg.contains("2 `*/data.pkl` entries"), "{msg}");
    // One is fine, whatever the folder is called; a module without tensors gives no tensors.
    let one = ts_zip(&pkl, &[]);
    assert!(no_panic(&one, "an empty module")
        .expect("empty module")
        .is_empty());
}

fn pickle_err(pkl: &[u8], what: &str) -> String {
    expect_err(&ts_zip(pkl, &[("0", vec![0; 64])]), what)
}

#[test]
fn disallowed_globals_are_refused_without_executing() {
    // os.system('touch pwned') via GLOBAL + REDUCE.
    let mut p = Pickle::new();
    p.global("os", "system")
        .str("touch pwned")
        .op(0x85)
        .op(b'R');
    let msg = pickle_err(&p.finish(), "os.system");
    assert!(
        msg.contains("`os.system`") && msg.contains("at byte 2"),
        "{msg}"
    );
    assert!(msg.contains("refuses"), "{msg}");

    for (module, name) in [
        ("builtins", "eval"),
        ("__builtin__", "getattr"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch.storage", "_load_from_bytes"),
        ("subprocess", "Popen"),
        ("__torch__", "os system"),
        ("__torch__x", "Foo"),
    ] {
        let mut p = Pickle::new();
        p.module_start("Root")
            .str("x")
            .global(module, name)
            .module_end();
        let msg = pickle_err(&p.finish(), &format!("{module} {name}"));
        assert!(msg.contains("refuses"), "{module} {name}: {msg}");
    }

    // STACK_GLOBAL (protocol 4's way to import) and INST/OBJ are not accepted opcodes.
    let mut p = Pickle::new();
    p.str("os").str("system").op(0x93);
    let msg = pickle_err(&p.finish(), "STACK_GLOBAL");
    assert!(
        msg.contains("STACK_GLOBAL") && msg.contains("0x93"),
        "{msg}"
    );
    let mut p = Pickle::new();
    p.op(b'(').op(b'i');
    p.0.extend_from_slice(b"os\nsystem\n");
    let msg = pickle_err(&p.finish(), "INST");
    assert!(msg.contains("INST"), "{msg}");

    // Allowed globals used the wrong way are refused too.
    let mut p = Pickle::new();
    p.global("collections", "OrderedDict")
        .str("x")
        .op(0x85)
        .op(b'R');
    let msg = pickle_err(&p.finish(), "OrderedDict('x')");
    assert!(msg.contains("REDUCE"), "{msg}");
    let mut p = Pickle::new();
    p.global("__torch__.m", "M").str("x").op(0x85).op(0x81);
    let msg = pickle_err(&p.finish(), "NEWOBJ with arguments");
    assert!(msg.contains("NEWOBJ"), "{msg}");

    // A storage class with no candle dtype.
    let mut p = Pickle::new();
    p.module_start("Root")
        .str("w")
        .tensor("CharStorage", "0", 4, 0, &[4], &[1]);
    let msg = pickle_err(&p.module_end().finish(), "int8 storage");
    assert!(msg.contains("torch.CharStorage"), "{msg}");
}

#[test]
fn hostile_pickles_are_bounded() {
    let one_tensor = |size: &[i64], stride: &[i64], offset: i64, numel: i64| {
        let mut p = Pickle::new();
        p.module_start("Root")
            .str("w")
            .tensor("FloatStorage", "0", numel, offset, size, stride);
        p.module_end().finish()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "huge numel",
            one_tensor(&[1 << 20, 1 << 20], &[1 << 20, 1], 0, 16),
            "safety limit",
        ),
        (
            "overflowing numel",
            one_tensor(&[i64::MAX, i64::MAX], &[1, 1], 0, 16),
            "safety limit",
        ),
        ("negative size", one_tensor(&[-1], &[1], 0, 16), "negative"),
        (
            "negative stride",
            one_tensor(&[4], &[-1], 0, 16),
            "negative",
        ),
        (
            "negative offset",
            one_tensor(&[4], &[1], -3, 16),
            "negative",
        ),
        (
            "view past storage",
            one_tensor(&[4, 4], &[4, 1], 1, 16),
            "only 16 elements",
        ),
        (
            "overflowing view",
            one_tensor(&[3], &[i64::MAX], i64::MAX, 16),
            "overflow",
        ),
        (
            "rank mismatch",
            one_tensor(&[4], &[1, 1], 0, 16),
            "different lengths",
        ),
        (
            "short storage",
            one_tensor(&[4, 8], &[8, 1], 0, 32),
            "truncated",
        ),
        (
            "huge storage",
            one_tensor(&[4], &[1], 0, 1 << 40),
            "safety limit",
        ),
        (
            "huge broadcast",
            one_tensor(&[1 << 17, 1 << 17], &[0, 0], 0, 16),
            "larger than their storage",
        ),
    ];
    for (what, pkl, needle) in cases {
        let msg = pickle_err(&pkl, what);
        assert!(msg.contains(needle), "{what}: {msg}");
    }

    // A huge declared string length does not allocate.
    let mut p = Pickle::new();
    p.op(b'X');
    p.0.extend_from_slice(&u32::MAX.to_le_bytes());
    let msg = pickle_err(&p.finish(), "huge string");
    assert!(msg.contains("longer than the limit"), "{msg}");

    // A module containing itself: recursion is bounded.
    let mut p = Pickle::new();
    p.global("__torch__.m", "M")
        .op(b')')
        .op(0x81)
        .op(b'q')
        .op(0)
        .op(b'}')
        .op(b'(');
    p.str("me").op(b'h').op(0).op(b'u').op(b'b');
    let msg = pickle_err(&p.finish(), "a cycle");
    assert!(msg.contains("nesting depth"), "{msg}");

    // A diamond of shared modules 40 levels deep (2^40 paths) is bounded by the visit limit.
    let mut p = Pickle::new();
    p.module_start("Leaf")
        .str("w")
        .tensor("FloatStorage", "0", 16, 0, &[1], &[1])
        .module_end()
        .op(b'q')
        .op(0);
    for level in 0..40u8 {
        p.module_start("Node");
        p.str("a").op(b'h').op(level).str("b").op(b'h').op(level);
        p.module_end().op(b'q').op(level + 1);
    }
    let msg = pickle_err(&p.finish(), "a diamond");
    assert!(msg.contains("safety limit"), "{msg}");

    // Billion laughs: nested tuples of memo references stay cheap (handles, not copies).
    let mut p = Pickle::new();
    p.str("lol").op(b'q').op(0);
    for level in 0..200u8 {
        p.op(b'(');
        for _ in 0..10 {
            p.op(b'h').op(level);
        }
        p.op(b't').op(b'q').op(level + 1);
    }
    let msg = pickle_err(&p.finish(), "billion laughs");
    assert!(msg.contains("not a TorchScript module"), "{msg}");

    // Too many values on the stack, too many nested marks.
    let mut p = Pickle::new();
    p.0.extend(std::iter::repeat_n(b'N', (1 << 20) + 1));
    let msg = pickle_err(&p.finish(), "a deep stack");
    assert!(msg.contains("stack depth"), "{msg}");
    let mut p = Pickle::new();
    p.0.extend(std::iter::repeat_n(b'(', (1 << 16) + 1));
    let msg = pickle_err(&p.finish(), "deep marks");
    assert!(msg.contains("MARK nesting"), "{msg}");

    // Assorted malformed streams.
    let malformed: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no STOP", vec![0x80, 2, b'N'], "truncated"),
        (
            "pop from empty stack",
            vec![0x80, 2, b'.'],
            "stack underflow",
        ),
        ("missing memo", vec![0x80, 2, b'h', 7, b'.'], "memo entry 7"),
        (
            "missing memo (long)",
            vec![0x80, 2, b'j', 1, 2, 3, 4, b'.'],
            "memo entry",
        ),
        (
            "TUPLE without MARK",
            vec![0x80, 2, b'N', b't', b'.'],
            "no MARK",
        ),
        (
            "pop below MARK",
            vec![0x80, 2, b'N', b'(', 0x85, b'.'],
            "stack underflow",
        ),
        (
            "odd SETITEMS",
            vec![0x80, 2, b'}', b'(', b'N', b'u', b'.'],
            "odd number",
        ),
        (
            "SETITEM on a tuple",
            vec![0x80, 2, b')', b'N', b'N', b's', b'.'],
            "not a dict",
        ),
        (
            "APPEND to a dict",
            vec![0x80, 2, b'}', b'N', b'a', b'.'],
            "not a list",
        ),
        (
            "BUILD on None",
            vec![0x80, 2, b'N', b'}', b'b', b'.'],
            "only TorchScript modules",
        ),
        ("protocol 9", vec![0x80, 9, b'N', b'.'], "protocol 9"),
        (
            "long LONG1",
            vec![0x80, 2, 0x8a, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1, b'.'],
            "64 bits",
        ),
        (
            "bad UTF-8",
            vec![0x80, 2, 0x8c, 2, 0xff, 0xfe, b'.'],
            "UTF-8",
        ),
        (
            "unterminated GLOBAL",
            vec![0x80, 2, b'c', b'o', b's'],
            "truncated",
        ),
        (
            "root is None",
            vec![0x80, 2, b'N', b'.'],
            "not a TorchScript module",
        ),
        (
            "root is a dict",
            vec![0x80, 2, b'}', b'.'],
            "torch.save checkpoint",
        ),
        (
            "persid not a tuple",
            vec![0x80, 2, b'N', b'Q', b'.'],
            "invalid storage id",
        ),
        (
            "FRAME too long",
            vec![0x80, 4, 0x95, 0xff, 0, 0, 0, 0, 0, 0, 0, b'.'],
            "truncated",
        ),
        ("opcode 0xff", vec![0x80, 2, 0xff], "0xff"),
    ];
    for (what, pkl, needle) in malformed {
        let msg = pickle_err(&pkl, what);
        assert!(msg.contains(needle), "{what}: {msg}");
    }

    // A long GLOBAL line.
    let mut p = Pickle::new();
    p.op(b'c');
    p.0.extend(std::iter::repeat_n(b'a', 10_000));
    let msg = pickle_err(&p.finish(), "a long GLOBAL");
    assert!(msg.contains("longer than 4096"), "{msg}");

    // A storage key that tries to leave the data folder, and a duplicate tensor name.
    let mut p = Pickle::new();
    p.module_start("Root")
        .str("w")
        .tensor("FloatStorage", "../../etc/passwd", 1, 0, &[1], &[1]);
    let msg = pickle_err(&p.module_end().finish(), "a path-like key");
    assert!(msg.contains("not a plain file name"), "{msg}");
    let mut p = Pickle::new();
    p.module_start("Root")
        .str("a.b")
        .tensor("FloatStorage", "0", 16, 0, &[1], &[1]);
    p.str("a")
        .module_start("A")
        .str("b")
        .tensor("FloatStorage", "0", 16, 0, &[1], &[1]);
    p.module_end().module_end();
    let msg = pickle_err(&p.finish(), "a duplicate name");
    assert!(msg.contains("two tensors have this name"), "{msg}");
    // One storage key with two dtypes.
    let mut p = Pickle::new();
    p.module_start("Root")
        .str("a")
        .tensor("FloatStorage", "0", 16, 0, &[1], &[1]);
    p.str("b").tensor("IntStorage", "0", 16, 0, &[1], &[1]);
    let msg = pickle_err(&p.module_end().finish(), "a storage with two dtypes");
    assert!(msg.contains("IntStorage"), "{msg}");
}

#[test]
fn big_endian_archives_are_refused() {
    let pkl = Pickle::new().module_start("M").module_end().finish();
    let bytes = build_zip(&[
        ("archive/data.pkl", &pkl),
        ("archive/constants.pkl", b"\x80\x02)."),
        ("archive/byteorder", b"big"),
    ]);
    let msg = expect_err(&bytes, "a big-endian archive");
    assert!(msg.contains("little-endian"), "{msg}");
}

#[test]
fn duplicate_keys_follow_python_dict_semantics() {
    // {'w': t0, 'v': t1, 'w': t2} -> w = t2 at the first position, then v.
    let mut p = Pickle::new();
    p.module_start("Root");
    p.str("w").tensor("FloatStorage", "0", 4, 0, &[1], &[1]);
    p.str("v").tensor("FloatStorage", "0", 4, 1, &[1], &[1]);
    p.str("w").tensor("FloatStorage", "0", 4, 2, &[1], &[1]);
    p.module_end();
    let bytes = ts_zip(
        &p.finish(),
        &[("0", f32_storage(&[10.0, 11.0, 12.0, 13.0]))],
    );
    let tensors = no_panic(&bytes, "duplicate keys").expect("duplicate keys");
    let got: Vec<(&str, Vec<f32>)> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.tensor.to_vec1::<f32>().unwrap()))
        .collect();
    assert_eq!(got, vec![("w", vec![12.0]), ("v", vec![11.0])]);
}

#[test]
fn messages_name_the_file_and_the_problem() {
    let dir = reference_dir();
    let path = dir.join("CV8x8x8-tiny/model.safetensors");
    let err = read_torchscript(&path).expect_err("not an archive");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "`{}` is not a TorchScript archive",
            path.display()
        )),
        "{msg}"
    );
    assert!(
        msg.ends_with("expected a file saved with torch.jit.save"),
        "{msg}"
    );
    let names: HashSet<String> = read(&dir.join("DV8x8x8-tiny/decoder.jit"))
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains("inv_quant.quantizer._levels"));
}
