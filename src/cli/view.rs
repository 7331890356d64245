//! `view` (also what `tokenscope` with no arguments runs) and `bench-ui`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::analysis::ModelSource;
use crate::app::{self, Layout, ViewerOptions};

#[derive(Args, Debug, Default)]
pub struct ViewArgs {
    /// Image or video to open (default: the bundled demo clip, assets/demo.mp4).
    pub file: Option<PathBuf>,
    /// Model to run: a checkpoint folder or file, or a name from the Compression rates panel
    /// (default: the first assets/models one, else a tiny reference model).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Frame to show first.
    #[arg(long)]
    pub frame: Option<usize>,
    /// Comparison layout.
    #[arg(long, value_enum)]
    pub layout: Option<Layout>,
    /// Frames to run the model on, from the first (default: the saved setting, 17 at first).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Start with the token overlay on.
    #[arg(long)]
    pub tokens: bool,
    /// Also run these models first (comma-separated), so the plots compare rates.
    #[arg(long, value_delimiter = ',')]
    pub also: Vec<String>,
    /// Render the window once the model has run, save it as PNG here, and exit.
    #[arg(long, value_name = "PNG")]
    pub screenshot: Option<PathBuf>,
    /// Memory each job may use in all (`6GiB`, `800MB`); over it the planner shortens the window
    /// or tiles. Default: 80% of the memory available when the job starts.
    #[arg(long, value_parser = super::parse_budget)]
    pub memory_budget: Option<u64>,
    /// Memory the decoded clip may take (`2GiB`); a longer clip is held a range at a time.
    /// Default: a third of the memory available.
    #[arg(long, value_parser = super::parse_budget)]
    pub clip_memory: Option<u64>,
}

impl ViewArgs {
    fn options(&self) -> ViewerOptions {
        ViewerOptions {
            file: self.file.clone(),
            model: self.model.clone(),
            frame: self.frame,
            layout: self.layout,
            frames: self.frames,
            screenshot: self.screenshot.clone(),
            tokens: self.tokens,
            no_hub: false,
            hub: None,
            also: self.also.clone(),
            memory_budget: self.memory_budget,
            clip_memory: self.clip_memory,
        }
    }
}

pub fn run(args: &ViewArgs) -> anyhow::Result<()> {
    app::run_native(args.options())
}

#[derive(Args, Debug)]
pub struct BenchUiArgs {
    /// Input (default: the demo clip).
    pub file: Option<PathBuf>,
    /// The model whose job runs while frames are timed.
    #[arg(long, default_value = "DV8x8x8-tiny")]
    pub model: String,
    /// The second rate (switching back to the first is timed).
    #[arg(long, default_value = "CV8x8x8-tiny")]
    pub other: String,
    /// Frames the model runs on.
    #[arg(long, default_value_t = 17)]
    pub frames: usize,
}

pub fn bench_ui(args: &BenchUiArgs) -> anyhow::Result<()> {
    let options = ViewerOptions {
        file: args.file.clone(),
        model: Some(args.model.clone()),
        frames: Some(args.frames),
        ..Default::default()
    };
    let entries = app::models::scan(&app::models::project_root(), &[], None);
    let other = app::models::find(&entries, &args.other)
        .map(|e| e.key.clone())
        .unwrap_or_else(|| ModelSource::parse(&args.other, &app::models::project_root()));
    let result = app::bench::run(options, &other, Duration::from_secs(600))?;
    println!(
        "UI benchmark: {} then {}, {} frames",
        args.model, args.other, args.frames
    );
    print!("{}", result.table());
    Ok(())
}
