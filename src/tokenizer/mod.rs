//! The Cosmos tokenizer networks in candle. Knows nothing about media files or the UI.

pub mod checkpoint;
pub mod config;
pub mod fsq;
pub mod haar;
pub mod image;
pub mod layers;
pub mod model;
pub mod runner;
pub mod video;

pub use config::{Family, NetworkConfig, Variant};
pub use model::{Tokenizer, Tokens};

/// Everything that can go wrong while loading or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("checkpoint `{path}`: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error("checkpoint is missing `{key}` (expected shape {expected:?}); {hint}")]
    MissingKey {
        key: String,
        expected: Vec<usize>,
        hint: String,
    },
    #[error("checkpoint tensor `{key}` has shape {found:?}, expected {expected:?}; {hint}")]
    WrongShape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        hint: String,
    },
    #[error(transparent)]
    TorchScript(#[from] checkpoint::torchscript::TorchScriptError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
}

impl From<crate::frames::FramesError> for TokenizerError {
    fn from(e: crate::frames::FramesError) -> Self {
        TokenizerError::InvalidInput(e.to_string())
    }
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
