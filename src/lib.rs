//! Tokenscope: inspect NVIDIA's Cosmos visual tokenizers.
//!
//! Data flows one way: media is decoded, tokenized by [`tokenizer`], measured and shown.

pub mod analysis;
#[cfg(feature = "gui")]
pub mod app;
pub mod cli;
pub mod compute;
pub mod device;
pub mod frames;
pub mod hub;
pub mod io;
#[cfg(feature = "media")]
pub mod media;
pub mod metrics;
pub mod shipped;
pub mod sys;
pub mod tokenizer;
pub mod train;
