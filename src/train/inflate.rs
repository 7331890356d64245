//! Starting a video network from a trained image network of the same width ("inflation", as I3D
//! started video classifiers from image ones).
//!
//! The 3-D factorized network is the 2-D one with a temporal half after every spatial conv, a
//! temporal attention after the spatial one and hybrid resamplers. Inflated, it computes on every
//! frame what the image network computes on that frame, apart from the normalisation (video
//! networks normalise each frame with one group, GroupNorm(1), image networks with 32 groups,
//! which no weight can reproduce) and, where the two upsample at different decoder levels (8x8x8:
//! level 1 against the image's level 2), the resolution one level runs at; a fine-tune follows.
//! Concretely:
//! - spatial halves, pointwise convs, norms and the spatial attention take the image tensors;
//! - temporal halves start as identities (the current frame's tap), the temporal attention's
//!   output projection as zero (a residual no-op), temporal resamplers as their pooling paths;
//! - spatial resamplers take the image's conv minus the path the hybrid module adds itself
//!   (the 2x2 average pool when downsampling, the input when upsampling);
//! - the Haar patch channels move to the temporally-low bands of the 3-D transform (a still frame
//!   has no temporal detail), and a `z_channels` mismatch (discrete image networks use 256, video
//!   ones 16) is bridged by folding the image's quantiser convs into its neighbouring 3x3 convs.
//!
//! What has no image counterpart (a resampler the image lacks, the temporal attention's q, k, v)
//! keeps the fresh initial values and is listed in the notes.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};

use super::{Result, TrainError};
use crate::tokenizer::NetworkConfig;

/// Video weights built from image weights, with what could not be carried over.
pub struct Inflation {
    pub weights: HashMap<String, Tensor>,
    pub notes: Vec<String>,
}

/// A CPU f32 copy of one tensor: shape and values.
#[derive(Clone)]
struct Array {
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl Array {
    fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            values: vec![0.0; shape.iter().product()],
        }
    }

    fn from_tensor(t: &Tensor) -> Result<Self> {
        Ok(Self {
            shape: t.dims().to_vec(),
            values: t
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?,
        })
    }

    fn into_tensor(self) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.values, self.shape, &Device::Cpu)?)
    }

    /// Elements per output channel (dimension 0).
    fn row(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Elements per (output, input) channel pair of a conv weight.
    fn taps(&self) -> usize {
        self.shape.iter().skip(2).product()
    }

    /// Adds `value` to `weight[c, c, tap]` for every channel: identities and the paths the
    /// hybrid resamplers add around their convs.
    fn add_to_diagonal(&mut self, tap: usize, value: f32) {
        let (row, taps) = (self.row(), self.taps());
        let channels = self.shape[0].min(self.shape.get(1).copied().unwrap_or(0));
        for c in 0..channels {
            self.values[c * row + c * taps + tap] += value;
        }
    }
}

/// The identity of a temporal `(3,1,1)` or pointwise `(1,1,1)` conv: the last tap is the
/// current frame (causal padding repeats frame 0 in front).
fn identity(shape: &[usize]) -> Array {
    let mut w = Array::zeros(shape);
    let last = w.taps().saturating_sub(1);
    w.add_to_diagonal(last, 1.0);
    w
}

/// The 3-D Haar channel holding image Haar channel `channel` for a still frame.
///
/// Per level the 2-D patcher orders bands `2·w + h`, the 3-D one `4·t + 2·h + w`; a repeated frame
/// has only the temporally-low bands (t = 0), with the same values (both scale a level by the
/// same factor). Levels nest outside-in: channel = band_L·(C·B^(L−1)) + … + band_1·C + c.
pub fn video_haar_channel(channel: usize, levels: usize) -> usize {
    let (mut image_stride, mut video_stride) =
        (3 * 4usize.pow(levels as u32), 3 * 8usize.pow(levels as u32));
    let mut rest = channel;
    let mut video = 0;
    for _ in 0..levels {
        image_stride /= 4;
        video_stride /= 8;
        let band = rest / image_stride;
        rest %= image_stride;
        let (w, h) = (band >> 1, band & 1);
        video += (2 * h + w) * video_stride;
    }
    video + rest
}

