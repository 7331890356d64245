//! Exact single-head attention in bounded memory.
//!
//! The mid-block attentions see every latent cell of a frame (spatial) or every latent frame of a
//! pixel (causal temporal). Materialising the S×S score matrix costs S² floats per item: 0.8 GB
//! per latent frame at 720p, 4.2 GB at 1080p. Here queries and keys go in blocks with the
//! online-softmax recurrence (a running maximum and sum per query, as in FlashAttention), so the
//! memory is one block of scores per worker and the result is the same softmax, exactly.
//!
//! - CPU, f32, outside autograd: [`attention_cpu`], parallel over (item, query block), each block
//!   two strided GEMMs (scores, then values) with f32 accumulation.
//! - Everything else (CUDA, half precision, training): [`attention_ops`], the same recurrence in
//!   candle ops over query chunks and key blocks, so it runs on any device and keeps gradients.
//!   (Under autograd the materialised form's softmax is composed of candle ops for the same reason.)
//!
//! Small problems (S at most one block) take the materialised form: it is exact, fits in a block
//! anyway, and keeps the reference parity bit for bit.

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;

use super::implicit_gemm::CpuKernel;
use super::norm::exp_f32;
use super::storage::fast_path_applies;

type Result<T> = candle_core::Result<T>;

/// Query rows per CPU work item: eight of the AVX-512 form's 12-row panels.
pub const CPU_QUERY_BLOCK: usize = 96;
/// Keys per CPU score block (96×256 scores: 96 KiB, in L2).
pub const CPU_KEY_BLOCK: usize = 256;
/// Queries and keys per block of the candle-op form: a (N, 4096, 4096) f32 block is 64 MiB per item.
pub const OPS_BLOCK: usize = 4096;

/// Single-head dot-product attention over `(N, C, S)` queries, keys and values with scale
/// `C^-1/2`; with `causal`, position `i` sees keys `j <= i` only. Returns `(N, C, S)`.
pub fn attention_channels_first(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
) -> Result<Tensor> {
    let (_, _, s) = q.dims3()?;
    if fast_path_applies(q, k, Some(v)) {
        if s <= CPU_KEY_BLOCK {
            return attention_materialised(q, k, v, causal);
        }
        return attention_cpu(q, k, v, causal, CPU_QUERY_BLOCK, CPU_KEY_BLOCK);
    }
    if s <= OPS_BLOCK {
        return attention_materialised(q, k, v, causal);
    }
    attention_ops(q, k, v, causal, OPS_BLOCK, OPS_BLOCK)
}

/// The textbook form: the whole (N, S, S) score matrix, softmax, product with the values.
pub fn attention_materialised(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    let (_, c, s) = q.dims3()?;
    let scale = 1.0 / (c as f64).sqrt();
    // (N, S, C) x (N, C, S) → (N, S_q, S_k)
    let scores = (q.transpose(1, 2)?.contiguous()?.matmul(&k.contiguous()?)? * scale)?;
    let scores = if causal {
        scores.broadcast_add(&causal_mask(0, s, 0, s, scores.dtype(), scores.device())?)?
    } else {
        scores
    };
    let weights = softmax_last(&scores)?;
    // (N, C, S_k) x (N, S_k, S_q) → (N, C, S_q)
    v.contiguous()?
        .matmul(&weights.transpose(1, 2)?.contiguous()?)
}

