//! Every released Cosmos tokenizer variant by name, and custom configurations from JSON.
//!
//! The numbers come from the official config dictionaries (Cosmos-Tokenizer `networks/configs.py`,
//! `NVIDIA/Cosmos@aa27ba3` for the -LowRes ones, cosmos-predict1 for the Tokenize1 names).

use serde::{Deserialize, Serialize};

use super::TokenizerError;

/// Continuous or discrete bottleneck, image (2-D) or video (causal 3-D) network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    /// Continuous image.
    CI,
    /// Discrete image.
    DI,
    /// Continuous video.
    CV,
    /// Discrete video.
    DV,
}

impl Family {
    pub fn is_video(self) -> bool {
        matches!(self, Family::CV | Family::DV)
    }

    pub fn is_discrete(self) -> bool {
        matches!(self, Family::DI | Family::DV)
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::CI => "CI",
            Family::DI => "DI",
            Family::CV => "CV",
            Family::DV => "DV",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Family::CI => "continuous image",
            Family::DI => "discrete image",
            Family::CV => "continuous video",
            Family::DV => "discrete video",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "CI" => Some(Family::CI),
            "DI" => Some(Family::DI),
            "CV" => Some(Family::CV),
            "DV" => Some(Family::DV),
            _ => None,
        }
    }
}

/// FSQ levels of every released discrete tokenizer: a 64,000-entry implicit codebook.
pub const FSQ_LEVELS: [usize; 6] = [8, 8, 8, 5, 5, 5];

/// The architecture hyper-parameters of one tokenizer network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub family: Family,
    /// Base width (128 in every released model).
    pub channels: usize,
    /// Width multiplier per encoder level.
    pub channels_mult: Vec<usize>,
    /// Width multiplier per decoder level (differs from the encoder's only for the 0.1 CV4x8x8 class).
    pub decoder_channels_mult: Vec<usize>,
    /// Residual blocks per encoder level; the decoder has one more per level.
    pub num_res_blocks: usize,
    /// Encoder output width before `quant_conv`.
    pub z_channels: usize,
    /// Latent channels (continuous) or FSQ code dimensions (discrete, 6).
    pub latent_channels: usize,
    /// Haar patch size: 4 (two levels) or 2 (one level, the -LowRes/-360p models).
    pub patch_size: usize,
    pub spatial_compression: usize,
    /// 1 for image networks.
    pub temporal_compression: usize,
    /// Decoder temporal upsampling placement (every released model: false).
    pub legacy_mode: bool,
}

impl NetworkConfig {
    /// Number of learned spatial 2x resamplers.
    pub fn spatial_steps(&self) -> usize {
        log2(self.spatial_compression).saturating_sub(log2(self.patch_size))
    }

    /// Number of learned temporal 2x resamplers (video only).
    pub fn temporal_steps(&self) -> usize {
        if self.family.is_video() {
            log2(self.temporal_compression).saturating_sub(log2(self.patch_size))
        } else {
            0
        }
    }

    /// Haar levels applied by the patcher.
    pub fn haar_levels(&self) -> usize {
        log2(self.patch_size)
    }

    /// Encoder level `i`: (spatial, temporal) downsampling flags. In the video network the last level
    /// never has a resampler; in the image network every level `i < n_s` has one.
    pub fn encoder_downsample(&self, level: usize) -> (bool, bool) {
        let nres = self.channels_mult.len();
        if self.family.is_video() {
            if level + 1 >= nres {
                return (false, false);
            }
            (level < self.spatial_steps(), level < self.temporal_steps())
        } else {
            (level < nres && level < self.spatial_steps(), false)
        }
    }

    /// Decoder level `i`: (spatial, temporal) upsampling flags. Levels run from `nres - 1` down to 0.
    pub fn decoder_upsample(&self, level: usize) -> (bool, bool) {
        let nres = self.decoder_channels_mult.len();
        if level >= nres {
            return (false, false);
        }
        let (n_s, n_t) = (self.spatial_steps(), self.temporal_steps());
        if !self.family.is_video() {
            return (level + n_s >= nres, false);
        }
        if level == 0 {
            return (false, false);
        }
        let r = nres - 1 - level;
        let temporal = if self.legacy_mode {
            r < n_t
        } else {
            0 < r && r < n_t + 1
        };
        let spatial = temporal || (r < n_s && n_s > n_t);
        (spatial, temporal)
    }