/// The image key whose tensor a video key's spatial or pointwise half mirrors, with the decoder
/// levels aligned from the output end (level 0 changes the width in both networks).
fn image_key(video_key: &str, decoder_level_shift: isize) -> Option<String> {
    let mut key = video_key
        .replace(".conv3d.", ".")
        .replace("attn_1.0.", "attn_1.")
        .replace(".norm.norm.", ".norm.");
    for (from, to) in [
        ("norm1.norm.", "norm1."),
        ("norm2.norm.", "norm2."),
        ("norm_out.norm.", "norm_out."),
        ("conv_in.0.", "conv_in."),
        ("conv_out.0.", "conv_out."),
        ("conv1.0.", "conv1."),
        ("conv2.0.", "conv2."),
    ] {
        key = key.replace(from, to);
    }
    if let Some(rest) = key.strip_prefix("decoder.up.") {
        let (level, tail) = rest.split_once('.')?;
        let level: isize = level.parse().ok()?;
        let mapped = if level == 0 {
            0
        } else {
            level + decoder_level_shift
        };
        if mapped < 0 {
            return None;
        }
        key = format!("decoder.up.{mapped}.{tail}");
    }
    Some(key)
}

/// Level number after `prefix` in `key` (`encoder.down.` / `decoder.up.`).
fn level_of(key: &str, prefix: &str) -> Option<usize> {
    key.strip_prefix(prefix)?.split('.').next()?.parse().ok()
}

/// How many levels the image network's encoder or decoder has (`prefix` = `encoder.down.`/…).
fn level_count(image: &HashMap<String, Array>, prefix: &str) -> usize {
    image
        .keys()
        .filter_map(|k| level_of(k, prefix))
        .max()
        .map_or(0, |m| m + 1)
}

/// Builds every tensor of the video network `video` (whose fresh initial values are `fresh`)
/// from the image network's `image` tensors.
pub fn inflate_image_weights(
    image: &HashMap<String, Tensor>,
    video: &NetworkConfig,
    fresh: &BTreeMap<String, Tensor>,
) -> Result<Inflation> {
    if !video.family.is_video() {
        return Err(TrainError::Invalid(format!(
            "inflation builds a video network; {} is an image family",
            video.family.name()
        )));
    }
    if image.keys().any(|k| k.contains(".conv3d.")) {
        return Err(TrainError::Invalid(
            "the checkpoint to inflate is already a video network; give an image model (CI/DI)"
                .into(),
        ));
    }
    let image: HashMap<String, Array> = image
        .iter()
        .map(|(k, t)| Ok((k.clone(), Array::from_tensor(t)?)))
        .collect::<Result<_>>()?;
    let conv_in = image.get("encoder.conv_in.weight").ok_or_else(|| {
        TrainError::Invalid("the image checkpoint has no `encoder.conv_in.weight`".into())
    })?;
    let haar_levels = video.haar_levels();
    if conv_in.shape.get(1) != Some(&(3 * 4usize.pow(haar_levels as u32))) {
        return Err(TrainError::Invalid(format!(
            "the image network's patch ({} Haar channels) differs from the video network's \
             (patch size {}); inflate from an image model of the same patch size",
            conv_in.shape.get(1).copied().unwrap_or(0),
            video.patch_size
        )));
    }
    let plan = Plan::new(&image, video);
    let mut weights = HashMap::new();
    let mut notes = Vec::new();
    for (name, fresh_tensor) in fresh {
        let shape = fresh_tensor.dims();
        let built = match plan.build(name, &Array::from_tensor(fresh_tensor)?, &image)? {
            Some(array) if array.shape == shape => array.into_tensor()?,
            Some(array) => {
                notes.push(format!(
                    "`{name}`: the image tensor has shape {:?}, not {shape:?}; initialised fresh",
                    array.shape
                ));
                fresh_tensor.clone()
            }
            None if name.contains(".mid.attn_1.1.") => fresh_tensor.clone(),
            None => {
                notes.push(format!("`{name}`: no image counterpart; initialised fresh"));
                fresh_tensor.clone()
            }
        };
        weights.insert(name.clone(), built);
    }
    if notes.len() * 2 > fresh.len() {
        return Err(TrainError::Invalid(format!(
            "{} of the video network's {} tensors have no image counterpart of the same shape \
             (first: {}); inflate from an image model of the same width (`--width`)",
            notes.len(),
            fresh.len(),
            notes.first().map_or("", String::as_str)
        )));
    }
    notes.push(
        "the temporal attention (no image counterpart) starts as a no-op: zero output \
         projection, fresh q, k, v"
            .into(),
    );
    Ok(Inflation { weights, notes })
}