/// Softmax over the last axis, computed in f32 for half-precision inputs.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    if x.track_op() {
        // candle_nn's fused softmax has no backward (autograd silently stops there, so q and k
        // never trained): under autograd, the composed form, whose gradient candle derives.
        return candle_nn::ops::softmax(&x.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype);
    }
    if matches!(dtype, DType::BF16 | DType::F16) {
        candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// (rows, cols) additive mask for queries `q0..q0+rows` against keys `k0..k0+cols`: 0 where the
/// key is not after the query, −∞ where it is.
fn causal_mask(
    q0: usize,
    rows: usize,
    k0: usize,
    cols: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let values: Vec<f32> = (q0..q0 + rows)
        .flat_map(|i| (k0..k0 + cols).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(values, (rows, cols), device)?.to_dtype(dtype)
}

/// The online-softmax recurrence in candle ops: queries in chunks of `query_block`, keys in
/// blocks of `key_block`; scores, maxima, sums and the output accumulate in f32. Peak extra memory
/// is one (N, query_block, key_block) block of scores.
pub fn attention_ops(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    query_block: usize,
    key_block: usize,
) -> Result<Tensor> {
    let (n, c, s) = q.dims3()?;
    if query_block == 0 || key_block == 0 {
        candle_core::bail!("attention blocks must hold at least one position");
    }
    let dtype = q.dtype();
    let scale = 1.0 / (c as f64).sqrt();
    // (N, S, C) queries, once.
    let q_rows = q.transpose(1, 2)?.contiguous()?;
    let mut chunks = Vec::with_capacity(s.div_ceil(query_block));
    for q0 in (0..s).step_by(query_block) {
        let rows = query_block.min(s - q0);
        let q_chunk = q_rows.narrow(1, q0, rows)?;
        // Running (max, sum, output) per query, f32; the output is (N, rows, C).
        let mut running: Option<(Tensor, Tensor, Tensor)> = None;
        // Causal: keys after the chunk's last query contribute nothing.
        let key_end = if causal { q0 + rows } else { s };
        for k0 in (0..key_end).step_by(key_block) {
            let cols = key_block.min(key_end - k0);
            let k_block = k.narrow(2, k0, cols)?.contiguous()?;
            let scores = (q_chunk.matmul(&k_block)?.to_dtype(DType::F32)? * scale)?;
            let scores = if causal && k0 + cols > q0 {
                scores.broadcast_add(&causal_mask(q0, rows, k0, cols, DType::F32, q.device())?)?
            } else {
                scores
            };
            let block_max = scores.max_keepdim(D::Minus1)?;
            let new_max = match &running {
                Some((max, _, _)) => max.maximum(&block_max)?,
                None => block_max,
            };
            let p = scores.broadcast_sub(&new_max)?.exp()?;
            // (N, rows, cols) x (N, cols, C) → (N, rows, C)
            let v_block = v.narrow(2, k0, cols)?.transpose(1, 2)?.contiguous()?;
            let pv = p.to_dtype(dtype)?.matmul(&v_block)?.to_dtype(DType::F32)?;
            let p_sum = p.sum_keepdim(D::Minus1)?;
            running = Some(match running {
                Some((max, sum, acc)) => {
                    let correction = (max - &new_max)?.exp()?;
                    (
                        new_max,
                        (sum * &correction)?.add(&p_sum)?,
                        acc.broadcast_mul(&correction)?.add(&pv)?,
                    )
                }
                None => (new_max, p_sum, pv),
            });
        }
        let Some((_, sum, acc)) = running else {
            candle_core::bail!("attention over an empty sequence");
        };
        chunks.push(acc.broadcast_div(&sum)?);
    }
    // (N, S, C) → (N, C, S)
    let out = Tensor::cat(&chunks, 1)?;
    debug_assert_eq!(out.dims(), &[n, s, c]);
    out.transpose(1, 2)?.contiguous()?.to_dtype(dtype)
}

/// The CPU kernel: f32 slices, parallel over (item, query block); per key block one product for
/// the scores and one for the values, the online softmax in between. Never allocates more than
/// one `query_block × key_block` score block and one `query_block × C` accumulator per worker.
pub fn attention_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    query_block: usize,
    key_block: usize,
) -> Result<Tensor> {
    attention_cpu_with(CpuKernel::best(), q, k, v, causal, query_block, key_block)
}

/// [`attention_cpu`] on the given micro-kernels: with AVX-512 (and a key block that is a multiple
/// of 16) both products run on the convolutions' micro-kernel over packed panels
/// (`attention_avx512.rs`); otherwise on the `gemm` crate, whose exponentials follow `kernel`.
pub fn attention_cpu_with(
    kernel: CpuKernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    query_block: usize,
    key_block: usize,
) -> Result<Tensor> {
    let (n, c, s) = q.dims3()?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?} and values {:?} must have one shape",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if query_block == 0 || key_block == 0 || c == 0 || s == 0 {
        candle_core::bail!("attention: empty blocks or inputs ({n}, {c}, {s})");
    }
    kernel.check_available()?;
    #[cfg(target_arch = "x86_64")]
    if kernel == CpuKernel::Avx512 && key_block.is_multiple_of(super::tile::MR) {
        // SAFETY: `check_available` found AVX-512F on this CPU.
        return unsafe {
            super::attention_avx512::attention(q, k, v, causal, query_block, key_block)
        };
    }
    // Position-major (N, S, C) copies: every GEMM below then reads channels with unit stride.
    let values = |t: &Tensor| {
        t.transpose(1, 2)?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()
    };
    let (qs, ks, vs) = (values(q)?, values(k)?, values(v)?);
    let item = c * s;
    let scale = 1.0 / (c as f32).sqrt();
    // Output rows (N, S, C): each query block writes a contiguous run of rows.
    let mut out = vec![0f32; n * s * c];
    out.par_chunks_mut(item)
        .zip(qs.par_chunks(item))
        .zip(ks.par_chunks(item).zip(vs.par_chunks(item)))
        .for_each(|((out_n, q_n), (k_n, v_n))| {
            out_n
                .par_chunks_mut(query_block * c)
                .enumerate()
                .for_each(|(block, out_rows)| {
                    let q0 = block * query_block;
                    let rows = out_rows.len() / c;
                    let geometry = BlockGeometry {
                        s,
                        c,
                        q0,
                        rows,
                        key_block,
                        causal,
                        scale,
                        kernel,
                    };
                    attend_block(&geometry, (q_n, k_n, v_n), out_rows);
                });
        });
    Tensor::from_vec(out, (n, s, c), &Device::Cpu)?
        .transpose(1, 2)?
        .contiguous()
}

