//! Shared helpers for the integration tests: where the reference fixtures live and how to compare.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

pub mod fake_hub;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// `../shared/reference` next to the repository (read-only fixtures made with NVIDIA's code), or
/// `$TOKENSCOPE_REFERENCE_DIR` (the CUDA kit carries a subset of it, away from the repository).
pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("TOKENSCOPE_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"));
    assert!(
        dir.is_dir(),
        "reference fixtures not found at {} (CI lays shared/ next to the clone)",
        dir.display()
    );
    dir
}

pub fn model_dir(name: &str) -> PathBuf {
    reference_dir().join(name)
}

pub fn load_io(path: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Largest violation of `|got − want| <= atol + rtol·|want|`, as (max abs error, worst ratio).
pub fn compare(got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> (f64, f64) {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let g = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let w = want
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let mut max_abs: f64 = 0.0;
    let mut worst: f64 = 0.0;
    for (a, b) in g.iter().zip(&w) {
        let err = (a - b).abs();
        max_abs = max_abs.max(err);
        worst = worst.max(err / (atol + rtol * b.abs()));
    }
    (max_abs, worst)
}

/// Asserts the reference README's rule `|got − want| <= 1e-4 + 1e-4·|want|` elementwise.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    let (max_abs, worst) = compare(got, want, 1e-4, 1e-4);
    assert!(
        worst <= 1.0,
        "{what}: max abs error {max_abs:.3e} exceeds 1e-4 + 1e-4·|ref| (ratio {worst:.2})"
    );
    max_abs
}

pub fn assert_exact_i64(what: &str, got: &Tensor, want: &Tensor) {
    let g = got
        .to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    let w = want
        .to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let differing = g.iter().zip(&w).filter(|(a, b)| a != b).count();
    assert_eq!(
        differing,
        0,
        "{what}: {differing} of {} values differ",
        w.len()
    );
}

/// Deterministic uniform values in [-1, 1) (xorshift), for synthetic inputs and weights.
pub fn uniform_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
