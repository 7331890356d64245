//! The portable micro-kernel, plain Rust for any CPU (driven by `implicit_gemm.rs`).
use super::tile::Lane16;

/// Output channels per tile of the portable micro-kernel.
pub(super) const PORTABLE_NR: usize = 6;

/// Portable micro-kernel, used where AVX2/FMA is unavailable: same contract as `avx2::kernel`.
#[inline(always)]
pub(super) fn kernel_portable<const FMA: bool, const NR: usize>(
    a: &[Lane16],
    b: &[[f32; NR]],
    acc: &mut [Lane16; NR],
) {
    for (av, bv) in a.iter().zip(b) {
        for (accr, &wv) in acc.iter_mut().zip(bv) {
            for (e, &xv) in accr.0.iter_mut().zip(av.0.iter()) {
                *e = if FMA {
                    wv.mul_add(xv, *e)
                } else {
                    *e + wv * xv
                };
            }
        }
    }
}
