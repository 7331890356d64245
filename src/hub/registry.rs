//! Every released Cosmos tokenizer repository on the Hugging Face Hub: its variant, the files a
//! tokenizer needs and their approximate sizes (`../shared/docs/cosmos-architecture.md` §1, §5).

/// The files one complete checkpoint consists of, in order of preference: the two halves, or the
/// whole autoencoder in one archive.
pub const FILE_SETS: &[&[&str]] = &[&["encoder.jit", "decoder.jit"], &["autoencoder.jit"]];

/// The files `fetch` downloads when the repo has them (the halves; see [`FILE_SETS`]).
pub const PREFERRED_FILES: &[&str] = &["encoder.jit", "decoder.jit"];

/// The alternative when a repo has no `encoder.jit`.
pub const FALLBACK_FILES: &[&str] = &["autoencoder.jit"];

/// Small files fetched alongside when the repo has them; their absence is not an error.
pub const OPTIONAL_FILES: &[&str] = &["config.json"];

/// Which generation of repos a model belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// `Cosmos-0.1-Tokenizer-*` (Nov 2024; first published as `Cosmos-Tokenizer-*`).
    V0_1,
    /// `Cosmos-1.0-Tokenizer-*` (Jan 2025), including the `-LowRes` ones.
    V1_0,
    /// `Cosmos-Tokenize1-*` (cosmos-predict1), `-720p` and `-360p`.
    Tokenize1,
}

impl Release {
    pub fn name(self) -> &'static str {
        match self {
            Release::V0_1 => "0.1",
            Release::V1_0 => "1.0",
            Release::Tokenize1 => "Tokenize1",
        }
    }
}

/// Approximate file sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSizes {
    pub encoder: u64,
    pub decoder: u64,
    pub autoencoder: u64,
    /// `true` when the sizes are estimated from the parameter counts (2 bytes per bf16
    /// parameter) because the Hub's listing was not seen; `false` when they are the sizes the Hub
    /// lists (rounded to three digits).
    pub estimated: bool,
}

impl FileSizes {
    /// What `fetch` downloads: `encoder.jit` + `decoder.jit`.
    pub fn download(&self) -> u64 {
        self.encoder + self.decoder
    }

    /// The listed or estimated size of one of the checkpoint files.
    pub fn of(&self, file: &str) -> Option<u64> {
        match file {
            "encoder.jit" => Some(self.encoder),
            "decoder.jit" => Some(self.decoder),
            "autoencoder.jit" => Some(self.autoencoder),
            _ => None,
        }
    }
}

/// One released tokenizer repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownModel {
    /// The repo id, e.g. `nvidia/Cosmos-0.1-Tokenizer-CV8x8x8`.
    pub repo: &'static str,
    /// The canonical variant name (as in [`crate::tokenizer::config`]), e.g. `CV8x8x8`.
    pub variant: &'static str,
    pub release: Release,
    /// Older names the Hub redirects to this repo.
    pub aliases: &'static [&'static str],
    pub sizes: FileSizes,
    /// Whether the Hub asks users to accept terms before downloading. None of the tokenizer repos
    /// are gated as far as known; a 401/403 is still reported as gated.
    pub gated: bool,
}

impl KnownModel {
    /// The repo name without the owner, e.g. `Cosmos-Tokenize1-CV8x8x8-720p`.
    pub fn bare_name(&self) -> &'static str {
        self.repo.rsplit('/').next().unwrap_or(self.repo)
    }

    /// The short name users type: the variant, with `-720p`/`-360p` for the Tokenize1 repos
    /// (`CV8x8x8`, `CI8x8-LowRes`, `CV8x8x8-720p`).
    pub fn short_name(&self) -> &'static str {
        let bare = self.bare_name();
        for prefix in [
            "Cosmos-0.1-Tokenizer-",
            "Cosmos-1.0-Tokenizer-",
            "Cosmos-Tokenize1-",
        ] {
            if let Some(rest) = bare.strip_prefix(prefix) {
                return rest;
            }
        }
        bare
    }
}

const KB: u64 = 1_000;

/// Sizes as the Hub lists them for the 0.1 repos (spec §5.1), given in kB (10^3 bytes) so the
/// listing's one decimal digit of MB survives, e.g. 62.5 MB = `62_500`.
const fn listed(encoder_kb: u64, decoder_kb: u64, autoencoder_kb: u64) -> FileSizes {
    FileSizes {
        encoder: encoder_kb * KB,
        decoder: decoder_kb * KB,
        autoencoder: autoencoder_kb * KB,
        estimated: false,
    }
}