    /// Input channels seen by the first convolution.
    pub fn patched_channels(&self) -> usize {
        let per_level: usize = if self.family.is_video() { 8 } else { 4 };
        3 * per_level.pow(self.haar_levels() as u32)
    }

    pub fn check(&self) -> Result<(), TokenizerError> {
        let bad = |why: String| Err(TokenizerError::InvalidConfig(why));
        if self.channels == 0
            || self.channels_mult.is_empty()
            || self.decoder_channels_mult.is_empty()
        {
            return bad("channels and channels_mult must be non-empty".into());
        }
        if !matches!(self.patch_size, 2 | 4) {
            return bad(format!(
                "patch_size must be 2 or 4, got {}",
                self.patch_size
            ));
        }
        for (what, value) in [
            ("spatial_compression", self.spatial_compression),
            ("temporal_compression", self.temporal_compression),
        ] {
            if !value.is_power_of_two() {
                return bad(format!("{what} must be a power of two, got {value}"));
            }
        }
        if self.spatial_compression < self.patch_size {
            return bad(format!(
                "spatial_compression {} is below the patch size {}",
                self.spatial_compression, self.patch_size
            ));
        }
        if self.family.is_video() && self.temporal_compression < self.patch_size {
            return bad(format!(
                "temporal_compression {} is below the patch size {}",
                self.temporal_compression, self.patch_size
            ));
        }
        let levels = self.channels_mult.len();
        let resampling_levels = if self.family.is_video() {
            levels - 1
        } else {
            levels
        };
        if self.spatial_steps() > resampling_levels || self.temporal_steps() > resampling_levels {
            return bad(format!(
                "{} encoder levels cannot reach spatial compression {}",
                levels, self.spatial_compression
            ));
        }
        if self.family.is_discrete() && self.latent_channels != FSQ_LEVELS.len() {
            return bad(format!(
                "discrete tokenizers use {} FSQ dimensions, got {}",
                FSQ_LEVELS.len(),
                self.latent_channels
            ));
        }
        if !self.family.is_video() {
            for width in self.level_widths() {
                if width % 32 != 0 {
                    return bad(format!(
                        "image networks use GroupNorm(32): every width must be a multiple of 32, got {width}"
                    ));
                }
            }
        }
        Ok(())
    }

    fn level_widths(&self) -> Vec<usize> {
        let mut widths = vec![self.channels];
        widths.extend(self.channels_mult.iter().map(|m| m * self.channels));
        widths.extend(self.decoder_channels_mult.iter().map(|m| m * self.channels));
        widths
    }

    /// Latent grid (t, h, w) for an input of `frames` x `height` x `width`.
    pub fn latent_shape(
        &self,
        frames: usize,
        height: usize,
        width: usize,
    ) -> (usize, usize, usize) {
        let t = if self.family.is_video() {
            1 + frames.saturating_sub(1) / self.temporal_compression
        } else {
            1
        };
        (
            t,
            height / self.spatial_compression,
            width / self.spatial_compression,
        )
    }

    /// Why an input of this size cannot go through the network as it is, if it cannot.
    pub fn check_input_size(
        &self,
        frames: usize,
        height: usize,
        width: usize,
    ) -> Result<(), TokenizerError> {
        let sc = self.spatial_compression;
        if height == 0 || width == 0 || !height.is_multiple_of(sc) || !width.is_multiple_of(sc) {
            return Err(TokenizerError::InvalidInput(format!(
                "height and width must be positive multiples of {sc} for this model, got {height}x{width} \
                 (the media commands pad automatically; raw tensors must already be padded)"
            )));
        }
        if self.family.is_video() {
            let tc = self.temporal_compression;
            if frames == 0 || !(frames - 1).is_multiple_of(tc) {
                return Err(TokenizerError::InvalidInput(format!(
                    "the frame count must be 1 + k*{tc} for this model, got {frames}"
                )));
            }
        }
        Ok(())
    }
}

fn log2(value: usize) -> usize {
    value.max(1).trailing_zeros() as usize
}

/// One released checkpoint family member: canonical name, configuration and where it is published.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Canonical name, e.g. `CV8x8x8` or `DV4x8x8-LowRes`.
    pub name: &'static str,
    /// Hugging Face repositories that publish weights of this architecture.
    pub hf_repos: &'static [&'static str],
    pub config: NetworkConfig,
}

struct Row {
    name: &'static str,
    family: Family,
    two_levels: bool,
    z_channels: usize,
    patch_size: usize,
    spatial: usize,
    temporal: usize,
    hf_repos: &'static [&'static str],
}

