//! The AVX-512 form of the blocked attention (`attention.rs`): both products of a block, the
//! scores `Q·Kᵀ` and the update `out += P·V`, run on the convolutions' 12 × 32 micro-kernel
//! ([`avx512::kernel_pair`]) over packed panels. The `gemm` crate, which the other CPUs use, has no
//! AVX-512 kernel in its stable build: at 720p its two products were a fifth of the whole
//! network's time, at about half the convolutions' rate.
//!
//! Layouts (zeros past the sequence and channel ends, so partial tiles need no special case):
//! - keys `[key tile][channel][16 keys]`: the micro-kernel's vector operand for the scores;
//! - values `[channel tile][key][16 channels]`: its vector operand for the update;
//! - a query block's rows, and later its probabilities, as `[channel or key][12 rows]` panels: the
//!   operand it broadcasts;
//! - scores and outputs in the micro-kernel's accumulator tiles, 12 rows × 16 columns.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::attention::{exp_shifted_sum_avx512, max_of};
use super::avx512::{self, NR};
use super::norm::exp_f32;
use super::tile::{Lane16, MR};

type Result<T> = candle_core::Result<T>;

/// 12 rows × 16 columns: one accumulator tile of the micro-kernel.
type Tile = [Lane16; NR];
const ZERO_TILE: Tile = [Lane16::ZERO; NR];

/// Attention over `(N, C, S)` f32 queries, keys and values (checked by the caller), as
/// [`super::attention_cpu`]. `key_block` must be a multiple of 16.
///
/// # Safety
/// The CPU must have AVX-512F.
pub(super) unsafe fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    query_block: usize,
    key_block: usize,
) -> Result<Tensor> {
    let (n, c, s) = q.dims3()?;
    if !key_block.is_multiple_of(MR) {
        candle_core::bail!(
            "attention: the AVX-512 key block ({key_block}) must be a multiple of {MR}"
        );
    }
    let position_major = |t: &Tensor| {
        t.transpose(1, 2)?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()
    };
    let channel_first = |t: &Tensor| t.contiguous()?.flatten_all()?.to_vec1::<f32>();
    let queries = position_major(q)?;
    let (key_tiles, channel_tiles) = (s.div_ceil(MR), c.div_ceil(MR));
    let mut keys = vec![Lane16::ZERO; n * key_tiles * c];
    keys.par_chunks_mut(key_tiles * c)
        .zip(channel_first(k)?.par_chunks(c * s))
        .for_each(|(packed, k_n)| pack_keys(k_n, c, s, packed));
    let mut values = vec![Lane16::ZERO; n * channel_tiles * s];
    values
        .par_chunks_mut(channel_tiles * s)
        .zip(position_major(v)?.par_chunks(c * s))
        .for_each(|(packed, v_n)| pack_values(v_n, c, s, packed));
    let scale = 1.0 / (c as f32).sqrt();
    let item = c * s;
    let mut out = vec![0f32; n * item];
    out.par_chunks_mut(item)
        .zip(queries.par_chunks(item))
        .zip(
            keys.par_chunks(key_tiles * c)
                .zip(values.par_chunks(channel_tiles * s)),
        )
        .for_each(|((out_n, q_n), (keys_n, values_n))| {
            out_n
                .par_chunks_mut(query_block * c)
                .enumerate()
                .for_each(|(block, out_rows)| {
                    let block = Block {
                        s,
                        c,
                        q0: block * query_block,
                        rows: out_rows.len() / c,
                        key_block,
                        causal,
                        scale,
                    };
                    // SAFETY: the caller guarantees AVX-512F.
                    unsafe { attend(&block, q_n, keys_n, values_n, out_rows) };
                });
        });
    Tensor::from_vec(out, (n, s, c), &Device::Cpu)?
        .transpose(1, 2)?
        .contiguous()
}

/// Keys of one item, channel-first `C × S`, into `[key tile][channel][16 keys]`.
fn pack_keys(k: &[f32], c: usize, s: usize, packed: &mut [Lane16]) {
    for (tile, lanes) in packed.chunks_exact_mut(c).enumerate() {
        let first = tile * MR;
        let len = MR.min(s - first);
        for (lane, row) in lanes.iter_mut().zip(k.chunks_exact(s)) {
            lane.load_prefix(&row[first..first + len]);
        }
    }
}

/// Values of one item, position-major `S × C`, into `[channel tile][key][16 channels]`.
fn pack_values(v: &[f32], c: usize, s: usize, packed: &mut [Lane16]) {
    for (tile, lanes) in packed.chunks_exact_mut(s).enumerate() {
        let first = tile * MR;
        let len = MR.min(c - first);
        for (lane, row) in lanes.iter_mut().zip(v.chunks_exact(c)) {
            lane.load_prefix(&row[first..first + len]);
        }
    }
}

#[derive(Clone, Copy)]
struct Block {
    /// Sequence length and channels of one item.
    s: usize,
    c: usize,
    /// First query and number of queries of this block.
    q0: usize,
    rows: usize,
    key_block: usize,
    causal: bool,
    scale: f32,
}