/// Sizes estimated from the exact parameter counts (spec §1.5), 2 bytes per bf16 parameter.
const fn from_params(encoder_params: u64, decoder_params: u64) -> FileSizes {
    FileSizes {
        encoder: encoder_params * 2,
        decoder: decoder_params * 2,
        autoencoder: (encoder_params + decoder_params) * 2,
        estimated: true,
    }
}

// Parameter counts of the configurations the 1.0 and Tokenize1 repos use (spec §1.5).
const CV8X8X8_PARAMS: FileSizes = from_params(42_914_864, 62_738_832);
const DV8X16X16_PARAMS: FileSizes = from_params(45_537_158, 65_361_136);
const CI8X8_LOWRES: FileSizes = from_params(33_472_160, 47_912_476);
const CI16X16_LOWRES: FileSizes = from_params(35_831_968, 48_502_556);
const DI8X8_LOWRES: FileSizes = from_params(34_579_590, 49_019_916);
const DI16X16_LOWRES: FileSizes = from_params(36_939_398, 49_609_996);
const CV4X8X8_LOWRES: FileSizes = from_params(45_343_792, 64_865_024);
const DV4X8X8_LOWRES: FileSizes = from_params(46_647_302, 65_972_464);

const fn model(
    repo: &'static str,
    variant: &'static str,
    release: Release,
    aliases: &'static [&'static str],
    sizes: FileSizes,
) -> KnownModel {
    KnownModel {
        repo,
        variant,
        release,
        aliases,
        sizes,
        gated: false,
    }
}

use Release::{Tokenize1, V0_1, V1_0};

