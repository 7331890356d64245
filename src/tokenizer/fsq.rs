//! Finite scalar quantisation with levels [8, 8, 8, 5, 5, 5]: 64,000 implicit codes.
//!
//! Matches the official quantizer bit for bit: the bound/round/index arithmetic runs in float32,
//! rounding is half-to-even, channel 0 is the least significant digit, indices are 0..63999.

use candle_core::{DType, Device, Tensor};

use super::config::FSQ_LEVELS;
use super::{Result, TokenizerError};

/// Number of FSQ dimensions (code channels).
pub const FSQ_DIMS: usize = FSQ_LEVELS.len();
/// Size of the implicit codebook.
pub const CODEBOOK_SIZE: usize = 8 * 8 * 8 * 5 * 5 * 5;
/// Mixed-radix place values of the digits.
pub const BASIS: [i64; FSQ_DIMS] = [1, 8, 64, 512, 2560, 12800];

struct Constants {
    half_l: [f32; FSQ_DIMS],
    offset: [f32; FSQ_DIMS],
    shift: [f32; FSQ_DIMS],
    half_width: [f32; FSQ_DIMS],
}

fn constants() -> Constants {
    let mut c = Constants {
        half_l: [0.0; FSQ_DIMS],
        offset: [0.0; FSQ_DIMS],
        shift: [0.0; FSQ_DIMS],
        half_width: [0.0; FSQ_DIMS],
    };
    for (d, &levels) in FSQ_LEVELS.iter().enumerate() {
        // float32 as in PyTorch: (L - 1) * (1 + 1e-3) / 2.
        let half_l = (levels as f32 - 1.0) * (1.0 + 1e-3) / 2.0;
        let offset = if levels % 2 == 0 { 0.5f32 } else { 0.0 };
        if let (Some(h), Some(o), Some(s), Some(w)) = (
            c.half_l.get_mut(d),
            c.offset.get_mut(d),
            c.shift.get_mut(d),
            c.half_width.get_mut(d),
        ) {
            *h = half_l;
            *o = offset;
            *s = (offset / half_l).atanh();
            *w = (levels / 2) as f32;
        }
    }
    c
}

/// Digits (each in 0..L) of a codebook index.
pub fn digits_from_index(index: i64) -> [i64; FSQ_DIMS] {
    let mut digits = [0i64; FSQ_DIMS];
    for ((digit, basis), levels) in digits.iter_mut().zip(BASIS).zip(FSQ_LEVELS) {
        *digit = (index / basis) % levels as i64;
    }
    digits
}

/// Code values (each in [-1, 1]) of a codebook index.
pub fn code_from_index(index: i64) -> [f32; FSQ_DIMS] {
    let mut code = [0f32; FSQ_DIMS];
    for ((value, digit), levels) in code
        .iter_mut()
        .zip(digits_from_index(index))
        .zip(FSQ_LEVELS)
    {
        let half = (levels / 2) as i64;
        *value = (digit - half) as f32 / half as f32;
    }
    code
}

/// Codebook index of a code vector (values must be on the FSQ grid).
pub fn index_from_code(code: &[f32; FSQ_DIMS]) -> i64 {
    code.iter()
        .zip(FSQ_LEVELS)
        .zip(BASIS)
        .map(|((&value, levels), basis)| {
            let half = (levels / 2) as f32;
            (value * half + half).round() as i64 * basis
        })
        .sum()
}

/// Quantises channel-first FSQ inputs (B, 6, ...) into `(indices (B, ...) i64, codes (B, 6, ...))`.
/// Codes come back in `pre_quant`'s dtype on its device.
pub fn quantize(pre_quant: &Tensor) -> Result<(Tensor, Tensor)> {
    let dims = pre_quant.dims().to_vec();
    let (batch, channels) = match dims.as_slice() {
        [b, c, ..] => (*b, *c),
        _ => (0, 0),
    };
    if channels != FSQ_DIMS || dims.len() < 3 {
        return Err(TokenizerError::InvalidInput(format!(
            "FSQ expects (B, {FSQ_DIMS}, ...) inputs, got {dims:?}"
        )));
    }
    let positions: usize = dims.iter().skip(2).product();
    let values = pre_quant
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let c = constants();
    let mut indices = vec![0i64; batch * positions];
    let mut codes = vec![0f32; batch * FSQ_DIMS * positions];
    let per_batch = FSQ_DIMS * positions;
    for ((src_b, dst_b), index_row) in values
        .chunks_exact(per_batch)
        .zip(codes.chunks_exact_mut(per_batch))
        .zip(indices.chunks_exact_mut(positions))
    {
        let dims_of_batch = src_b
            .chunks_exact(positions)
            .zip(dst_b.chunks_exact_mut(positions));
        // Exactly FSQ_DIMS rows per batch item, so `d` indexes the constants in range.
        for (d, (src, dst)) in dims_of_batch.enumerate() {
            let (h, o, s, w) = (c.half_l[d], c.offset[d], c.shift[d], c.half_width[d]);
            let basis = BASIS[d];
            for ((&z, code), index) in src.iter().zip(dst.iter_mut()).zip(index_row.iter_mut()) {
                let bounded = (z + s).tanh() * h - o;
                let q = bounded.round_ties_even();
                *code = q / w;
                *index += (q + w) as i64 * basis;
            }
        }
    }
    let mut index_dims = vec![batch];
    index_dims.extend(dims.iter().skip(2));
    let device = pre_quant.device();
    let indices = Tensor::from_vec(indices, index_dims, device)?;
    let codes = Tensor::from_vec(codes, dims, device)?.to_dtype(pre_quant.dtype())?;
    Ok((indices, codes))
}

