//! Fused normalisation for the layers: on the CPU in float32, a one-pass kernel (inference) and
//! a custom op with a fused backward pass (training); other devices and dtypes use candle's ops.
//! Also [`exp_f32`], the vectorisable `e^x` that its SiLU and the attention's softmax share.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::storage::{contiguous_f32, with_f32_values};

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
    let cpu_f32 = x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && weight.dtype() == candle_core::DType::F32
        && bias.dtype() == candle_core::DType::F32;
    let tracked = x.track_op() || weight.track_op() || bias.track_op();
    if cpu_f32 && !tracked {
        // Read the input in place (a `to_vec1` copy of every activation cost ~1% of a network).
        let channels = channels_of(x.dims())?;
        let output = with_f32_values(x, weight, Some(bias), channels, |xs, ws, bs| {
            let bs = bs.unwrap_or_default();
            group_norm_cpu(xs, x.dims(), groups, (ws, bs), eps, then_swish)
        })?;
        return Tensor::from_vec(output, x.dims(), x.device());
    }
    if cpu_f32 {
        return x.apply_op3(
            weight,
            bias,
            GroupNormOp {
                groups,
                eps,
                then_swish,
            },
        );
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

/// The channel count of an (N, C, ...) shape.
/// One scale and one shift per channel.
fn check_affine(channels: usize, gamma: &[f32], beta: &[f32]) -> Result<()> {
    if gamma.len() != channels || beta.len() != channels {
        candle_core::bail!(
            "group_norm: {channels} channels need as many scales and shifts, got {} and {}",
            gamma.len(),
            beta.len()
        );
    }
    Ok(())
}

fn channels_of(dims: &[usize]) -> Result<usize> {
    match dims.get(1) {
        Some(&c) => Ok(c),
        None => candle_core::bail!("group_norm: expected an (N, C, ...) input, got shape {dims:?}"),
    }
}

fn group_norm_cpu(
    input: &[f32],
    dims: &[usize],
    groups: usize,
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    then_swish: bool,
) -> Result<Vec<f32>> {
    let c = channels_of(dims)?;
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("group_norm: {groups} groups do not divide {c} channels");
    }
    check_affine(c, gamma, beta)?;
    let spatial: usize = dims.iter().skip(2).product();
    let per_group = c / groups * spatial;
    let mut output = vec![0f32; input.len()];
    let channels_per_group = c / groups;
    output
        .par_chunks_mut(per_group.max(1))
        .zip(input.par_chunks(per_group.max(1)))
        .enumerate()
        .for_each(|(block, (out, inp))| {
            let (mean, rstd) = group_statistics(inp, eps);
            let group = block % groups;
            for (k, (o_ch, i_ch)) in out
                .chunks_mut(spatial.max(1))
                .zip(inp.chunks(spatial.max(1)))
                .enumerate()
            {
                let channel = group * channels_per_group + k;
                // `channel` < c, the length `check_affine` held both to.
                let (g, b) = (f64::from(gamma[channel]), f64::from(beta[channel]));
                let scale = (g * rstd) as f32;
                let shift = (b - mean * g * rstd) as f32;
                if then_swish {
                    for (o, &v) in o_ch.iter_mut().zip(i_ch) {
                        let y = v * scale + shift;
                        *o = y / (1.0 + exp_f32(-y));
                    }
                } else {
                    for (o, &v) in o_ch.iter_mut().zip(i_ch) {
                        *o = v * scale + shift;
                    }
                }
            }
        });
    Ok(output)
}

/// `Σ f(v)` over `values`, summed in f32 over 16 lanes of 64-value blocks and across blocks in f64:
/// vectorised (a single f64 chain is one add per 4 cycles), and as exact as the statistics need.
fn sum_f64(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in values.chunks(64) {
        let mut lanes = [0f32; 16];
        for part in block.chunks(16) {
            for (l, &v) in lanes.iter_mut().zip(part) {
                *l += f(v);
            }
        }
        total += lanes.iter().map(|&l| f64::from(l)).sum::<f64>();
    }
    total
}

