//! PSNR of 8-bit frames and clips.
//!
//! Differences are taken exactly (`u8::abs_diff`, squared in `u32`, summed in `u64`): there is no
//! `u8` wrap-around. TokenBench's first published `metrics_cli.py` (NVlabs/TokenBench commit
//! `1fa61b5`, 2024-12-23; the leaderboard tables in its README predate it and were never changed
//! afterwards) computed `(input0 - input1) ** 2` on the `uint8` arrays `mediapy.read_video`
//! returns, so the square was taken modulo 256 and every difference of 16 or more was counted
//! wrong; commit `404dc6d` (PR #3, merged 2024-12-30) casts to float32 first. We deliberately do
//! not reproduce the wrap-around: our clip PSNR is TokenBench's current formula evaluated exactly
//! (in f64 rather than float32; the two agree to a few 1e-6 dB).
//!
//! Infinity: identical frames have `mse == 0` and a per-frame PSNR of `f64::INFINITY`. It is kept
//! as such in memory (it sorts and compares correctly, and `min` over frames stays meaningful).
//! For output, [`psnr_json`] maps it to `None`/`null` and [`psnr_capped`] to [`PSNR_CAP_DB`];
//! [`inf_as_null`] and [`vec_inf_as_null`] are serde helpers that write `null` and read it back as
//! `+∞`. TokenBench's clip PSNR ([`tokenbench_psnr_from_mse`]) is always finite because of its
//! epsilon.

use rayon::prelude::*;

use super::MetricsError;

/// Peak value of 8-bit samples.
pub const PEAK: f64 = 255.0;

/// TokenBench's epsilon: `np.finfo(np.float32).eps`, added to `sqrt(mse)`.
pub const TOKENBENCH_EPS: f64 = f32::EPSILON as f64;

/// What [`psnr_capped`] shows for identical frames (a common display convention).
pub const PSNR_CAP_DB: f64 = 100.0;

/// Samples per parallel task when summing squared errors.
const PAR_CHUNK: usize = 1 << 18;
/// Samples per `u32` partial sum: 66 051 · 255² still fits a `u32`.
const U32_BLOCK: usize = 4096;

fn check_pair(a: &[u8], b: &[u8]) -> Result<(), MetricsError> {
    if a.is_empty() || b.is_empty() {
        return Err(MetricsError::Empty);
    }
    if a.len() != b.len() {
        return Err(MetricsError::SizeMismatch {
            left: a.len(),
            right: b.len(),
        });
    }
    Ok(())
}

fn sse_serial(a: &[u8], b: &[u8]) -> u64 {
    a.chunks(U32_BLOCK)
        .zip(b.chunks(U32_BLOCK))
        .map(|(ca, cb)| {
            let block: u32 = ca
                .iter()
                .zip(cb)
                .map(|(&x, &y)| {
                    let d = u32::from(x.abs_diff(y));
                    d * d
                })
                .sum();
            u64::from(block)
        })
        .sum()
}

/// Exact sum of squared differences of two equally long byte buffers (any layout).
pub fn sse(a: &[u8], b: &[u8]) -> Result<u64, MetricsError> {
    check_pair(a, b)?;
    if a.len() <= PAR_CHUNK {
        return Ok(sse_serial(a, b));
    }
    Ok(a.par_chunks(PAR_CHUNK)
        .zip(b.par_chunks(PAR_CHUNK))
        .map(|(ca, cb)| sse_serial(ca, cb))
        .sum())
}

/// Mean squared error over all samples (pixels × channels, and frames for a clip buffer).
pub fn mse(a: &[u8], b: &[u8]) -> Result<f64, MetricsError> {
    Ok(sse(a, b)? as f64 / a.len() as f64)
}

/// `10·log10(255² / mse)`; `f64::INFINITY` when `mse == 0`.
pub fn psnr_from_mse(mse: f64) -> f64 {
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (PEAK * PEAK / mse).log10()
    }
}

/// TokenBench's formula: `20·log10(255 / (sqrt(mse) + f32::EPSILON))`, finite for `mse == 0`
/// (≈186.60 dB).
pub fn tokenbench_psnr_from_mse(mse: f64) -> f64 {
    20.0 * (PEAK / (mse.sqrt() + TOKENBENCH_EPS)).log10()
}

/// PSNR of one frame (or any two equally long 8-bit buffers); `+∞` if they are identical.
pub fn psnr(a: &[u8], b: &[u8]) -> Result<f64, MetricsError> {
    mse(a, b).map(psnr_from_mse)
}

