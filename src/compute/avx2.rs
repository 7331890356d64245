//! The x86-64 AVX2 + FMA micro-kernel (driven by `implicit_gemm.rs`); its caller checks at run time
//! that the CPU has these features.
use super::tile::{Lane16, MR};
use std::arch::x86_64::{
    __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_storeu_ps,
};

/// Output channels per tile: 6 x 2 = 12 of the 16 ymm registers hold the accumulators.
pub const NR: usize = 6;

/// Loads lanes `8*H .. 8*H + 8` of a 16-float tile.
#[target_feature(enable = "avx")]
#[inline]
fn load<const H: usize>(v: &Lane16) -> __m256 {
    const { assert!(H < 2 && MR == 16) };
    // SAFETY: `v` refers to 16 initialised floats and H <= 1, so the 8 floats read from
    // offset 8*H are in bounds; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(v.0.as_ptr().wrapping_add(8 * H)) }
}

/// Stores into lanes `8*H .. 8*H + 8` of a 16-float tile.
#[target_feature(enable = "avx")]
#[inline]
fn store<const H: usize>(v: &mut Lane16, x: __m256) {
    const { assert!(H < 2 && MR == 16) };
    // SAFETY: `v` is an exclusive reference to 16 floats and H <= 1, so the 8 floats
    // written from offset 8*H are in bounds; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(v.0.as_mut_ptr().wrapping_add(8 * H), x) }
}

/// `acc[j][i] += sum_k b[k][j] * a[k][i]`, the 6 x 16 accumulator tile in 12 registers.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) fn kernel(a: &[Lane16], b: &[[f32; NR]], acc: &mut [Lane16; NR]) {
    // One named variable per accumulator half (see the AVX-512 kernel).
    macro_rules! tile {
        ($(($r:ident, $lo:ident, $hi:ident, $w:ident)),+) => {{
            let [$($r),+] = acc;
            $(let (mut $lo, mut $hi) = (load::<0>($r), load::<1>($r));)+
            for (av, bv) in a.iter().zip(b) {
                let (x0, x1) = (load::<0>(av), load::<1>(av));
                let [$($w),+] = *bv;
                $(
                    let w = _mm256_set1_ps($w);
                    $lo = _mm256_fmadd_ps(w, x0, $lo);
                    $hi = _mm256_fmadd_ps(w, x1, $hi);
                )+
            }
            $(store::<0>($r, $lo); store::<1>($r, $hi);)+
        }};
    }
    tile!(
        (r0, c0, d0, w0),
        (r1, c1, d1, w1),
        (r2, c2, d2, w2),
        (r3, c3, d3, w3),
        (r4, c4, d4, w4),
        (r5, c5, d5, w5)
    );
}