const ROWS: &[Row] = &[
    Row {
        name: "CI8x8",
        family: Family::CI,
        two_levels: false,
        z_channels: 16,
        patch_size: 4,
        spatial: 8,
        temporal: 1,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-CI8x8",
            "nvidia/Cosmos-Tokenizer-CI8x8",
        ],
    },
    Row {
        name: "CI16x16",
        family: Family::CI,
        two_levels: false,
        z_channels: 16,
        patch_size: 4,
        spatial: 16,
        temporal: 1,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-CI16x16",
            "nvidia/Cosmos-Tokenizer-CI16x16",
        ],
    },
    Row {
        name: "DI8x8",
        family: Family::DI,
        two_levels: false,
        z_channels: 256,
        patch_size: 4,
        spatial: 8,
        temporal: 1,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-DI8x8",
            "nvidia/Cosmos-Tokenizer-DI8x8",
        ],
    },
    Row {
        name: "DI16x16",
        family: Family::DI,
        two_levels: false,
        z_channels: 256,
        patch_size: 4,
        spatial: 16,
        temporal: 1,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-DI16x16",
            "nvidia/Cosmos-Tokenizer-DI16x16",
        ],
    },
    Row {
        name: "CV4x8x8",
        family: Family::CV,
        two_levels: true,
        z_channels: 16,
        patch_size: 4,
        spatial: 8,
        temporal: 4,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-CV4x8x8",
            "nvidia/Cosmos-Tokenizer-CV4x8x8",
        ],
    },
    Row {
        name: "CV8x8x8",
        family: Family::CV,
        two_levels: false,
        z_channels: 16,
        patch_size: 4,
        spatial: 8,
        temporal: 8,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-CV8x8x8",
            "nvidia/Cosmos-Tokenizer-CV8x8x8",
            "nvidia/Cosmos-1.0-Tokenizer-CV8x8x8",
            "nvidia/Cosmos-Tokenize1-CV8x8x8-720p",
        ],
    },
    Row {
        name: "CV8x16x16",
        family: Family::CV,
        two_levels: false,
        z_channels: 16,
        patch_size: 4,
        spatial: 16,
        temporal: 8,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-CV8x16x16",
            "nvidia/Cosmos-Tokenizer-CV8x16x16",
        ],
    },
    Row {
        name: "DV4x8x8",
        family: Family::DV,
        two_levels: false,
        z_channels: 16,
        patch_size: 4,
        spatial: 8,
        temporal: 4,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-DV4x8x8",
            "nvidia/Cosmos-Tokenizer-DV4x8x8",
        ],
    },
    Row {
        name: "DV8x8x8",
        family: Family::DV,
        two_levels: false,
        z_channels: 16,
        patch_size: 4,
        spatial: 8,
        temporal: 8,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-DV8x8x8",
            "nvidia/Cosmos-Tokenizer-DV8x8x8",
        ],
    },
    Row {
        name: "DV8x16x16",
        family: Family::DV,
        two_levels: false,
        z_channels: 16,
        patch_size: 4,
        spatial: 16,
        temporal: 8,
        hf_repos: &[
            "nvidia/Cosmos-0.1-Tokenizer-DV8x16x16",
            "nvidia/Cosmos-Tokenizer-DV8x16x16",
            "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16",
            "nvidia/Cosmos-Tokenize1-DV8x16x16-720p",
        ],
    },
    Row {
        name: "CI8x8-LowRes",
        family: Family::CI,
        two_levels: false,
        z_channels: 16,
        patch_size: 2,
        spatial: 8,
        temporal: 1,
        hf_repos: &[
            "nvidia/Cosmos-1.0-Tokenizer-CI8x8-LowRes",
            "nvidia/Cosmos-Tokenize1-CI8x8-360p",
        ],
    },
    Row {
        name: "CI16x16-LowRes",
        family: Family::CI,
        two_levels: false,
        z_channels: 16,
        patch_size: 2,
        spatial: 16,
        temporal: 1,
        hf_repos: &[
            "nvidia/Cosmos-1.0-Tokenizer-CI16x16-LowRes",
            "nvidia/Cosmos-Tokenize1-CI16x16-360p",
        ],
    },
    Row {
        name: "DI8x8-LowRes",
        family: Family::DI,
        two_levels: false,
        z_channels: 256,
        patch_size: 2,
        spatial: 8,
        temporal: 1,
        hf_repos: &[
            "nvidia/Cosmos-1.0-Tokenizer-DI8x8-LowRes",
            "nvidia/Cosmos-Tokenize1-DI8x8-360p",
        ],
    },
    Row {
        name: "DI16x16-LowRes",
        family: Family::DI,
        two_levels: false,
        z_channels: 256,
        patch_size: 2,
        spatial: 16,
        temporal: 1,
        hf_repos: &[
            "nvidia/Cosmos-1.0-Tokenizer-DI16x16-LowRes",
            "nvidia/Cosmos-Tokenize1-DI16x16-360p",
        ],
    },
    Row {
        name: "CV4x8x8-LowRes",
        family: Family::CV,
        two_levels: false,
        z_channels: 16,
        patch_size: 2,
        spatial: 8,
        temporal: 4,
        hf_repos: &[
            "nvidia/Cosmos-1.0-Tokenizer-CV4x8x8-LowRes",
            "nvidia/Cosmos-Tokenize1-CV4x8x8-360p",
        ],
    },
    Row {
        name: "DV4x8x8-LowRes",
        family: Family::DV,
        two_levels: false,
        z_channels: 256,
        patch_size: 2,
        spatial: 8,
        temporal: 4,
        hf_repos: &[
            "nvidia/Cosmos-1.0-Tokenizer-DV4x8x8-LowRes",
            "nvidia/Cosmos-Tokenize1-DV4x8x8-360p",
        ],
    },
];