/// Which image tensors feed which video tensors.
struct Plan {
    haar_levels: usize,
    /// Decoder level `j ≥ 1` of the video network mirrors image level `j + shift`.
    decoder_level_shift: isize,
    /// Video decoder levels with a spatial upsampler, in execution order, each paired with the
    /// image level whose `Upsample` runs at the same position (if any).
    upsamplers: Vec<(usize, Option<usize>)>,
    /// The image's `z_channels` differ from the video's: the quantiser convs are folded.
    fold_z: bool,
}

impl Plan {
    fn new(image: &HashMap<String, Array>, video: &NetworkConfig) -> Self {
        let video_levels = video.decoder_channels_mult.len();
        let image_levels = level_count(image, "decoder.up.");
        // Both in execution order (the coarsest level first).
        let image_ups: Vec<usize> = (1..image_levels)
            .rev()
            .filter(|l| image.contains_key(&format!("decoder.up.{l}.upsample.conv.weight")))
            .collect();
        let upsamplers = (1..video_levels)
            .rev()
            .filter(|&l| video.decoder_upsample(l).0)
            .enumerate()
            .map(|(i, l)| (l, image_ups.get(i).copied()))
            .collect();
        let image_z = image
            .get("encoder.conv_out.weight")
            .map(|w| w.shape[0])
            .unwrap_or(video.z_channels);
        Self {
            haar_levels: video.haar_levels(),
            decoder_level_shift: image_levels as isize - video_levels as isize,
            upsamplers,
            fold_z: image_z != video.z_channels,
        }
    }

    /// The value of video tensor `name`, or `None` when it has no image counterpart.
    fn build(
        &self,
        name: &str,
        fresh: &Array,
        image: &HashMap<String, Array>,
    ) -> Result<Option<Array>> {
        let shape = fresh.shape.as_slice();
        let is_bias = name.ends_with(".bias");
        if name.contains(".mid.attn_1.1.") {
            // Temporal attention: a zero output projection makes the block a residual no-op.
            return Ok(name.contains(".proj_out.").then(|| Array::zeros(shape)));
        }
        if name.contains(".downsample.") {
            return Ok(Some(self.downsampler(name, shape, image)));
        }
        if name.contains(".upsample.") {
            return Ok(Some(self.upsampler(name, shape, image)));
        }
        if is_temporal_half(name) {
            return Ok(Some(if is_bias {
                Array::zeros(shape)
            } else {
                identity(shape)
            }));
        }
        if self.fold_z {
            if let Some(folded) = fold_quantiser(name, fresh, image)? {
                return Ok(Some(folded));
            }
        }
        let Some(key) = image_key(name, self.decoder_level_shift) else {
            return Ok(None);
        };
        let Some(source) = image.get(&key) else {
            return Ok(None);
        };
        Ok(Some(match name {
            "encoder.conv_in.0.conv3d.weight" => self.scatter_haar_inputs(source, shape),
            "decoder.conv_out.0.conv3d.weight" | "decoder.conv_out.0.conv3d.bias" => {
                self.scatter_haar_outputs(source, shape)
            }
            _ => {
                let mut array = source.clone();
                if array.values.len() == shape.iter().product::<usize>() {
                    // A 2-D kernel is a 3-D one with one temporal tap.
                    array.shape = shape.to_vec();
                }
                array
            }
        }))
    }

