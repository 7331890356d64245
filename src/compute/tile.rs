//! The pixel lanes of a micro-tile ([`MR`] floats in a cache-line aligned [`Lane16`]), shared by
//! the GEMM driver, the per-ISA micro-kernels and the Winograd transforms.

/// Output pixels per micro-tile: two 8-lane AVX vectors.
pub(crate) const MR: usize = 16;

/// 16 floats on their own cache line, so that the two 8-lane loads of a packed input tile never
/// straddle a line boundary (big allocations come back from malloc only 16-byte aligned).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct Lane16(pub(crate) [f32; MR]);

impl Lane16 {
    pub(crate) const ZERO: Lane16 = Lane16([0.0; MR]);

    /// `self[..src.len()] = src`. A whole tile is a fixed-size copy (one or two vector moves); a
    /// copy of variable length compiles to a call to memcpy, which cost about 4% of a network's
    /// time.
    #[inline(always)]
    pub(crate) fn load_prefix(&mut self, src: &[f32]) {
        match src.first_chunk::<MR>() {
            Some(whole) => self.0 = *whole,
            None => self.0.iter_mut().zip(src).for_each(|(d, &v)| *d = v),
        }
    }

    /// `dst = self[..dst.len()]` (see [`Self::load_prefix`]).
    #[inline(always)]
    pub(crate) fn store_prefix(&self, dst: &mut [f32]) {
        match dst.first_chunk_mut::<MR>() {
            Some(whole) => *whole = self.0,
            None => dst.iter_mut().zip(&self.0).for_each(|(d, &v)| *d = v),
        }
    }
}