/// One query block of one item: `out` is its `rows × C` output, position-major.
#[target_feature(enable = "avx512f")]
fn attend(g: &Block, queries: &[f32], keys: &[Lane16], values: &[Lane16], out: &mut [f32]) {
    let Block {
        s,
        c,
        q0,
        rows,
        key_block,
        causal,
        scale,
    } = *g;
    let panels = rows.div_ceil(NR);
    let channel_tiles = c.div_ceil(MR);
    let score_tiles = key_block / MR;
    // The block's queries, scaled, as broadcast panels `[panel][channel][12 rows]`.
    let mut query_panels = vec![[0f32; NR]; panels * c];
    for (i, row) in queries[q0 * c..(q0 + rows) * c].chunks_exact(c).enumerate() {
        let panel = &mut query_panels[(i / NR) * c..(i / NR + 1) * c];
        for (lanes, &x) in panel.iter_mut().zip(row) {
            lanes[i % NR] = x * scale;
        }
    }
    let mut scores = vec![ZERO_TILE; panels * score_tiles];
    let mut probabilities = vec![[0f32; NR]; panels * key_block];
    let mut acc = vec![ZERO_TILE; panels * channel_tiles];
    let mut row = vec![0f32; key_block];
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let key_end = if causal { q0 + rows } else { s };
    for k0 in (0..key_end).step_by(key_block) {
        let cols = key_block.min(key_end - k0);
        let tiles = cols.div_ceil(MR);
        let first_tile = k0 / MR;
        for panel in 0..panels {
            let panel_scores = &mut scores[panel * score_tiles..panel * score_tiles + tiles];
            panel_scores.fill(ZERO_TILE);
            products(
                &query_panels[panel * c..(panel + 1) * c],
                |t| &keys[(first_tile + t) * c..(first_tile + t + 1) * c],
                panel_scores,
            );
        }
        for i in 0..rows {
            let (panel, r) = (i / NR, i % NR);
            // Causal: keys after query q0 + i (k0 + j > q0 + i) get weight 0.
            let visible = if causal {
                (q0 + i + 1).saturating_sub(k0).min(cols)
            } else {
                cols
            };
            for (t, chunk) in row[..cols].chunks_mut(MR).enumerate() {
                let tile = &scores[panel * score_tiles + t];
                chunk.copy_from_slice(&tile[r].0[..chunk.len()]);
            }
            let seen = &mut row[..visible];
            let new_max = max[i].max(max_of(seen));
            let probs = &mut probabilities[panel * key_block..panel * key_block + cols];
            if seen.is_empty() || new_max == f32::NEG_INFINITY {
                probs.iter_mut().for_each(|p| p[r] = 0.0);
                continue;
            }
            // exp(−∞) is 0 in the first block, where nothing has been accumulated yet.
            let correction = if max[i] == f32::NEG_INFINITY {
                0.0
            } else {
                exp_f32(max[i] - new_max)
            };
            sum[i] = sum[i] * correction + exp_shifted_sum_avx512(seen, new_max);
            max[i] = new_max;
            if correction != 1.0 {
                for tile in &mut acc[panel * channel_tiles..(panel + 1) * channel_tiles] {
                    tile[r].0.iter_mut().for_each(|x| *x *= correction);
                }
            }
            for (j, p) in probs.iter_mut().enumerate() {
                p[r] = if j < visible { row[j] } else { 0.0 };
            }
        }
        for panel in 0..panels {
            products(
                &probabilities[panel * key_block..panel * key_block + cols],
                |t| &values[t * s + k0..t * s + k0 + cols],
                &mut acc[panel * channel_tiles..(panel + 1) * channel_tiles],
            );
        }
    }
    for (i, out_row) in out.chunks_exact_mut(c).enumerate() {
        let (panel, r) = (i / NR, i % NR);
        let inverse = if sum[i] > 0.0 { 1.0 / sum[i] } else { 0.0 };
        let tiles = &acc[panel * channel_tiles..(panel + 1) * channel_tiles];
        for (chunk, tile) in out_row.chunks_mut(MR).zip(tiles) {
            for (o, &x) in chunk.iter_mut().zip(&tile[r].0) {
                *o = x * inverse;
            }
        }
    }
}

/// `acc[t] += b · a(t)` for every tile `t` of `acc`, two tiles per micro-kernel call so each
/// broadcast of `b` feeds two FMAs.
#[target_feature(enable = "avx512f")]
fn products<'a>(b: &[[f32; NR]], a: impl Fn(usize) -> &'a [Lane16], acc: &mut [Tile]) {
    let done = acc.len() / 2 * 2;
    let mut pairs = acc.chunks_exact_mut(2);
    for (pair, t) in (&mut pairs).zip((0..).step_by(2)) {
        let (acc0, acc1) = pair.split_at_mut(1);
        avx512::kernel_pair(a(t), a(t + 1), b, &mut acc0[0], &mut acc1[0]);
    }
    if let [last] = pairs.into_remainder() {
        avx512::kernel(a(done), b, last);
    }
}