    fn scatter_haar_inputs(&self, source: &Array, shape: &[usize]) -> Array {
        let mut out = Array::zeros(shape);
        let (in_channels, taps) = (source.shape[1], source.taps());
        let row = out.row();
        if taps != out.taps() {
            return out;
        }
        for o in 0..source.shape[0].min(shape[0]) {
            for i in 0..in_channels {
                let v = video_haar_channel(i, self.haar_levels);
                if v >= shape[1] {
                    continue;
                }
                let from = o * source.row() + i * taps;
                let to = o * row + v * taps;
                out.values[to..to + taps].copy_from_slice(&source.values[from..from + taps]);
            }
        }
        out
    }

    fn scatter_haar_outputs(&self, source: &Array, shape: &[usize]) -> Array {
        let mut out = Array::zeros(shape);
        let (row, out_row) = (source.row(), out.row());
        if row != out_row {
            return out;
        }
        for o in 0..source.shape[0] {
            let v = video_haar_channel(o, self.haar_levels);
            if v < shape[0] {
                out.values[v * row..(v + 1) * row]
                    .copy_from_slice(&source.values[o * row..(o + 1) * row]);
            }
        }
        out
    }

    /// Downsampler: `conv1` (spatial) is the image's stride-2 conv less the 2x2 average pool the
    /// hybrid module adds (taps (0,0), (0,1), (1,0), (1,1) of the 3x3 window), or zero (pool
    /// only) where the image has no downsampler at this level.
    fn downsampler(&self, name: &str, shape: &[usize], image: &HashMap<String, Array>) -> Array {
        let level = level_of(name, "encoder.down.").unwrap_or(usize::MAX);
        let image_conv = format!("encoder.down.{level}.downsample.conv.");
        let pool = [(0, 0.25), (1, 0.25), (3, 0.25), (4, 0.25)];
        hybrid_resampler(name, shape, image, ".conv1.", Some(image_conv), &pool)
    }

    /// Upsampler: `conv2` (spatial, residual) is the image's post-upsampling conv less the
    /// identity the hybrid module adds, or zero where the image has no upsampler at this position.
    fn upsampler(&self, name: &str, shape: &[usize], image: &HashMap<String, Array>) -> Array {
        let level = level_of(name, "decoder.up.").unwrap_or(usize::MAX);
        let image_conv = self
            .upsamplers
            .iter()
            .find(|(l, _)| *l == level)
            .and_then(|(_, image_level)| *image_level)
            .map(|l| format!("decoder.up.{l}.upsample.conv."));
        hybrid_resampler(name, shape, image, ".conv2.", image_conv, &[(4, 1.0)])
    }
}

/// One tensor of a hybrid resampler. Its spatial conv (`spatial_conv`: `.conv1.` when
/// downsampling, `.conv2.` when upsampling) takes the image conv whose keys start with
/// `image_conv`, less `own_path` (the per-channel taps and weights of the path the module adds
/// around the conv), or zero where there is none; the temporal conv starts at zero (leaving the
/// module's own pooling or repeat) and `conv3` as the identity.
fn hybrid_resampler(
    name: &str,
    shape: &[usize],
    image: &HashMap<String, Array>,
    spatial_conv: &str,
    image_conv: Option<String>,
    own_path: &[(usize, f32)],
) -> Array {
    let is_bias = name.ends_with(".bias");
    if name.contains(spatial_conv) {
        let suffix = if is_bias { "bias" } else { "weight" };
        let source = image_conv.and_then(|prefix| image.get(&format!("{prefix}{suffix}")));
        return match source {
            Some(source) if source.values.len() == shape.iter().product::<usize>() => {
                let mut array = Array {
                    shape: shape.to_vec(),
                    values: source.values.clone(),
                };
                if !is_bias {
                    for &(tap, weight) in own_path {
                        array.add_to_diagonal(tap, -weight);
                    }
                }
                array
            }
            _ => Array::zeros(shape),
        };
    }
    if name.contains(".conv3.") && !is_bias {
        return identity(shape);
    }
    Array::zeros(shape)
}