/// `e^x` for f32, branch-free so that loops over it vectorise (libm's `expf` is a call per
/// value): `x = n·ln2 + r` with |r| <= ln2/2, a degree-6 polynomial for `e^r` (relative error
/// below 2e-7), and `2^n` put together in the exponent bits. Inputs are clamped to
/// [-87.3, 88.7], where the result is still a normal f32.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer: `f32::round` is a call to
    // libm's roundf on the x86-64 baseline, and would stop the loop from vectorising.
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let shifted = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in [-126, 128]: 2^n in two factors so that n = 128 does not overflow the exponent.
    // The integer n is read from `shifted`'s low mantissa bits (its exponent is that of
    // 1.5·2^23, whose bits are 0x4B40_0000): `n as i32` would be a saturating conversion that
    // the compiler does lane by lane.
    let n = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let half = n >> 1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    p * pow2(half) * pow2(n - half)
}

/// `swish(group_norm(x))` (or the norm alone) as a differentiable CPU f32 op: the forward pass is
/// [`group_norm_cpu`]'s, the backward pass recomputes each group's statistics and produces the
/// input, scale and shift gradients in one sweep instead of candle's dozen element-wise ops.
#[derive(Clone, Copy, Debug)]
struct GroupNormOp {
    groups: usize,
    eps: f64,
    then_swish: bool,
}

