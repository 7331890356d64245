//! The headless analysis layer between the front ends (CLI, viewer) and the tokenizer: how a job
//! fits in memory ([`plan`]) and one model run over a clip window by window, measured
//! ([`stream`]).

pub mod plan;
pub mod stream;