struct BlockGeometry {
    /// Sequence length and channels of one item.
    s: usize,
    c: usize,
    /// First query and number of queries of this block.
    q0: usize,
    rows: usize,
    key_block: usize,
    causal: bool,
    scale: f32,
    /// The vector unit the softmax's exponentials are compiled for.
    kernel: CpuKernel,
}

/// One query block of one item (q, k, v position-major, S × C): `out` is its (rows, C) output.
fn attend_block(g: &BlockGeometry, (q, k, v): (&[f32], &[f32], &[f32]), out: &mut [f32]) {
    let BlockGeometry {
        s,
        c,
        q0,
        rows,
        key_block,
        causal,
        scale,
        kernel,
    } = *g;
    let mut scores = vec![0f32; rows * key_block];
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    out.fill(0.0);
    let key_end = if causal { q0 + rows } else { s };
    for k0 in (0..key_end).step_by(key_block) {
        let cols = key_block.min(key_end - k0);
        // SAFETY: every matrix stays inside its slice (position-major, S × C). Queries: rows × C
        // at q[(q0 + i)·C + ch] (q0 + rows <= S); keys as C × cols at k[(k0 + j)·C + ch]
        // (k0 + cols <= S); scores: rows × cols with row stride key_block inside `scores`
        // (rows·key_block long).
        unsafe {
            gemm::gemm(
                rows,
                cols,
                c,
                scores.as_mut_ptr(),
                1,
                key_block as isize,
                false,
                q.as_ptr().add(q0 * c),
                1,
                c as isize,
                k.as_ptr().add(k0 * c),
                c as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (i, row) in scores.chunks_exact_mut(key_block).take(rows).enumerate() {
            // Causal: keys after query q0 + i (k0 + j > q0 + i) get weight 0.
            let visible = if causal {
                (q0 + i + 1).saturating_sub(k0).min(cols)
            } else {
                cols
            };
            let (seen, masked) = row[..cols].split_at_mut(visible);
            masked.fill(0.0);
            let block_max = max_of(seen);
            let new_max = max[i].max(block_max);
            if seen.is_empty() || new_max == f32::NEG_INFINITY {
                continue;
            }
            // exp(−∞) is 0 in the first block, where nothing has been accumulated yet.
            let correction = if max[i] == f32::NEG_INFINITY {
                0.0
            } else {
                exp_f32(max[i] - new_max)
            };
            let block_sum = exp_shifted_sum(kernel, seen, new_max);
            sum[i] = sum[i] * correction + block_sum;
            max[i] = new_max;
            if correction != 1.0 {
                for o in &mut out[i * c..(i + 1) * c] {
                    *o *= correction;
                }
            }
        }
        // out (rows × C) += P (rows × cols) · V (cols × C), V[j][ch] = v[(k0 + j)·C + ch].
        // SAFETY: as above; `out` is rows × C with row stride C.
        unsafe {
            gemm::gemm(
                rows,
                c,
                cols,
                out.as_mut_ptr(),
                1,
                c as isize,
                true,
                scores.as_ptr(),
                1,
                key_block as isize,
                v.as_ptr().add(k0 * c),
                1,
                c as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    for (row, total) in out.chunks_exact_mut(c).zip(&sum) {
        let inverse = if *total > 0.0 { 1.0 / total } else { 0.0 };
        for o in row {
            *o *= inverse;
        }
    }
}

/// The largest value, in 16 independent lanes (a maximum is exact in any order, and the lanes let
/// the loop vectorise).
pub(super) fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Replaces each `x` by `e^(x − shift)` and returns their sum, compiled for the widest vector
/// unit `kernel` names: the exponentials are most of the softmax's time, and a loop that also
/// summed them one by one in order would not vectorise.
fn exp_shifted_sum(kernel: CpuKernel, values: &mut [f32], shift: f32) -> f32 {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel` is Avx512 only when `CpuKernel::available` detected avx512f.
        CpuKernel::Avx512 => unsafe { exp_shifted_sum_avx512(values, shift) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel` is Avx2 only when `CpuKernel::available` detected avx2 and fma.
        CpuKernel::Avx2 => unsafe { exp_shifted_sum_avx2(values, shift) },
        _ => exp_shifted_sum_lanes(values, shift),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn exp_shifted_sum_avx512(values: &mut [f32], shift: f32) -> f32 {
    exp_shifted_sum_lanes(values, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_sum_avx2(values: &mut [f32], shift: f32) -> f32 {
    exp_shifted_sum_lanes(values, shift)
}

/// The exponentials in one pass (element-wise, so any vector width gives the same values), then
/// their sum in 16 lanes.
#[inline(always)]
fn exp_shifted_sum_lanes(values: &mut [f32], shift: f32) -> f32 {
    for x in values.iter_mut() {
        *x = exp_f32(*x - shift);
    }
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, c: usize, s: usize, seed: u64) -> Tensor {
        // A deterministic spread of values: scores of a few units, so the softmax is neither flat
        // nor one-hot.
        let values: Vec<f32> = (0..n * c * s)
            .map(|i| {
                let x = (i as u64 + 1).wrapping_mul(6_364_136_223_846_793_005 ^ seed) >> 33;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .map(|x| 2.5 * x)
            .collect();
        Tensor::from_vec(values, (n, c, s), &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// The blocked forms, on every micro-kernel this CPU has, against the materialised one
    /// computed in f64: sequence lengths that are and are not multiples of the blocks (and of the
    /// AVX-512 form's 12-row panels and 16-wide tiles), a single position, causal masks, several
    /// widths.
    #[test]
    fn blocked_attention_matches_the_materialised_form() {
        for &(n, c, s) in &[
            (1, 8, 1),
            (2, 16, 7),
            (3, 32, 65),
            (1, 4, 300),
            (2, 20, 37),
            (2, 64, 129),
            (1, 512, 70),
        ] {
            let (q, k, v) = (random(n, c, s, 1), random(n, c, s, 2), random(n, c, s, 3));
            for causal in [false, true] {
                let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                let exact =
                    attention_materialised(&f64s(&q), &f64s(&k), &f64s(&v), causal).unwrap();
                let materialised = attention_materialised(&q, &k, &v, causal).unwrap();
                let reference_error = max_abs_diff(&materialised, &exact);
                for &(qb, kb) in &[(1, 1), (7, 5), (12, 16), (16, 32), (64, 256), (96, 256)] {
                    let what = format!("n {n} c {c} s {s} causal {causal} blocks {qb}x{kb}");
                    let mut results = vec![(
                        "ops".to_string(),
                        attention_ops(&q, &k, &v, causal, qb, kb).unwrap(),
                    )];
                    for kernel in CpuKernel::available() {
                        let cpu = attention_cpu_with(kernel, &q, &k, &v, causal, qb, kb).unwrap();
                        assert_eq!(cpu.dims(), &[n, c, s], "{what}");
                        results.push((format!("cpu {kernel:?}"), cpu));
                    }
                    for (name, got) in &results {
                        let err = max_abs_diff(got, &exact);
                        assert!(
                            err <= 4.0 * reference_error + 2e-6,
                            "{what} {name}: error {err:.2e}, materialised f32 {reference_error:.2e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn causal_attention_ignores_later_keys() {
        let (n, c, s) = (2, 8, 40);
        let (q, k, v) = (random(n, c, s, 4), random(n, c, s, 5), random(n, c, s, 6));
        let full = attention_cpu(&q, &k, &v, true, 16, 16).unwrap();
        // Changing the keys and values of the last 10 positions leaves the first 30 outputs alone.
        let bump = |t: &Tensor| {
            let head = t.narrow(2, 0, 30).unwrap();
            let tail = (t.narrow(2, 30, 10).unwrap() * 3.0).unwrap();
            Tensor::cat(&[head, tail], 2).unwrap()
        };
        let changed = attention_cpu(&q, &bump(&k), &bump(&v), true, 16, 16).unwrap();
        let early = max_abs_diff(
            &full.narrow(2, 0, 30).unwrap(),
            &changed.narrow(2, 0, 30).unwrap(),
        );
        assert_eq!(early, 0.0);
        let late = max_abs_diff(
            &full.narrow(2, 30, 10).unwrap(),
            &changed.narrow(2, 30, 10).unwrap(),
        );
        assert!(late > 1e-3, "later outputs must see the change ({late})");
    }

    #[test]
    fn attention_on_long_sequences_matches_the_materialised_form() {
        let (n, c, s) = (1, 16, CPU_KEY_BLOCK + 37);
        let (q, k, v) = (random(n, c, s, 7), random(n, c, s, 8), random(n, c, s, 9));
        let got = attention_channels_first(&q, &k, &v, false).unwrap();
        let want = attention_materialised(&q, &k, &v, false).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let q = random(1, 4, 10, 1);
        let k = random(1, 4, 9, 2);
        assert!(attention_cpu(&q, &k, &q, false, 4, 4).is_err());
        assert!(attention_cpu(&q, &q, &q, false, 0, 4).is_err());
    }
}