/// Mean and 1/std of one group (biased variance, eps inside the root), in f64.
fn group_statistics(values: &[f32], eps: f64) -> (f64, f64) {
    let len = values.len().max(1) as f64;
    let mean = sum_f64(values, |v| v) / len;
    let mean32 = mean as f32;
    let var = sum_f64(values, |v| (v - mean32) * (v - mean32)) / len;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "tokenscope-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let values = group_norm_cpu(
            contiguous_f32(s1, l1)?,
            l1.dims(),
            self.groups,
            (contiguous_f32(s2, l2)?, contiguous_f32(s3, l3)?),
            self.eps,
            self.then_swish,
        )?;
        Ok((CpuStorage::F32(values), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = x.dims().to_vec();
        let c = x.dim(1)?;
        let groups = self.groups;
        if groups == 0 || c % groups != 0 {
            candle_core::bail!("group_norm: {groups} groups do not divide {c} channels");
        }
        let spatial: usize = dims.iter().skip(2).product::<usize>().max(1);
        let per_channel_group = c / groups;
        let per_group = per_channel_group * spatial;
        let xs = x.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let dy = grad
            .detach()
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let gamma = weight.detach().to_vec1::<f32>()?;
        let beta = bias.detach().to_vec1::<f32>()?;
        check_affine(c, &gamma, &beta)?;
        let mut dx = vec![0f32; xs.len()];
        let (eps, swish) = (self.eps, self.then_swish);
        // Per block (one group of one item): the gradients of its channels' scale and shift.
        let partials: Vec<(usize, Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(per_group)
            .zip(xs.par_chunks(per_group).zip(dy.par_chunks(per_group)))
            .enumerate()
            .map(|(block, (dx_block, (x_block, dy_block)))| {
                let group = block % groups;
                let (mean, rstd) = group_statistics(x_block, eps);
                let mut dgamma = vec![0f64; per_channel_group];
                let mut dbeta = vec![0f64; per_channel_group];
                let (mut sum_dxhat, mut sum_dxhat_xhat) = (0f64, 0f64);
                // First sweep: d(out)/d(affine) into dx_block (as dxhat), and the reductions.
                for (k, ((dxc, xc), dyc)) in dx_block
                    .chunks_mut(spatial)
                    .zip(x_block.chunks(spatial))
                    .zip(dy_block.chunks(spatial))
                    .enumerate()
                {
                    let channel = group * per_channel_group + k;
                    // `channel` < c, the length `check_affine` held both to.
                    let (g, b) = (f64::from(gamma[channel]), f64::from(beta[channel]));
                    let (mut dg, mut db) = (0f64, 0f64);
                    for ((d, &xv), &gv) in dxc.iter_mut().zip(xc).zip(dyc) {
                        let xhat = (f64::from(xv) - mean) * rstd;
                        let mut da = f64::from(gv);
                        if swish {
                            let a = xhat * g + b;
                            let s = 1.0 / (1.0 + (-a).exp());
                            da *= s * (1.0 + a * (1.0 - s));
                        }
                        dg += da * xhat;
                        db += da;
                        let dxhat = da * g;
                        sum_dxhat += dxhat;
                        sum_dxhat_xhat += dxhat * xhat;
                        *d = dxhat as f32;
                    }
                    if let (Some(gs), Some(bs)) = (dgamma.get_mut(k), dbeta.get_mut(k)) {
                        *gs = dg;
                        *bs = db;
                    }
                }
                let len = per_group.max(1) as f64;
                let (mean_dxhat, mean_dxhat_xhat) = (sum_dxhat / len, sum_dxhat_xhat / len);
                for (d, &xv) in dx_block.iter_mut().zip(x_block) {
                    let xhat = (f64::from(xv) - mean) * rstd;
                    *d = (rstd * (f64::from(*d) - mean_dxhat - xhat * mean_dxhat_xhat)) as f32;
                }
                (group, dgamma, dbeta)
            })
            .collect();
        let mut dgamma = vec![0f64; c];
        let mut dbeta = vec![0f64; c];
        for (group, dg, db) in partials {
            for (k, (g, b)) in dg.into_iter().zip(db).enumerate() {
                let channel = group * per_channel_group + k;
                if let (Some(gs), Some(bs)) = (dgamma.get_mut(channel), dbeta.get_mut(channel)) {
                    *gs += g;
                    *bs += b;
                }
            }
        }
        let device = x.device();
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        Ok((
            Some(Tensor::from_vec(dx, dims, device)?),
            Some(Tensor::from_vec(to_f32(dgamma), c, device)?),
            Some(Tensor::from_vec(to_f32(dbeta), c, device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn exp_f32_matches_f64_exp_to_a_few_ulps() {
        let mut worst = 0f64;
        for i in -90_000..=90_000 {
            let x = i as f32 * 1e-3;
            let want = f64::from(x.clamp(-87.3, 88.7)).exp();
            let got = f64::from(exp_f32(x));
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 1e-6, "worst relative error {worst:e}");
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(-1000.0), exp_f32(-87.3));
        assert!(exp_f32(1000.0).is_finite());
    }

    #[test]
    fn sum_f64_matches_a_plain_f64_sum() {
        let v = values(10_007, 3);
        let plain: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let ours = sum_f64(&v, |x| x * x);
        assert!(
            (ours - plain).abs() < 1e-6 * plain.abs(),
            "{ours} vs {plain}"
        );
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32
                    / 1000.0
                    - 1.0
            })
            .collect()
    }

    /// The fused op's value and gradients against the same expression in candle ops (f64).
    #[test]
    fn fused_group_norm_gradients_match_candle_ops() {
        for (groups, swish) in [(1, true), (2, false), (4, true)] {
            let dims = (3usize, 8usize, 5usize, 6usize);
            let n = dims.0 * dims.1 * dims.2 * dims.3;
            let x = Var::from_vec(values(n, 1), dims, &Device::Cpu).unwrap();
            let w = Var::from_vec(values(8, 2), 8, &Device::Cpu).unwrap();
            let b = Var::from_vec(values(8, 3), 8, &Device::Cpu).unwrap();
            let r = Tensor::from_vec(values(n, 4), dims, &Device::Cpu).unwrap();
            let y = group_norm(
                x.as_tensor(),
                groups,
                w.as_tensor(),
                b.as_tensor(),
                1e-6,
                swish,
            )
            .unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();

            let f64_var =
                |v: &Var| Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
            let (x64, w64, b64) = (f64_var(&x), f64_var(&w), f64_var(&b));
            // The generic path (candle ops) runs for f64.
            let y64 = group_norm(
                x64.as_tensor(),
                groups,
                w64.as_tensor(),
                b64.as_tensor(),
                1e-6,
                swish,
            )
            .unwrap();
            let want = (&y64 * &r.to_dtype(DType::F64).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let max_diff = |a: &Tensor, b: &Tensor| {
                (a.to_dtype(DType::F64).unwrap() - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            assert!(max_diff(&y, &y64) < 1e-5, "forward");
            for (name, v, v64) in [("x", &x, &x64), ("weight", &w, &w64), ("bias", &b, &b64)] {
                let d = max_diff(
                    grads.get(v.as_tensor()).unwrap(),
                    want.get(v64.as_tensor()).unwrap(),
                );
                assert!(
                    d < 1e-4,
                    "groups {groups} swish {swish}: d{name} differs by {d}"
                );
            }
        }
    }
}