/// TokenBench's clip PSNR of two frame-major clips: one MSE over every sample of every frame,
/// then [`tokenbench_psnr_from_mse`]. Not the mean of per-frame PSNRs, which is higher whenever
/// the frames differ in quality.
pub fn clip_psnr(a: &[u8], b: &[u8]) -> Result<f64, MetricsError> {
    mse(a, b).map(tokenbench_psnr_from_mse)
}

/// Mean of per-frame PSNR values (`+∞` if any is infinite); `None` for no values.
pub fn mean_psnr(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// `Some(v)` for a finite PSNR, `None` (JSON `null`) for `+∞` (identical frames).
pub fn psnr_json(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// PSNR clamped to at most [`PSNR_CAP_DB`] for display and for formats without infinity (CSV,
/// plots). Note that a real, finite PSNR can exceed the cap (one sample off by 1 in a 1080p frame
/// is ≈116 dB), so capped values compare only up to the cap.
pub fn psnr_capped(v: f64) -> f64 {
    if v.is_nan() {
        v
    } else {
        v.min(PSNR_CAP_DB)
    }
}

/// serde `with` helper for one PSNR: `+∞` (and any non-finite value) is written as `null`, and
/// `null` is read back as `+∞`. (Plain serde_json also writes `null` but then fails to read it
/// back into an `f64`.)
pub mod inf_as_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        super::psnr_json(*v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

/// serde `with` helper for a list of PSNR values, element-wise as [`inf_as_null`].
pub mod vec_inf_as_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|&x| super::psnr_json(x))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?
            .into_iter()
            .map(|x| x.unwrap_or(f64::INFINITY))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let a = [10u8, 20, 30, 40];
        let b = [11u8, 18, 30, 40]; // squared errors 1 + 4
        assert_eq!(sse(&a, &b).unwrap(), 5);
        assert_eq!(mse(&a, &b).unwrap(), 1.25);
        let want = 10.0 * (65025.0f64 / 1.25).log10();
        assert_eq!(psnr(&a, &b).unwrap(), want);
        assert_eq!(psnr(&a, &a).unwrap(), f64::INFINITY);
    }

    #[test]
    fn no_wraparound() {
        // 0 - 255 wraps to 1 in u8; squared mod 256 it would be 1. It must count as 255².
        let a = [0u8, 255, 3];
        let b = [255u8, 0, 3];
        assert_eq!(sse(&a, &b).unwrap(), 2 * 65025);
        let full = vec![0u8; 10];
        let other = vec![255u8; 10];
        assert_eq!(psnr(&full, &other).unwrap(), 0.0);
        assert_eq!(psnr(&other, &full).unwrap(), 0.0);
    }

    #[test]
    fn parallel_sum_matches_serial() {
        let n = 3 * PAR_CHUNK + 12345;
        let a: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let b: Vec<u8> = (0..n).map(|i| (i * 13 % 256) as u8).collect();
        let naive: u64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| {
                let d = i64::from(x) - i64::from(y);
                (d * d) as u64
            })
            .sum();
        assert_eq!(sse(&a, &b).unwrap(), naive);
    }

    #[test]
    fn tokenbench_formula() {
        let got = tokenbench_psnr_from_mse(0.0);
        assert!((got - 20.0 * (255.0 / f64::from(f32::EPSILON)).log10()).abs() < 1e-12);
        assert!(got.is_finite() && got > 186.0 && got < 187.0);
        let m = 12.5;
        let classic = psnr_from_mse(m);
        let tb = tokenbench_psnr_from_mse(m);
        assert!(classic > tb && classic - tb < 1e-6);
    }

    #[test]
    fn errors() {
        assert_eq!(sse(&[], &[]), Err(MetricsError::Empty));
        assert_eq!(
            psnr(&[1, 2], &[1]),
            Err(MetricsError::SizeMismatch { left: 2, right: 1 })
        );
    }

    #[test]
    fn json_helpers() {
        assert_eq!(psnr_json(f64::INFINITY), None);
        assert_eq!(psnr_json(31.5), Some(31.5));
        assert_eq!(psnr_capped(f64::INFINITY), PSNR_CAP_DB);
        assert_eq!(psnr_capped(31.5), 31.5);
        assert_eq!(mean_psnr(&[]), None);
        assert_eq!(mean_psnr(&[30.0, f64::INFINITY]), Some(f64::INFINITY));

        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Row {
            #[serde(with = "inf_as_null")]
            p: f64,
            #[serde(with = "vec_inf_as_null")]
            v: Vec<f64>,
        }
        let row = Row {
            p: f64::INFINITY,
            v: vec![30.25, f64::INFINITY],
        };
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(json, r#"{"p":null,"v":[30.25,null]}"#);
        assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), row);
    }
}
