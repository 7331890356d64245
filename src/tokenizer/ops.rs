//! Convolution entry points used by the layers. CPU float32 inference goes through the tuned
//! kernels; everything else (CUDA, half precision, autograd for training) through candle's ops.

use candle_core::Tensor;

type Result<T> = candle_core::Result<T>;

/// NCHW 2-D convolution with symmetric zero padding.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let y = x.conv2d(weight, padding, stride, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

/// Linear map over channels: x (N, I, S), weight (O, I) → (N, O, S).
pub fn pointwise(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = weight.broadcast_matmul(x)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1))?),
        None => Ok(y),
    }
}
