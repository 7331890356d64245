//! The CPU compute backend: fast f32 ops for candle tensors, independent of any model.
//!
//! Each op computes what candle's own ops compute. CPU f32 tensors run hand-written kernels
//! (inside an autograd graph, custom ops with their own backward pass for the convolution and the
//! norm); other devices and dtypes go through candle's ops, so results and gradients stay correct
//! everywhere. Knows candle only: nothing here depends on the tokenizer networks.
//!
//! One file per job, imports pointing down only (no cycles):
//!
//! - `conv.rs`: the convolution entry points ([`conv2d`], [`pointwise`],
//!   [`causal_temporal_conv`]) and the choice between direct and Winograd ([`Conv3x3`]);
//! - `backward.rs`: the training path's convolution, a custom op with input and weight gradients;
//! - `winograd.rs`: Winograd F(2x2, 3x3) and F(4x4, 3x3) over the GEMM engine;
//! - `implicit_gemm.rs`: the implicit-GEMM engine on f32 slices (packing, work partitioning,
//!   [`CpuKernel`] dispatch) over the micro-kernels in `avx512.rs`, `avx2.rs`, `portable.rs`;
//! - `tile.rs`: the micro-tile's pixel lanes; `scratch.rs`: the pool of reusable buffers;
//! - `norm.rs`: fused GroupNorm (+ SiLU) and the vectorisable `exp`; `attention.rs`: exact
//!   single-head attention in bounded memory (`attention_avx512.rs`: its products on the
//!   AVX-512 micro-kernel);
//! - `haar.rs`: one Haar wavelet level (2-D or 3-D, analysis or synthesis) in a single pass;
//! - `storage.rs`: which tensors take the fast path, and their f32 values read in place.

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod backward;
mod conv;
pub mod haar;
mod implicit_gemm;
mod norm;
mod portable;
mod scratch;
mod storage;
mod tile;
mod winograd;

pub use attention::{
    attention_channels_first, attention_cpu, attention_cpu_with, attention_materialised,
    attention_ops, softmax_last, CPU_KEY_BLOCK, CPU_QUERY_BLOCK,
};
pub use conv::{causal_temporal_conv, conv2d, conv2d_using, conv3x3_using, pointwise, Conv3x3};
pub use implicit_gemm::CpuKernel;
pub use norm::group_norm;
pub use scratch::release_pool as release_scratch_pool;
