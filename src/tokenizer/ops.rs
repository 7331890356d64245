//! Fused normalisation for the layers: CPU float32 inference gets a one-pass kernel; other
//! devices, dtypes and autograd (training) use candle's ops.

use candle_core::Tensor;

type Result<T> = candle_core::Result<T>;

/// `swish(group_norm(x))` (or just the norm) over (N, C, ...) tensors, eps inside the square root,
/// biased variance. CPU float32 inference runs one fused pass for the statistics and one for the
/// output; other devices, dtypes and autograd use candle's ops.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    then_swish: bool,
) -> Result<Tensor> {
    let fast = x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && weight.dtype() == candle_core::DType::F32
        && !x.track_op()
        && !weight.track_op()
        && !bias.track_op();
    if fast {
        return group_norm_cpu(x, groups, weight, bias, eps, then_swish);
    }
    let dims = x.dims().to_vec();
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    let dtype = x.dtype();
    let inner = if matches!(dtype, candle_core::DType::BF16 | candle_core::DType::F16) {
        candle_core::DType::F32
    } else {
        dtype
    };
    let grouped = x.reshape((n, groups, ()))?.to_dtype(inner)?;
    let mean = grouped.mean_keepdim(2)?;
    let centered = grouped.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(2)?;
    let normed = centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .to_dtype(dtype)?
        .reshape(dims.as_slice())?;
    let mut affine_shape = vec![1usize; dims.len()];
    if let Some(slot) = affine_shape.get_mut(1) {
        *slot = c;
    }
    let y = normed
        .broadcast_mul(&weight.reshape(affine_shape.as_slice())?)?
        .broadcast_add(&bias.reshape(affine_shape.as_slice())?)?;
    if then_swish {
        candle_nn::ops::silu(&y)
    } else {
        Ok(y)
    }
}

fn group_norm_cpu(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    then_swish: bool,
) -> Result<Tensor> {
    use rayon::prelude::*;
    let dims = x.dims().to_vec();
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("group_norm: {groups} groups do not divide {c} channels");
    }
    let spatial: usize = dims.iter().skip(2).product();
    let per_group = c / groups * spatial;
    let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let gamma = weight.to_vec1::<f32>()?;
    let beta = bias.to_vec1::<f32>()?;
    let mut output = vec![0f32; input.len()];
    let channels_per_group = c / groups;
    output
        .par_chunks_mut(per_group.max(1))
        .zip(input.par_chunks(per_group.max(1)))
        .enumerate()
        .for_each(|(block, (out, inp))| {
            let len = inp.len().max(1) as f64;
            let mean = inp.iter().map(|&v| f64::from(v)).sum::<f64>() / len;
            let var = inp
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / len;
            let rstd = 1.0 / (var + eps).sqrt();
            let group = block % groups;
            for (k, (o_ch, i_ch)) in out
                .chunks_mut(spatial.max(1))
                .zip(inp.chunks(spatial.max(1)))
                .enumerate()
            {
                let channel = group * channels_per_group + k;
                let g = f64::from(gamma.get(channel).copied().unwrap_or(1.0));
                let b = f64::from(beta.get(channel).copied().unwrap_or(0.0));
                let scale = (g * rstd) as f32;
                let shift = (b - mean * g * rstd) as f32;
                if then_swish {
                    for (o, &v) in o_ch.iter_mut().zip(i_ch) {
                        let y = v * scale + shift;
                        *o = y / (1.0 + (-y).exp());
                    }
                } else {
                    for (o, &v) in o_ch.iter_mut().zip(i_ch) {
                        *o = v * scale + shift;
                    }
                }
            }
        });
    let _ = n;
    Tensor::from_vec(output, dims, x.device())
}
