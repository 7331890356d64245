//! The headless analysis layer between the front ends (CLI, viewer) and the tokenizer: which
//! model a job runs and how it is loaded ([`model`]), how the job fits in memory ([`plan`]) and
//! one model run over a clip window by window, measured ([`stream`]).

pub mod model;
pub mod plan;
pub mod stream;

pub use model::{ModelError, ModelSource};