impl Row {
    fn variant(&self) -> Variant {
        let mult = if self.two_levels {
            vec![2, 4]
        } else {
            vec![2, 4, 4]
        };
        Variant {
            name: self.name,
            hf_repos: self.hf_repos,
            config: NetworkConfig {
                family: self.family,
                channels: 128,
                channels_mult: mult.clone(),
                decoder_channels_mult: mult,
                num_res_blocks: 2,
                z_channels: self.z_channels,
                latent_channels: if self.family.is_discrete() { 6 } else { 16 },
                patch_size: self.patch_size,
                spatial_compression: self.spatial,
                temporal_compression: self.temporal,
                legacy_mode: false,
            },
        }
    }
}

/// Every released variant, in a stable display order.
pub fn all_variants() -> Vec<Variant> {
    ROWS.iter().map(Row::variant).collect()
}

/// Finds a variant by canonical name (`CV8x8x8`), Hugging Face repo id
/// (`nvidia/Cosmos-0.1-Tokenizer-CV8x8x8`), repo name without owner, or Tokenize1 name
/// (`Cosmos-Tokenize1-CI8x8-360p`, `CI8x8-360p`). Case-insensitive.
pub fn find_variant(name: &str) -> Option<Variant> {
    let wanted = name.trim().trim_end_matches('/').to_ascii_lowercase();
    let wanted = wanted.strip_suffix("-tiny").unwrap_or(&wanted).to_string();
    for row in ROWS {
        let canonical = row.name.to_ascii_lowercase();
        let short_720_360 = canonical
            .strip_suffix("-lowres")
            .map(|base| format!("{base}-360p"));
        let matches_repo = row.hf_repos.iter().any(|repo| {
            let repo = repo.to_ascii_lowercase();
            let bare = repo.rsplit('/').next().unwrap_or(&repo).to_string();
            wanted == repo || wanted == bare || wanted.ends_with(&format!("/{bare}"))
        });
        let is_720 =
            matches!(row.name, "CV8x8x8" | "DV8x16x16") && wanted == format!("{canonical}-720p");
        if wanted == canonical
            || matches_repo
            || is_720
            || short_720_360.as_deref() == Some(&wanted)
        {
            return Some(row.variant());
        }
    }
    None
}

/// Finds a variant named anywhere inside a path or repo string (e.g. a Hugging Face cache folder
/// `models--nvidia--Cosmos-0.1-Tokenizer-CV8x8x8/snapshots/...`). Longest match wins.
pub fn find_variant_in_text(text: &str) -> Option<Variant> {
    let lowered = text.to_ascii_lowercase().replace("--", "/");
    let mut best: Option<(usize, Variant)> = None;
    for row in ROWS {
        let mut names: Vec<String> = row
            .hf_repos
            .iter()
            .map(|r| r.to_ascii_lowercase())
            .collect();
        names.push(row.name.to_ascii_lowercase());
        for name in names {
            let bare = name.rsplit('/').next().unwrap_or(&name).to_string();
            if contains_token(&lowered, &bare)
                && best.as_ref().is_none_or(|(len, _)| bare.len() > *len)
            {
                best = Some((bare.len(), row.variant()));
            }
        }
    }
    best.map(|(_, variant)| variant)
}

