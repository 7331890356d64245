//! Colour scales and the per-pixel difference, shared by the GPU shader (as a LUT texture) and the
//! CPU paths (pixel inspector, legend, PNG export), so what is exported is what is shown.

use super::state::{Colormap, DiffMetric};

/// Entries per colormap in the LUT.
pub const LUT_SIZE: usize = 256;

/// Turbo (Google's polynomial approximation), t in [0, 1].
#[allow(clippy::excessive_precision)]
fn turbo(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let (t2, t3, t4, t5) = (t * t, t * t * t, t * t * t * t, t * t * t * t * t);
    let r = 0.13572138 + 4.6153926 * t - 42.660_32 * t2 + 132.131_08 * t3 - 152.942_4 * t4
        + 59.286_38 * t5;
    let g = 0.09140261 + 2.194_188_4 * t + 4.842_966_6 * t2 - 14.185_033 * t3
        + 4.277_299_4 * t4
        + 2.829_566 * t5;
    let b = 0.1066733 + 12.641_946 * t - 60.582_05 * t2 + 110.362_77 * t3 - 89.903_11 * t4
        + 27.348_25 * t5;
    [r, g, b]
}

/// Inferno (polynomial fit by Matt Zucker, public domain), t in [0, 1].
#[allow(clippy::excessive_precision)] // the published coefficients, as published
fn inferno(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let c0 = [0.000_218_94, 0.001_651_004, -0.019_480_898];
    let c1 = [0.106_513_42, 0.563_956_4, 3.932_712_4];
    let c2 = [11.602_493, -3.972_854, -15.942_394];
    let c3 = [-41.703_996, 17.436_398, 44.354_145];
    let c4 = [77.162_935, -33.402_36, -81.807_31];
    let c5 = [-71.319_43, 32.626_064, 73.209_52];
    let c6 = [25.131_126, -12.242_669, -23.070_326];
    // Horner's rule, one colour channel at a time.
    std::array::from_fn(|i| {
        c0[i] + t * (c1[i] + t * (c2[i] + t * (c3[i] + t * (c4[i] + t * (c5[i] + t * c6[i])))))
    })
}

/// The colour of `t` in [0, 1] on a scale, as 8-bit RGB.
pub fn color_at(map: Colormap, t: f32) -> [u8; 3] {
    let rgb = match map {
        Colormap::Turbo => turbo(t),
        Colormap::Inferno => inferno(t),
        Colormap::Grey => {
            let v = t.clamp(0.0, 1.0);
            [v, v, v]
        }
    };
    rgb.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8)
}

/// The LUT texture: one row of [`LUT_SIZE`] RGBA texels per colormap, in [`Colormap::row`] order.
pub fn lut_rgba() -> Vec<u8> {
    let mut out = Vec::with_capacity(Colormap::ALL.len() * LUT_SIZE * 4);
    for map in Colormap::ALL {
        for i in 0..LUT_SIZE {
            let [r, g, b] = color_at(map, i as f32 / (LUT_SIZE - 1) as f32);
            out.extend_from_slice(&[r, g, b, 255]);
        }
    }
    out
}

/// BT.601 luma of an 8-bit RGB pixel, in [0, 1].
fn luma(p: [u8; 3]) -> f32 {
    let [r, g, b] = p.map(|c| f32::from(c) / 255.0);
    0.299 * r + 0.587 * g + 0.114 * b
}

/// The difference of two pixels in [0, 1] before the gain (same formula as `compare.wgsl`).
pub fn diff_value(a: [u8; 3], b: [u8; 3], metric: DiffMetric) -> f32 {
    let d = a
        .iter()
        .zip(b.iter())
        .map(|(&x, &y)| (f32::from(x) - f32::from(y)) / 255.0);
    match metric {
        DiffMetric::Absolute => d.map(f32::abs).sum::<f32>() / 3.0,
        DiffMetric::Squared => d.map(|v| v * v).sum::<f32>() / 3.0,
        DiffMetric::Luma => (luma(a) - luma(b)).abs(),
        DiffMetric::Red => d.take(1).map(f32::abs).sum::<f32>(),
        DiffMetric::Green => d.skip(1).take(1).map(f32::abs).sum::<f32>(),
        DiffMetric::Blue => d.skip(2).take(1).map(f32::abs).sum::<f32>(),
    }
}

/// The heatmap colour of a pixel pair.
pub fn diff_color(a: [u8; 3], b: [u8; 3], metric: DiffMetric, gain: f32, map: Colormap) -> [u8; 3] {
    color_at(map, diff_value(a, b, metric) * gain)
}

/// A categorical colour for a discrete token index: neighbouring indices get unrelated hues.
pub fn categorical(index: i64) -> [u8; 3] {
    // A multiplicative hash spreads the 64,000 indices over the hue circle.
    let h = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    let hue = (h % 360) as f32;
    let sat = 0.55 + ((h >> 9) % 40) as f32 / 100.0;
    let val = 0.75 + ((h >> 15) % 25) as f32 / 100.0;
    hsv(hue, sat, val)
}

fn hsv(hue: f32, s: f32, v: f32) -> [u8; 3] {
    let c = v * s;
    let x = c * (1.0 - ((hue / 60.0) % 2.0 - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match (hue / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    [r, g, b].map(|u| ((u + m) * 255.0).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colormaps_span_dark_to_bright() {
        for map in Colormap::ALL {
            let lo: u32 = color_at(map, 0.0).iter().map(|&c| u32::from(c)).sum();
            let hi: u32 = color_at(map, 0.75).iter().map(|&c| u32::from(c)).sum();
            assert!(lo < hi, "{map:?}");
        }
        assert_eq!(lut_rgba().len(), 3 * LUT_SIZE * 4);
    }

    #[test]
    fn differences_match_their_definitions() {
        let a = [255, 0, 0];
        let b = [0, 0, 0];
        assert!((diff_value(a, b, DiffMetric::Absolute) - 1.0 / 3.0).abs() < 1e-6);
        assert!((diff_value(a, b, DiffMetric::Squared) - 1.0 / 3.0).abs() < 1e-6);
        assert!((diff_value(a, b, DiffMetric::Luma) - 0.299).abs() < 1e-6);
        let (c, e) = ([10u8, 20, 30], [10u8, 71, 30]);
        assert_eq!(diff_value(c, e, DiffMetric::Red), 0.0);
        assert!((diff_value(c, e, DiffMetric::Green) - 0.2).abs() < 1e-6);
        assert_eq!(diff_value(c, e, DiffMetric::Blue), 0.0);
        assert_eq!(diff_value(a, a, DiffMetric::Absolute), 0.0);
        assert_ne!(categorical(1), categorical(2));
    }
}