/// Differentiable FSQ for training: the forward pass gives the same codes as [`quantize`] (up to
/// ties, which round away from zero here), the backward pass treats rounding as the identity (the
/// straight-through estimator) so gradients reach the encoder through the `tanh` bound.
pub fn quantize_straight_through(pre_quant: &Tensor) -> candle_core::Result<Tensor> {
    let rank = pre_quant.rank();
    if rank < 3 || pre_quant.dim(1)? != FSQ_DIMS {
        candle_core::bail!(
            "FSQ expects (B, {FSQ_DIMS}, ...) inputs, got {:?}",
            pre_quant.dims()
        );
    }
    let c = constants();
    let mut shape = vec![1usize; rank];
    if let Some(channels) = shape.get_mut(1) {
        *channels = FSQ_DIMS;
    }
    let column = |values: [f32; FSQ_DIMS]| {
        Tensor::from_vec(values.to_vec(), shape.as_slice(), pre_quant.device())?
            .to_dtype(pre_quant.dtype())
    };
    let bounded = pre_quant
        .broadcast_add(&column(c.shift)?)?
        .tanh()?
        .broadcast_mul(&column(c.half_l)?)?
        .broadcast_sub(&column(c.offset)?)?;
    let rounding = (bounded.detach().round()? - bounded.detach())?;
    (bounded + rounding)?.broadcast_div(&column(c.half_width)?)
}

/// Turns indices (B, ...) of any integer dtype into channel-first codes (B, 6, ...).
pub fn codes_from_indices(indices: &Tensor, dtype: DType) -> Result<Tensor> {
    let dims = indices.dims().to_vec();
    let batch = indices.dim(0)?;
    let positions: usize = dims.iter().skip(1).product();
    let values = indices
        .to_device(&Device::Cpu)?
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let mut codes = vec![0f32; batch * FSQ_DIMS * positions];
    for (flat, &index) in values.iter().enumerate() {
        if !(0..CODEBOOK_SIZE as i64).contains(&index) {
            return Err(TokenizerError::InvalidInput(format!(
                "token index {index} at position {flat} is outside the codebook 0..{}",
                CODEBOOK_SIZE - 1
            )));
        }
        let (b, p) = (flat / positions.max(1), flat % positions.max(1));
        for (d, value) in code_from_index(index).into_iter().enumerate() {
            if let Some(slot) = codes.get_mut((b * FSQ_DIMS + d) * positions + p) {
                *slot = value;
            }
        }
    }
    let mut code_dims = vec![batch, FSQ_DIMS];
    code_dims.extend(dims.iter().skip(1));
    Ok(Tensor::from_vec(codes, code_dims, indices.device())?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_round_trips_through_its_code() {
        for index in 0..CODEBOOK_SIZE as i64 {
            let code = code_from_index(index);
            assert!(code.iter().all(|v| (-1.0..=1.0).contains(v)));
            assert_eq!(index_from_code(&code), index);
        }
        let all: Vec<i64> = (0..CODEBOOK_SIZE as i64).collect();
        let indices = Tensor::from_vec(all.clone(), (1, 250, 256), &Device::Cpu).unwrap();
        let codes = codes_from_indices(&indices, DType::F32).unwrap();
        // Feeding the exact codes back through the quantiser's inverse of `bound` must give the
        // same indices: atanh maps each code back to an input that bounds onto it.
        let c = constants();
        let flat = codes.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let positions = CODEBOOK_SIZE;
        let mut inputs = vec![0f32; flat.len()];
        for d in 0..FSQ_DIMS {
            for p in 0..positions {
                let q = flat[d * positions + p] * c.half_width[d];
                inputs[d * positions + p] = ((q + c.offset[d]) / c.half_l[d]).atanh() - c.shift[d];
            }
        }
        let pre = Tensor::from_vec(inputs, (1, 6, 250, 256), &Device::Cpu).unwrap();
        let (back, codes_again) = quantize(&pre).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<i64>().unwrap(), all);
        assert_eq!(
            codes_again.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            codes.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn straight_through_codes_match_the_quantizer_and_pass_gradients() {
        let values: Vec<f32> = (0..6 * 40)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let var = candle_core::Var::from_vec(values, (2, 6, 4, 5), &Device::Cpu).unwrap();
        let codes = quantize_straight_through(var.as_tensor()).unwrap();
        let (_, exact) = quantize(var.as_tensor()).unwrap();
        let diff = (codes.clone() - exact)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "codes differ by {diff}");
        // d codes / d z = half_l · (1 − tanh²(z + shift)) / half_width, rounding passed straight.
        let grads = codes.sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let z = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let c = constants();
        for (i, (&gi, &zi)) in g.iter().zip(&z).enumerate() {
            let d = (i / 20) % 6;
            let t = (zi + c.shift[d]).tanh();
            let want = c.half_l[d] * (1.0 - t * t) / c.half_width[d];
            assert!((gi - want).abs() < 1e-5, "grad {i}: {gi} vs {want}");
        }
    }

    #[test]
    fn out_of_range_indices_are_rejected() {
        let bad = Tensor::new(&[[0i64, 64000]], &Device::Cpu).unwrap();
        let err = codes_from_indices(&bad, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("64000"), "{err}");
    }

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(2.5f32.round_ties_even(), 2.0);
        assert_eq!((-0.5f32).round_ties_even(), -0.0);
    }
}