/// The temporal `(3,1,1)` half of a factorized conv (`….1.conv3d.*` outside the resamplers and
/// the attention, whose convs are pointwise).
fn is_temporal_half(name: &str) -> bool {
    ["conv_in.1.", "conv_out.1.", "conv1.1.", "conv2.1."]
        .iter()
        .any(|part| name.contains(part))
}

/// Folds the image's quantiser convs into the neighbouring convs when the image network's
/// `z_channels` differ from the video network's (discrete image networks: 256, video: 16).
///
/// Encoder: `quant_conv ∘ conv_out` is one 3x3 conv to the latent channels; it fills the first
/// `latent` output channels of `conv_out`, and the video `quant_conv` picks them (the other
/// channels keep their fresh values and a zero weight in `quant_conv`, so they can learn).
/// Decoder: `conv_in ∘ post_quant_conv` is one 3x3 conv from the latent channels (exact away from
/// the border, where the image pads after the bias); the video `post_quant_conv` passes the
/// latent through in its first channels.
fn fold_quantiser(
    name: &str,
    fresh: &Array,
    image: &HashMap<String, Array>,
) -> Result<Option<Array>> {
    let shape = fresh.shape.as_slice();
    let get = |key: &str| {
        image
            .get(key)
            .ok_or_else(|| TrainError::Invalid(format!("the image checkpoint lacks `{key}`")))
    };
    Ok(match name {
        "encoder.conv_out.0.conv3d.weight" | "encoder.conv_out.0.conv3d.bias" => {
            let (conv_w, conv_b) = (
                get("encoder.conv_out.weight")?,
                get("encoder.conv_out.bias")?,
            );
            let (quant_w, quant_b) = (get("quant_conv.weight")?, get("quant_conv.bias")?);
            let (latent, z) = (quant_w.shape[0], quant_w.shape[1]);
            let row = conv_w.row();
            let is_bias = name.ends_with(".bias");
            // Channels past the latent keep their fresh values: zero there and in `quant_conv`
            // would be a point where neither gets a gradient.
            let mut out = fresh.clone();
            if latent > shape[0] || (!is_bias && out.row() != row) {
                return Ok(None);
            }
            out.values[..latent * if is_bias { 1 } else { row }].fill(0.0);
            for l in 0..latent {
                for zc in 0..z {
                    let q = quant_w.values[l * z + zc];
                    if is_bias {
                        out.values[l] += q * conv_b.values[zc];
                    } else {
                        for (o, v) in out.values[l * row..(l + 1) * row]
                            .iter_mut()
                            .zip(&conv_w.values[zc * row..(zc + 1) * row])
                        {
                            *o += q * v;
                        }
                    }
                }
                if is_bias {
                    out.values[l] += quant_b.values[l];
                }
            }
            Some(out)
        }
        // (latent, z_video, 1, 1, 1): picks the first `latent` channels.
        "quant_conv.conv3d.weight" => Some(identity(shape)),
        "post_quant_conv.conv3d.weight" => {
            // (z_video, latent, 1, 1, 1): the latent passes through in the first channels; the
            // others keep their fresh rows (with zero columns in `conv_in`, so both can learn).
            let mut w = fresh.clone();
            let latent = shape.get(1).copied().unwrap_or(0);
            let reset = latent * w.row();
            w.values[..reset].fill(0.0);
            w.add_to_diagonal(0, 1.0);
            Some(w)
        }
        "quant_conv.conv3d.bias" | "post_quant_conv.conv3d.bias" => Some(Array::zeros(shape)),
        "decoder.conv_in.0.conv3d.weight" | "decoder.conv_in.0.conv3d.bias" => {
            let (conv_w, conv_b) = (get("decoder.conv_in.weight")?, get("decoder.conv_in.bias")?);
            let (post_w, post_b) = (get("post_quant_conv.weight")?, get("post_quant_conv.bias")?);
            let (z, latent) = (post_w.shape[0], post_w.shape[1]);
            let (out_channels, taps) = (conv_w.shape[0], conv_w.taps());
            let is_bias = name.ends_with(".bias");
            let mut out = Array::zeros(shape);
            if is_bias {
                for o in 0..out_channels.min(shape[0]) {
                    let mut b = conv_b.values[o];
                    for zc in 0..z {
                        let tap_sum: f32 = conv_w.values
                            [o * conv_w.row() + zc * taps..o * conv_w.row() + (zc + 1) * taps]
                            .iter()
                            .sum();
                        b += tap_sum * post_b.values[zc];
                    }
                    out.values[o] = b;
                }
                return Ok(Some(out));
            }
            if shape.len() < 2 || latent > shape[1] || out.taps() != taps {
                return Ok(None);
            }
            let out_row = out.row();
            for o in 0..out_channels.min(shape[0]) {
                for l in 0..latent {
                    for zc in 0..z {
                        let p = post_w.values[zc * latent + l];
                        let from = o * conv_w.row() + zc * taps;
                        let to = o * out_row + l * taps;
                        for t in 0..taps {
                            out.values[to + t] += p * conv_w.values[from + t];
                        }
                    }
                }
            }
            Some(out)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::config::find_variant;
    use crate::tokenizer::haar::tests::max_abs_diff;
    use crate::tokenizer::haar::{self, HAAR_TAP_F32};
    use crate::train::params::{tokenizer_from_tensors, Parameters};

    /// The nano width of `variant` (32 channels, multipliers 1/2/2, one block per level).
    fn nano(variant: &str) -> NetworkConfig {
        let base = find_variant(variant).expect("variant").config;
        NetworkConfig {
            channels: 32,
            channels_mult: vec![1, 2, 2],
            decoder_channels_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            ..base
        }
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// A freshly initialised network's tensors, by name.
    fn weights(config: &NetworkConfig, seed: u64) -> BTreeMap<String, Tensor> {
        Parameters::initialised(config, seed, &Device::Cpu)
            .unwrap()
            .snapshot()
            .unwrap()
    }

    /// A random image nano of `image_variant`'s family, its weights, and `video` inflated from it.
    fn inflate(image_variant: &str, video: &NetworkConfig) -> (HashMap<String, Tensor>, Inflation) {
        let image: HashMap<String, Tensor> = weights(&nano(image_variant), 1).into_iter().collect();
        let inflated = inflate_image_weights(&image, video, &weights(video, 2)).unwrap();
        (image, inflated)
    }

    /// The 3-D patcher holds a still frame's 2-D Haar bands, unscaled, in the channels
    /// `video_haar_channel` names, and nothing in the others.
    #[test]
    fn a_still_frame_s_haar_bands_land_in_the_named_video_channels() {
        let image = random(&[1, 3, 16, 16], 7);
        let bands = haar::patch_2d(image.clone(), 4, HAAR_TAP_F32).unwrap();
        let video = haar::patch_3d(image.unsqueeze(1).unwrap(), 4, HAAR_TAP_F32)
            .unwrap()
            .squeeze(1)
            .unwrap();
        assert_eq!(video.dims(), &[1, 192, 4, 4]);
        let mut covered = [false; 192];
        for i in 0..48 {
            let v = video_haar_channel(i, 2);
            covered[v] = true;
            let d = max_abs_diff(
                &bands.narrow(1, i, 1).unwrap(),
                &video.narrow(1, v, 1).unwrap(),
            );
            assert!(d < 1e-5, "image channel {i} -> video {v}: differs by {d}");
        }
        for (v, _) in covered.iter().enumerate().filter(|(_, c)| !**c) {
            let rest = video
                .narrow(1, v, 1)
                .unwrap()
                .abs()
                .unwrap()
                .max_keepdim(2)
                .unwrap();
            let m: f32 = rest
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(m < 1e-5, "video channel {v} holds {m} for a still frame");
        }
    }

    /// Reconstructions (B, 3, T, H, W) of a clip that cuts from still frame A to still frame B at
    /// frame 9, and of A and B alone.
    fn cut_and_stills(
        weights: HashMap<String, Tensor>,
        config: &NetworkConfig,
    ) -> (Tensor, Tensor, Tensor) {
        let model = tokenizer_from_tensors(config, weights, &Device::Cpu).unwrap();
        let (a, b) = (random(&[1, 3, 1, 32, 32], 3), random(&[1, 3, 1, 32, 32], 4));
        let clip = Tensor::cat(
            &[
                a.repeat((1, 1, 9, 1, 1)).unwrap(),
                b.repeat((1, 1, 8, 1, 1)).unwrap(),
            ],
            2,
        )
        .unwrap();
        let run = |x: &Tensor| model.decode(&model.encode(x).unwrap()).unwrap();
        (run(&clip), run(&a), run(&b))
    }

    /// Inflated, a video network's temporal halves and resamplers pass time through untouched:
    /// a cut between two still shots comes back as the two shots' own reconstructions, not
    /// smeared across the cut (frames 1–8 form one latent frame, 9–16 the next). A freshly
    /// initialised network carries shot A into shot B's frames (every causal network keeps
    /// the frames before the cut).
    #[test]
    fn an_inflated_video_network_keeps_a_cut_between_still_shots_sharp() {
        let video = nano("CV8x8x8");
        let (clip, a, b) = cut_and_stills(inflate("CI8x8", &video).1.weights, &video);
        assert_eq!(clip.dims(), &[1, 3, 17, 32, 32]);
        for t in 0..17 {
            let still = if t < 9 { &a } else { &b };
            let d = max_abs_diff(&clip.narrow(2, t, 1).unwrap(), still);
            assert!(d < 1e-4, "frame {t} differs from its still shot by {d}");
        }
        let (clip, _, b) = cut_and_stills(weights(&video, 2).into_iter().collect(), &video);
        let d = max_abs_diff(&clip.narrow(2, 12, 1).unwrap(), &b);
        assert!(
            d > 1e-3,
            "a fresh network kept the shot too ({d}): the check proves nothing"
        );
    }

    /// The image network's kernels arrive where they belong: spatial halves unchanged, the
    /// stride-2 conv less the pool the hybrid downsampler adds, the upsampling conv less the
    /// identity the hybrid upsampler adds, and the Haar channels moved.
    #[test]
    fn inflation_places_the_image_kernels_in_the_spatial_halves() {
        let (image, inflated) = inflate("CI8x8", &nano("CV8x8x8"));
        let get = |k: &str| inflated.weights.get(k).unwrap().squeeze(2).unwrap();
        let d = max_abs_diff(
            &get("encoder.down.1.block.0.conv1.0.conv3d.weight"),
            &image["encoder.down.1.block.0.conv1.weight"],
        );
        assert!(d == 0.0);
        // Hybrid downsampler: conv1 + avgpool must equal the image's conv.
        let pool = {
            let mut p = Array::zeros(&[32, 32, 3, 3]);
            for tap in [0, 1, 3, 4] {
                p.add_to_diagonal(tap, 0.25);
            }
            p.into_tensor().unwrap()
        };
        let down = (get("encoder.down.0.downsample.conv1.conv3d.weight") + pool).unwrap();
        assert!(max_abs_diff(&down, &image["encoder.down.0.downsample.conv.weight"]) < 1e-6);
        // Hybrid upsampler (video level 1 runs where the image's level 2 does): conv2 + x.
        let eye = {
            let mut p = Array::zeros(&[64, 64, 3, 3]);
            p.add_to_diagonal(4, 1.0);
            p.into_tensor().unwrap()
        };
        let up = (get("decoder.up.1.upsample.conv2.conv3d.weight") + eye).unwrap();
        assert!(max_abs_diff(&up, &image["decoder.up.2.upsample.conv.weight"]) < 1e-6);
        let conv_in = get("encoder.conv_in.0.conv3d.weight");
        let v = video_haar_channel(5, 2);
        let d = max_abs_diff(
            &conv_in.narrow(1, v, 1).unwrap(),
            &image["encoder.conv_in.weight"].narrow(1, 5, 1).unwrap(),
        );
        assert!(d == 0.0);
        assert!(
            inflated
                .notes
                .iter()
                .all(|n| !n.contains("initialised fresh")),
            "{:?}",
            inflated.notes
        );
    }

    /// A discrete image network (z = 256) inflated into a discrete video one (z = 16): its
    /// `quant_conv ∘ conv_out` and `conv_in ∘ post_quant_conv` become single convs, computing
    /// the same latent and the same decoder features (inside the border).
    #[test]
    fn a_z_channel_mismatch_folds_the_quantiser_convs() {
        use candle_core::Module;
        let video = nano("DV8x8x8");
        assert_ne!(nano("DI8x8").z_channels, video.z_channels);
        let (image, inflated) = inflate("DI8x8", &video);
        let w = inflated.weights;
        let conv = |x: &Tensor, weight: &Tensor, bias: &Tensor, pad: usize| {
            let weight = if weight.rank() == 5 {
                weight.squeeze(2).unwrap()
            } else {
                weight.clone()
            };
            candle_nn::Conv2d::new(
                weight,
                Some(bias.clone()),
                candle_nn::Conv2dConfig {
                    padding: pad,
                    ..Default::default()
                },
            )
            .forward(x)
            .unwrap()
        };
        let features = random(&[1, 64, 6, 6], 9);
        let image_latent = conv(
            &conv(
                &features,
                &image["encoder.conv_out.weight"],
                &image["encoder.conv_out.bias"],
                1,
            ),
            &image["quant_conv.weight"],
            &image["quant_conv.bias"],
            0,
        );
        let video_latent = conv(
            &conv(
                &features,
                &w["encoder.conv_out.0.conv3d.weight"],
                &w["encoder.conv_out.0.conv3d.bias"],
                1,
            ),
            &w["quant_conv.conv3d.weight"],
            &w["quant_conv.conv3d.bias"],
            0,
        );
        assert!(max_abs_diff(&image_latent, &video_latent) < 1e-4);

        let latent = random(&[1, 6, 6, 6], 10);
        let image_out = conv(
            &conv(
                &latent,
                &image["post_quant_conv.weight"],
                &image["post_quant_conv.bias"],
                0,
            ),
            &image["decoder.conv_in.weight"],
            &image["decoder.conv_in.bias"],
            1,
        );
        let video_out = conv(
            &conv(
                &latent,
                &w["post_quant_conv.conv3d.weight"],
                &w["post_quant_conv.conv3d.bias"],
                0,
            ),
            &w["decoder.conv_in.0.conv3d.weight"],
            &w["decoder.conv_in.0.conv3d.bias"],
            1,
        );
        let inner = |t: &Tensor| t.narrow(2, 1, 4).unwrap().narrow(3, 1, 4).unwrap();
        assert!(max_abs_diff(&inner(&image_out), &inner(&video_out)) < 1e-4);
    }

    /// An image network of another width, or a video checkpoint, is refused with a message
    /// that says what to give instead, rather than silently starting most tensors afresh.
    #[test]
    fn a_mismatched_checkpoint_is_refused_with_a_reason() {
        let video = nano("CV8x8x8");
        let fresh = weights(&video, 2);
        let wide = NetworkConfig {
            channels: 64,
            ..nano("CI8x8")
        };
        let image: HashMap<String, Tensor> = weights(&wide, 1).into_iter().collect();
        let err = inflate_image_weights(&image, &video, &fresh)
            .err()
            .expect("a 64-wide image network cannot start a 32-wide video one")
            .to_string();
        assert!(err.contains("same width"), "{err}");
        let as_video: HashMap<String, Tensor> = fresh.clone().into_iter().collect();
        let err = inflate_image_weights(&as_video, &video, &fresh)
            .err()
            .expect("a video checkpoint is not an image network")
            .to_string();
        assert!(err.contains("already a video network"), "{err}");
    }
}