/// Every released tokenizer repo. For a variant name, the first repo with that short name is the
/// canonical one (the 0.1 repo where there is one).
const MODELS: &[KnownModel] = &[
    model(
        "nvidia/Cosmos-0.1-Tokenizer-CI8x8",
        "CI8x8",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-CI8x8"],
        listed(62_500, 91_500, 154_000),
    ),
    model(
        "nvidia/Cosmos-0.1-Tokenizer-CI16x16",
        "CI16x16",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-CI16x16"],
        listed(67_200, 96_200, 163_000),
    ),
    model(
        "nvidia/Cosmos-0.1-Tokenizer-DI8x8",
        "DI8x8",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-DI8x8"],
        listed(65_500, 94_500, 159_000),
    ),
    model(
        "nvidia/Cosmos-0.1-Tokenizer-DI16x16",
        "DI16x16",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-DI16x16"],
        listed(70_200, 99_200, 169_000),
    ),
    model(
        "nvidia/Cosmos-0.1-Tokenizer-CV4x8x8",
        "CV4x8x8",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-CV4x8x8"],
        listed(61_000, 88_100, 149_000),
    ),
    model(
        "nvidia/Cosmos-0.1-Tokenizer-CV8x8x8",
        "CV8x8x8",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-CV8x8x8"],
        listed(93_100, 133_000, 226_000),
    ),
    model(
        "nvidia/Cosmos-0.1-Tokenizer-CV8x16x16",
        "CV8x16x16",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-CV8x16x16"],
        listed(91_500, 131_000, 223_000),
    ),
    model(
        "nvidia/Cosmos-0.1-Tokenizer-DV4x8x8",
        "DV4x8x8",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-DV4x8x8"],
        listed(86_600, 125_000, 211_000),
    ),
    model(
        "nvidia/Cosmos-0.1-Tokenizer-DV8x8x8",
        "DV8x8x8",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-DV8x8x8"],
        listed(87_000, 127_000, 213_000),
    ),
    model(
        "nvidia/Cosmos-0.1-Tokenizer-DV8x16x16",
        "DV8x16x16",
        V0_1,
        &["nvidia/Cosmos-Tokenizer-DV8x16x16"],
        listed(92_300, 132_000, 224_000),
    ),
    model(
        "nvidia/Cosmos-1.0-Tokenizer-CV8x8x8",
        "CV8x8x8",
        V1_0,
        &[],
        CV8X8X8_PARAMS,
    ),
    model(
        "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16",
        "DV8x16x16",
        V1_0,
        &[],
        DV8X16X16_PARAMS,
    ),
    model(
        "nvidia/Cosmos-1.0-Tokenizer-CI8x8-LowRes",
        "CI8x8-LowRes",
        V1_0,
        &[],
        CI8X8_LOWRES,
    ),
    model(
        "nvidia/Cosmos-1.0-Tokenizer-CI16x16-LowRes",
        "CI16x16-LowRes",
        V1_0,
        &[],
        CI16X16_LOWRES,
    ),
    model(
        "nvidia/Cosmos-1.0-Tokenizer-DI8x8-LowRes",
        "DI8x8-LowRes",
        V1_0,
        &[],
        DI8X8_LOWRES,
    ),
    model(
        "nvidia/Cosmos-1.0-Tokenizer-DI16x16-LowRes",
        "DI16x16-LowRes",
        V1_0,
        &[],
        DI16X16_LOWRES,
    ),
    model(
        "nvidia/Cosmos-1.0-Tokenizer-CV4x8x8-LowRes",
        "CV4x8x8-LowRes",
        V1_0,
        &[],
        CV4X8X8_LOWRES,
    ),
    model(
        "nvidia/Cosmos-1.0-Tokenizer-DV4x8x8-LowRes",
        "DV4x8x8-LowRes",
        V1_0,
        &[],
        DV4X8X8_LOWRES,
    ),
    model(
        "nvidia/Cosmos-Tokenize1-CV8x8x8-720p",
        "CV8x8x8",
        Tokenize1,
        &[],
        CV8X8X8_PARAMS,
    ),
    model(
        "nvidia/Cosmos-Tokenize1-DV8x16x16-720p",
        "DV8x16x16",
        Tokenize1,
        &[],
        DV8X16X16_PARAMS,
    ),
    model(
        "nvidia/Cosmos-Tokenize1-CI8x8-360p",
        "CI8x8-LowRes",
        Tokenize1,
        &[],
        CI8X8_LOWRES,
    ),
    model(
        "nvidia/Cosmos-Tokenize1-CI16x16-360p",
        "CI16x16-LowRes",
        Tokenize1,
        &[],
        CI16X16_LOWRES,
    ),
    model(
        "nvidia/Cosmos-Tokenize1-CV4x8x8-360p",
        "CV4x8x8-LowRes",
        Tokenize1,
        &[],
        CV4X8X8_LOWRES,
    ),
    model(
        "nvidia/Cosmos-Tokenize1-DI8x8-360p",
        "DI8x8-LowRes",
        Tokenize1,
        &[],
        DI8X8_LOWRES,
    ),
    model(
        "nvidia/Cosmos-Tokenize1-DI16x16-360p",
        "DI16x16-LowRes",
        Tokenize1,
        &[],
        DI16X16_LOWRES,
    ),
    model(
        "nvidia/Cosmos-Tokenize1-DV4x8x8-360p",
        "DV4x8x8-LowRes",
        Tokenize1,
        &[],
        DV4X8X8_LOWRES,
    ),
];

/// Every known tokenizer repo, in display order (0.1, 1.0, Tokenize1).
pub fn known_models() -> &'static [KnownModel] {
    MODELS
}

/// Finds a known repo by repo id or old repo id (`nvidia/Cosmos-Tokenizer-CV8x8x8`), repo name
/// without the owner, variant name (`CV8x8x8` picks the 0.1 repo, `CI8x8-LowRes` the 1.0 one) or
/// Tokenize1 short name (`CV8x8x8-720p`, `CI8x8-360p`). Case-insensitive.
pub fn find_model(name: &str) -> Option<&'static KnownModel> {
    let wanted = name.trim().trim_end_matches('/').to_ascii_lowercase();
    if wanted.is_empty() {
        return None;
    }
    let by_repo = MODELS.iter().find(|m| {
        m.repo.eq_ignore_ascii_case(&wanted)
            || m.bare_name().eq_ignore_ascii_case(&wanted)
            || m.aliases.iter().any(|alias| {
                alias.eq_ignore_ascii_case(&wanted)
                    || alias
                        .rsplit('/')
                        .next()
                        .is_some_and(|bare| bare.eq_ignore_ascii_case(&wanted))
            })
    });
    by_repo.or_else(|| {
        MODELS
            .iter()
            .find(|m| m.short_name().eq_ignore_ascii_case(&wanted))
    })
}