/// `needle` occurs in `haystack` and is not followed by more name characters
/// (so `CV8x8x8` does not match inside `CV8x8x8x`), treating `-lowres`/`-360p` suffixes as part of
/// the name.
fn contains_token(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(at, _)| {
        let rest = haystack.get(at + needle.len()..).unwrap_or("");
        let before_ok = haystack
            .get(..at)
            .and_then(|b| b.chars().last())
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        let after_ok = rest
            .chars()
            .next()
            .is_none_or(|c| !c.is_ascii_alphanumeric() && c != 'x')
            && !rest.starts_with("-lowres")
            && !rest.starts_with("-360p");
        before_ok && after_ok
    })
}

/// The `config` object of a reference `config.json` (the official classes' keyword arguments), or a
/// whole file holding such an object under `config`.
#[derive(Debug, Deserialize)]
struct OfficialConfigJson {
    name: Option<String>,
    channels: usize,
    channels_mult: Vec<usize>,
    num_res_blocks: usize,
    z_channels: usize,
    #[serde(default)]
    latent_channels: Option<usize>,
    #[serde(default)]
    embedding_dim: Option<usize>,
    #[serde(default)]
    levels: Option<Vec<usize>>,
    #[serde(default)]
    quantizer: Option<String>,
    patch_size: usize,
    #[serde(default)]
    patch_method: Option<String>,
    spatial_compression: usize,
    #[serde(default)]
    temporal_compression: Option<usize>,
    #[serde(default)]
    legacy_mode: bool,
    #[serde(default)]
    encoder: Option<String>,
    #[serde(default)]
    formulation: Option<String>,
    #[serde(default)]
    z_factor: Option<usize>,
}

