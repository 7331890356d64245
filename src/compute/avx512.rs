//! The x86-64 AVX-512F micro-kernel (driven by `implicit_gemm.rs`); its caller checks at run time
//! that the CPU has the feature.
use super::tile::{Lane16, MR};
use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps,
};

/// Output channels per tile. Two tiles (32 pixels) are computed together: 24 of the 32 zmm
/// registers hold the accumulators, each broadcast weight feeds two FMAs and each `k`
/// costs 2 vector loads + 12 broadcasts for 24 FMAs (the FMA ports, not the load ports, set
/// the pace), and a channel tile's packed weights for a 512-deep chunk (24 KiB) stay in L1.
pub const NR: usize = 12;

#[target_feature(enable = "avx512f")]
#[inline]
fn load(v: &Lane16) -> __m512 {
    const { assert!(MR == 16) };
    // SAFETY: `v` refers to 16 initialised floats; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(v.0.as_ptr()) }
}

#[target_feature(enable = "avx512f")]
#[inline]
fn store(v: &mut Lane16, x: __m512) {
    const { assert!(MR == 16) };
    // SAFETY: `v` is an exclusive reference to 16 floats; `storeu` has no alignment
    // requirement.
    unsafe { _mm512_storeu_ps(v.0.as_mut_ptr(), x) }
}

// One named variable per accumulator: with an array LLVM keeps spilling some of them to the
// stack inside the loop.
macro_rules! channels {
    ($m:ident) => {
        $m!(
            (r0, c0, d0, w0),
            (r1, c1, d1, w1),
            (r2, c2, d2, w2),
            (r3, c3, d3, w3),
            (r4, c4, d4, w4),
            (r5, c5, d5, w5),
            (r6, c6, d6, w6),
            (r7, c7, d7, w7),
            (r8, c8, d8, w8),
            (r9, c9, d9, w9),
            (r10, c10, d10, w10),
            (r11, c11, d11, w11)
        )
    };
}

/// `acc[j][i] += sum_k b[k][j] * a[k][i]`: one 12 x 16 tile (an odd tile at a block's end).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn kernel(a: &[Lane16], b: &[[f32; NR]], acc: &mut [Lane16; NR]) {
    macro_rules! tile {
        ($(($r:ident, $c:ident, $d:ident, $w:ident)),+) => {{
            let [$($r),+] = acc;
            $(let mut $c = load($r);)+
            for (av, bv) in a.iter().zip(b) {
                let x = load(av);
                let [$($w),+] = *bv;
                $($c = _mm512_fmadd_ps(_mm512_set1_ps($w), x, $c);)+
            }
            $(store($r, $c);)+
        }};
    }
    channels!(tile);
}

/// [`kernel`] on two tiles that share the weights: `acc0 += b·a0`, `acc1 += b·a1`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn kernel_pair(
    a0: &[Lane16],
    a1: &[Lane16],
    b: &[[f32; NR]],
    acc0: &mut [Lane16; NR],
    acc1: &mut [Lane16; NR],
) {
    macro_rules! tiles {
        ($(($r:ident, $c:ident, $d:ident, $w:ident)),+) => {{
            {
                let [$($r),+] = &*acc0;
                $(let mut $c = load($r);)+
                let [$($r),+] = &*acc1;
                $(let mut $d = load($r);)+
                for ((x0, x1), bv) in a0.iter().zip(a1).zip(b) {
                    let (x0, x1) = (load(x0), load(x1));
                    let [$($w),+] = *bv;
                    $(
                        let w = _mm512_set1_ps($w);
                        $c = _mm512_fmadd_ps(w, x0, $c);
                        $d = _mm512_fmadd_ps(w, x1, $d);
                    )+
                }
                let [$($r),+] = acc0;
                $(store($r, $c);)+
                let [$($r),+] = acc1;
                $(store($r, $d);)+
            }
        }};
    }
    channels!(tiles);
}
