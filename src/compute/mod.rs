//! The CPU compute backend: fast f32 ops for candle tensors, independent of any model.
//!
//! Each op computes what candle's own ops compute. CPU f32 tensors run hand-written kernels;
//! other devices and dtypes go through candle's ops, so results and gradients stay correct
//! everywhere. Knows candle only: nothing here depends on the tokenizer networks.

mod attention;
mod implicit_gemm;
mod norm;
mod scratch;
mod winograd;

pub use attention::{
    attention_channels_first, attention_cpu, attention_materialised, attention_ops, softmax_last,
};
pub use implicit_gemm::{
    causal_temporal_conv, conv2d, conv2d_using, conv3x3_using, pointwise, Conv3x3, CpuKernel,
};
pub use norm::group_norm;
pub use scratch::release_pool as release_scratch_pool;
