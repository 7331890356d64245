//! diffusers' `AutoencoderKLCosmos` (CV8x8x8 in diffusers format) back to the official key names.
//!
//! diffusers renames the official keys by substring replacement (`down.i` → `down_blocks.i`,
//! `up.i` → `up_blocks.{n-1-i}`, `.block.` → `.resnets.`, `.0.conv3d` → `.conv_s`, …); this undoes
//! it segment by segment.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::tokenizer::config::{Family, NetworkConfig};
use crate::tokenizer::{Result, TokenizerError};

/// Whether safetensors keys are in diffusers' naming.
pub fn looks_like_diffusers<'a>(mut keys: impl Iterator<Item = &'a String>) -> bool {
    keys.any(|k| k.contains("down_blocks.") || k.contains(".conv_s.") || k.contains("mid_block."))
}

fn level_count(keys: &[&String]) -> usize {
    keys.iter()
        .filter_map(|k| k.strip_prefix("decoder.up_blocks."))
        .filter_map(|rest| rest.split('.').next())
        .filter_map(|n| n.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1)
}

/// The official name of one diffusers key, given the number of decoder levels.
pub fn official_key_from_diffusers(key: &str, decoder_levels: usize) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len() + 2);
    let mut i = 0;
    while let Some(&part) = parts.get(i) {
        let next = parts.get(i + 1).copied();
        match (part, next) {
            ("down_blocks", Some(n)) => {
                out.push(format!("down.{n}"));
                i += 2;
                continue;
            }
            ("up_blocks", Some(n)) => {
                let j: usize = n.parse().unwrap_or(0);
                out.push(format!("up.{}", decoder_levels.saturating_sub(1 + j)));
                i += 2;
                continue;
            }
            ("mid_block", Some("resnets")) => {
                let which = match parts.get(i + 2) {
                    Some(&"0") => "block_1",
                    _ => "block_2",
                };
                out.push(format!("mid.{which}"));
                i += 3;
                continue;
            }
            ("mid_block", Some("attentions")) => {
                out.push("mid.attn_1.0".into());
                i += 3;
                continue;
            }
            ("mid_block", Some("temp_attentions")) => {
                out.push("mid.attn_1.1".into());
                i += 3;
                continue;
            }
            ("resnets", _) => out.push("block".into()),
            ("downsamplers", Some("0")) => {
                out.push("downsample".into());
                i += 2;
                continue;
            }
            ("upsamplers", Some("0")) => {
                out.push("upsample".into());
                i += 2;
                continue;
            }
            ("conv_s", _) => out.push("0.conv3d".into()),
            ("conv_t", _) => out.push("1.conv3d".into()),
            ("to_q", _) | ("to_k", _) | ("to_v", _) => {
                out.push(format!("{}.conv3d", part.trim_start_matches("to_")));
            }
            ("to_out", Some("0")) => {
                out.push("proj_out.conv3d".into());
                i += 2;
                continue;
            }
            ("conv_shortcut", _) => out.push("nin_shortcut.conv3d".into()),
            ("conv1" | "conv2" | "conv3", Some("weight" | "bias"))
                if out
                    .last()
                    .is_some_and(|p| p == "downsample" || p == "upsample") =>
            {
                out.push(format!("{part}.conv3d"));
            }
            ("quant_conv" | "post_quant_conv", Some("weight" | "bias")) if i == 0 => {
                out.push(format!("{part}.conv3d"));
            }
            _ => out.push(part.to_string()),
        }
        i += 1;
    }
    out.join(".")
}

/// Renames every tensor to its official key.
pub fn official_from_diffusers(
    tensors: HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let keys: Vec<&String> = tensors.keys().collect();
    let levels = level_count(&keys);
    if levels == 0 {
        return Err(TokenizerError::InvalidConfig(
            "diffusers checkpoint without decoder.up_blocks.*: not an AutoencoderKLCosmos".into(),
        ));
    }
    Ok(tensors
        .into_iter()
        .map(|(k, v)| (official_key_from_diffusers(&k, levels), v))
        .collect())
}

/// The Tokenscope configuration of a diffusers `AutoencoderKLCosmos` config.json.
pub fn config_from_diffusers_json(value: &serde_json::Value) -> Result<NetworkConfig> {
    let bad = |why: &str| TokenizerError::InvalidConfig(format!("diffusers config.json: {why}"));
    let list = |name: &str| -> Result<Vec<usize>> {
        value
            .get(name)
            .and_then(|v| serde_json::from_value::<Vec<usize>>(v.clone()).ok())
            .ok_or_else(|| bad(&format!("missing `{name}`")))
    };
    let number = |name: &str| -> Result<usize> {
        value
            .get(name)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| bad(&format!("missing `{name}`")))
    };
    let encoder = list("encoder_block_out_channels")?;
    let decoder = list("decode_block_out_channels")?;
    let channels = encoder
        .first()
        .copied()
        .ok_or_else(|| bad("empty encoder_block_out_channels"))?;
    if channels == 0 {
        return Err(bad("zero channels"));
    }
    let channels_mult: Vec<usize> = encoder.iter().skip(1).map(|c| c / channels).collect();
    // decode_block_out_channels lists the decoder levels from up.0 (highest resolution) upward,
    // followed by the mid-block width.
    let decoder_channels_mult: Vec<usize> = decoder
        .iter()
        .take(decoder.len().saturating_sub(1))
        .map(|c| c / channels)
        .collect();
    let latent_channels = number("latent_channels")?;
    let config = NetworkConfig {
        family: Family::CV,
        channels,
        channels_mult,
        decoder_channels_mult,
        num_res_blocks: number("num_layers")?,
        z_channels: latent_channels,
        latent_channels,
        patch_size: number("patch_size")?,
        spatial_compression: number("spatial_compression_ratio")?,
        temporal_compression: number("temporal_compression_ratio")?,
        legacy_mode: false,
    };
    config.check()?;
    Ok(config)
}