/// Parses a configuration JSON: either the official keyword-argument object, or a file with that
/// object under `config` (plus optionally `family` and `effective_decoder_channels_mult`), or a
/// Tokenscope-written `NetworkConfig` under `network`.
pub fn config_from_json(text: &str) -> Result<NetworkConfig, TokenizerError> {
    let bad = |why: String| TokenizerError::InvalidConfig(why);
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if let Some(network) = value.get("network") {
        let config: NetworkConfig = serde_json::from_value(network.clone())
            .map_err(|e| bad(format!("`network` object: {e}")))?;
        config.check()?;
        return Ok(config);
    }
    let (object, outer) = match value.get("config") {
        Some(inner) => (inner.clone(), Some(&value)),
        None => (value.clone(), None),
    };
    let raw: OfficialConfigJson =
        serde_json::from_value(object).map_err(|e| bad(format!("config object: {e}")))?;
    if let Some(method) = &raw.patch_method {
        if method != "haar" {
            return Err(bad(format!(
                "patch_method `{method}` is not supported (every released model uses `haar`)"
            )));
        }
    }
    if raw.z_factor.unwrap_or(1) != 1 {
        return Err(bad(
            "z_factor other than 1 (a VAE bottleneck) is not supported".into(),
        ));
    }
    if let Some(formulation) = &raw.formulation {
        if formulation != "AE" {
            return Err(bad(format!(
                "formulation `{formulation}` is not supported (every released continuous model is `AE`)"
            )));
        }
    }
    let family_name = outer
        .and_then(|o| o.get("family"))
        .and_then(|f| f.as_str())
        .map(str::to_string)
        .or(raw.name.clone());
    let discrete = raw.quantizer.is_some() || raw.levels.is_some() || raw.embedding_dim.is_some();
    let video = raw.temporal_compression.is_some()
        || matches!(raw.encoder.as_deref(), Some("FACTORIZED") | Some("BASE"));
    let family = family_name
        .as_deref()
        .and_then(Family::from_name)
        .unwrap_or(match (video, discrete) {
            (false, false) => Family::CI,
            (false, true) => Family::DI,
            (true, false) => Family::CV,
            (true, true) => Family::DV,
        });
    if let Some(levels) = &raw.levels {
        if levels.as_slice() != FSQ_LEVELS {
            return Err(bad(format!(
                "FSQ levels {levels:?} are not supported (released models use {FSQ_LEVELS:?})"
            )));
        }
    }
    if matches!(raw.encoder.as_deref(), Some("BASE")) {
        return Err(bad(
            "the non-factorized 3-D encoder (`BASE`) is not used by any released model and is not supported"
                .into(),
        ));
    }
    let decoder_channels_mult = outer
        .and_then(|o| o.get("effective_decoder_channels_mult"))
        .and_then(|m| serde_json::from_value::<Vec<usize>>(m.clone()).ok())
        .unwrap_or_else(|| raw.channels_mult.clone());
    let latent_channels = if family.is_discrete() {
        raw.embedding_dim.unwrap_or(6)
    } else {
        raw.latent_channels.unwrap_or(16)
    };
    let config = NetworkConfig {
        family,
        channels: raw.channels,
        channels_mult: raw.channels_mult,
        decoder_channels_mult,
        num_res_blocks: raw.num_res_blocks,
        z_channels: raw.z_channels,
        latent_channels,
        patch_size: raw.patch_size,
        spatial_compression: raw.spatial_compression,
        temporal_compression: if family.is_video() {
            raw.temporal_compression.unwrap_or(8)
        } else {
            1
        },
        legacy_mode: raw.legacy_mode,
    };
    config.check()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampler_plan_matches_the_spec_table() {
        let plan = |name: &str| {
            let v = find_variant(name).map(|v| v.config);
            let c = v.unwrap_or_else(|| panic!("{name} missing"));
            let enc: Vec<_> = (0..c.channels_mult.len())
                .map(|i| c.encoder_downsample(i))
                .collect();
            let dec: Vec<_> = (0..c.decoder_channels_mult.len())
                .map(|i| c.decoder_upsample(i))
                .collect();
            (enc, dec)
        };
        // (spatial, temporal) per level; decoder indexed by level (up.0 never upsamples).
        let none = (false, false);
        assert_eq!(
            plan("CV8x8x8"),
            (
                vec![(true, true), none, none],
                vec![none, (true, true), none]
            )
        );
        assert_eq!(
            plan("DV8x16x16"),
            (
                vec![(true, true), (true, false), none],
                vec![none, (true, true), (true, false)]
            )
        );
        assert_eq!(
            plan("DV4x8x8"),
            (
                vec![(true, false), none, none],
                vec![none, none, (true, false)]
            )
        );
        assert_eq!(
            plan("CV4x8x8"),
            (vec![(true, false), none], vec![none, (true, false)])
        );
        assert_eq!(
            plan("DV4x8x8-LowRes"),
            (
                vec![(true, true), (true, false), none],
                vec![none, (true, true), (true, false)]
            )
        );
        assert_eq!(
            plan("CI8x8"),
            (
                vec![(true, false), none, none],
                vec![none, none, (true, false)]
            )
        );
        assert_eq!(
            plan("CI16x16-LowRes"),
            (vec![(true, false); 3], vec![(true, false); 3])
        );
        assert_eq!(
            plan("CI16x16"),
            (
                vec![(true, false), (true, false), none],
                vec![none, (true, false), (true, false)]
            )
        );
    }

    #[test]
    fn names_resolve_from_every_published_form() {
        for (name, want) in [
            ("CV8x8x8", "CV8x8x8"),
            ("nvidia/Cosmos-0.1-Tokenizer-DV8x16x16", "DV8x16x16"),
            ("Cosmos-Tokenizer-CI8x8", "CI8x8"),
            ("nvidia/Cosmos-Tokenize1-CV8x8x8-720p", "CV8x8x8"),
            ("Cosmos-Tokenize1-DI16x16-360p", "DI16x16-LowRes"),
            ("CI16x16-360p", "CI16x16-LowRes"),
            ("dv4x8x8-lowres", "DV4x8x8-LowRes"),
            ("CV4x8x8-tiny", "CV4x8x8"),
        ] {
            assert_eq!(find_variant(name).map(|v| v.name), Some(want), "{name}");
        }
        assert!(find_variant("CV2x2x2").is_none());
        let in_path = find_variant_in_text(
            "/cache/models--nvidia--Cosmos-1.0-Tokenizer-DV4x8x8-LowRes/snapshots/abc",
        );
        assert_eq!(in_path.map(|v| v.name), Some("DV4x8x8-LowRes"));
        let in_path = find_variant_in_text("/data/Cosmos-0.1-Tokenizer-DV4x8x8/encoder.jit");
        assert_eq!(in_path.map(|v| v.name), Some("DV4x8x8"));
    }

    #[test]
    fn every_variant_config_is_valid() {
        for v in all_variants() {
            assert!(v.config.check().is_ok(), "{}", v.name);
        }
    }
}
