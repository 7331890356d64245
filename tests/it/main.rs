//! The integration tests, as one binary: each module below used to be its own test crate, which
//! linked candle, FFmpeg, wgpu and eframe once per file. Run one area with a filter, e.g.
//! `cargo test --test it parity::` or `cargo test --test it -- ui::`.
//!
//! `tests/cuda.rs` stays a separate binary: the CUDA kit builds it headless
//! (`--no-default-features --features cuda`), without the viewer or FFmpeg these modules need.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod eval_cli;
mod gradients;
mod hub;
mod kernels;
mod media;
mod metrics;
mod model_behaviour;
mod parity;
mod torchscript_reader;
mod train;
mod ui;
