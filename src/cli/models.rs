//! `models list` and `models fetch`, and what `--model NAME` does when NAME is not a path.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::bail;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::analysis::{ModelError, ModelSource};
use crate::hub::{CacheStatus, FetchProgress, Hub, Phase};
use crate::shipped::project_root;
use crate::tokenizer::checkpoint::{LoadOptions, LoadedModel};

#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Every known Cosmos tokenizer repo: variant, download size, and whether it is in the
    /// Hugging Face cache (complete, partial or absent).
    List {
        /// Also print the cache folder of each model that is (partly) there.
        #[arg(long)]
        paths: bool,
    },
    /// Download models into the Hugging Face cache: encoder.jit and decoder.jit (or
    /// autoencoder.jit). Resumes interrupted downloads; checks sizes and sha256.
    Fetch(FetchArgs),
}

#[derive(Args, Debug)]
struct FetchArgs {
    /// Variant names (CV8x8x8, CI8x8-LowRes, DV8x16x16-720p) or repo ids
    /// (nvidia/Cosmos-0.1-Tokenizer-CV8x8x8). A variant name picks its 0.1 repo (1.0 for -LowRes).
    #[arg(required = true, value_name = "NAME|REPO")]
    names: Vec<String>,
    /// Branch, tag or commit to fetch.
    #[arg(long, default_value = "main")]
    revision: String,
}

pub fn run(args: &ModelsArgs) -> anyhow::Result<()> {
    match &args.command {
        ModelsCommand::List { paths } => {
            list(&Hub::from_env(), *paths);
            Ok(())
        }
        ModelsCommand::Fetch(fetch_args) => fetch(&Hub::from_env(), fetch_args),
    }
}

fn size_label(bytes: u64, estimated: bool) -> String {
    let mb = bytes as f64 / 1e6;
    let approx = if estimated { "~" } else { "" };
    if mb >= 99.95 {
        format!("{approx}{mb:.0} MB")
    } else {
        format!("{approx}{mb:.1} MB")
    }
}

fn status_label(status: &CacheStatus) -> String {
    match status {
        CacheStatus::Complete { .. } => "complete".to_string(),
        CacheStatus::Absent => "absent".to_string(),
        CacheStatus::Partial {
            present,
            missing,
            incomplete_bytes,
            ..
        } => {
            let mut parts = Vec::new();
            if !present.is_empty() {
                parts.push(format!("has {}", present.join(", ")));
            }
            if !missing.is_empty() {
                parts.push(format!("missing {}", missing.join(", ")));
            }
            if *incomplete_bytes > 0 {
                parts.push(format!(
                    "{} of an interrupted download (fetch resumes it)",
                    size_label(*incomplete_bytes, false)
                ));
            }
            format!("partial: {}", parts.join("; "))
        }
    }
}

fn list(hub: &Hub, paths: bool) {
    let config = hub.config();
    println!("Hugging Face cache: {}", config.cache_dir.display());
    if config.offline {
        println!("HF_HUB_OFFLINE is set: nothing is downloaded, only the cache is used.");
    }
    println!(
        "{:<44} {:<15} {:<9} {:>9}  cache",
        "repo", "variant", "release", "download"
    );
    let entries = hub.list();
    let mut any_estimated = false;
    for entry in &entries {
        let model = entry.model;
        any_estimated |= model.sizes.estimated;
        println!(
            "{:<44} {:<15} {:<9} {:>9}  {}",
            model.repo,
            model.variant,
            model.release.name(),
            size_label(model.sizes.download(), model.sizes.estimated),
            status_label(&entry.status)
        );
        if paths {
            let folder = match &entry.status {
                CacheStatus::Complete { snapshot, .. } => Some(snapshot.clone()),
                CacheStatus::Partial { snapshot, .. } => snapshot.clone(),
                CacheStatus::Absent => None,
            };
            if let Some(folder) = folder {
                println!("    {}", folder.display());
            }
        }
    }
    let complete = entries.iter().filter(|e| e.status.is_complete()).count();
    println!(
        "{complete} of {} in the cache. download = encoder.jit + decoder.jit{}.",
        entries.len(),
        if any_estimated {
            "; ~ = estimated from the parameter count (2 bytes per bf16 weight)"
        } else {
            ""
        }
    );
    println!("Fetch with `tokenscope models fetch NAME`; use with `--model NAME`.");
}

/// A progress bar on stderr (hidden when stderr is not a terminal) fed by fetch reports.
struct CliProgress {
    bar: Option<ProgressBar>,
    repo: String,
    file: String,
}

impl CliProgress {
    fn new() -> Self {
        Self {
            bar: None,
            repo: String::new(),
            file: String::new(),
        }
    }

    fn update(&mut self, p: &FetchProgress<'_>) {
        if self.repo != p.repo {
            self.finish();
            self.repo = p.repo.to_string();
            eprintln!("fetching {}", p.repo);
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{msg:32!} [{bar:30}] {decimal_bytes:>9}/{decimal_total_bytes:<9} {decimal_bytes_per_sec:>11} ETA {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        match p.phase {
            Phase::Checking => bar.set_message(format!("checking {}", p.file)),
            Phase::Cached | Phase::Downloading | Phase::Done => {
                if self.file != p.file {
                    self.file = p.file.to_string();
                    bar.set_message(p.file.to_string());
                    bar.set_length(p.total);
                    bar.set_position(p.bytes);
                    // A resumed file starts part-way: measure the rate from here.
                    bar.reset_eta();
                }
                bar.set_position(p.bytes);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.file.clear();
    }
}

fn fetch(hub: &Hub, args: &FetchArgs) -> anyhow::Result<()> {
    let cancel = AtomicBool::new(false);
    let mut failed = 0;
    for name in &args.names {
        let mut progress = CliProgress::new();
        let result = hub.fetch_revision(name, &args.revision, &cancel, &mut |p| progress.update(p));
        progress.finish();
        match result {
            Ok(outcome) => {
                if let Some(note) = &outcome.note {
                    eprintln!("note: {note}");
                }
                let names: Vec<&str> = outcome.files.iter().map(|f| f.name.as_str()).collect();
                let downloaded = outcome.downloaded_bytes();
                println!(
                    "{}: {} in {} ({})",
                    outcome.repo,
                    names.join(", "),
                    outcome.snapshot.display(),
                    if downloaded > 0 {
                        format!("{} downloaded", size_label(downloaded, false))
                    } else {
                        "already in the cache".to_string()
                    }
                );
            }
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} fetches failed", args.names.len());
    }
    Ok(())
}

/// Loads what `--model` names (a path, a shipped nano model, or a release from the Hugging
/// Face cache, fetched with a progress bar when missing and allowed); returns where it was read.
pub fn load_model(spec: &str, options: &LoadOptions) -> Result<(PathBuf, LoadedModel), ModelError> {
    let source = ModelSource::parse(spec, &project_root());
    let hub = Hub::from_env();
    let mut progress = CliProgress::new();
    let result = source.load(
        &project_root(),
        Some(&hub),
        options,
        &AtomicBool::new(false),
        &mut |p| progress.update(p),
    );
    progress.finish();
    result
}
