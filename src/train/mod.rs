//! Training Cosmos-architecture tokenizers with the recipe of the Cosmos paper, on the same network
//! code that runs the official checkpoints: data sampling, losses, the optimiser and the loop.

pub mod card;
pub mod data;
pub mod discriminator;
pub mod flow;
pub mod inflate;
pub mod losses;
pub mod optim;
pub mod params;
pub mod trainer;
pub mod vgg;

pub use trainer::{train, Progress, TrainInputs, TrainSettings, TrainSummary};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Invalid(String),
    #[error("training data `{0}`: {1}")]
    Media(String, String),
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Write(#[from] crate::io::WriteError),
    #[error(transparent)]
    Frames(#[from] crate::frames::FramesError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
