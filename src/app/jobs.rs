//! Worker threads: one decodes media, one runs models (one inference job at a time,
//! cancellable, with progress). Requests and events go through bounded channels; the UI thread
//! polls events once per frame and never waits. Finished analyses are cached per
//! (input, model, settings), so switching back to a computed rate is instant.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use super::analysis::{self, Analysis, JobKey, ModelFacts};
use super::cache::{FileIdentity, LruCache};
use crate::analysis::stream::{self, AnalysisError};
use crate::analysis::{plan, ModelError, ModelSource};
use crate::device;
use crate::hub::{FetchProgress, Hub};
use crate::media::{self, Clip, DecodeOptions};
use crate::shipped;
use crate::tokenizer::checkpoint::{LoadOptions, LoadedModel};
use crate::tokenizer::TokenizerError;

/// Models the inference worker keeps in memory.
const LOADED_MODELS: usize = 4;

/// What the workers are asked to do.
enum Request {
    /// Decode from source frame `start` as many frames as `limit` bytes hold.
    Decode {
        path: PathBuf,
        start: usize,
        limit: u64,
    },
    Analyse {
        key: JobKey,
        name: String,
        clip: Arc<Clip>,
        cancel: Arc<AtomicBool>,
        /// `None`: 80% of the memory available when the job starts.
        memory_budget: Option<u64>,
        /// Where official releases come from (`None`: the cache is off).
        hub: Option<Arc<Hub>>,
    },
}

/// What the workers report.
#[derive(Debug)]
pub enum Event {
    Decoded {
        path: PathBuf,
        result: Result<Loaded, String>,
    },
    Progress {
        key: JobKey,
        stage: String,
        done: usize,
        total: usize,
    },
    /// A model is now in the worker's memory.
    Loaded(ModelSource),
    /// A model was dropped from the worker's memory to make room.
    Unloaded(ModelSource),
    /// The memory planner's decision for the running job.
    Planned { key: JobKey, memory: JobMemory },
    Finished {
        key: JobKey,
        result: Result<Arc<Analysis>, JobError>,
    },
}

/// A decoded clip, whole or the part of it that fits in the memory the viewer gives clips.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub clip: Arc<Clip>,
    /// For a clip too long to hold: its length in frames (the header's count, else a lower
    /// bound); `None` when the clip is held to its end.
    pub long: Option<usize>,
}

/// The memory a decoded clip may take in the viewer by default: a third of what is available
/// (the results cache takes up to a quarter, the models and the job the rest).
pub fn default_clip_limit() -> u64 {
    crate::sys::available_ram().map_or(2 << 30, |a| (a / 3).max(256 << 20))
}

/// Decodes from source frame `start`: to the end when that fits in `limit` bytes, else as many
/// frames as fit (at least one), reporting the clip's length so the viewer can move the range.
pub fn decode_range(path: &Path, start: usize, limit: u64) -> Result<Loaded, media::MediaError> {
    let from = DecodeOptions {
        start,
        ..DecodeOptions::default()
    };
    match media::open_within(path, &from, limit) {
        Ok(clip) => {
            let long = (start > 0).then_some(start + clip.frames.frames);
            Ok(Loaded {
                clip: Arc::new(clip),
                long,
            })
        }
        Err(media::MediaError::ClipTooLarge {
            frames,
            width,
            height,
            ..
        }) => {
            let frame_bytes = (width * height * 3).max(1) as u64;
            let fit = (limit / frame_bytes).max(1) as usize;
            let part = DecodeOptions {
                max_frames: Some(fit),
                ..from
            };
            // One frame always fits: `limit` only bounds how many are held.
            let clip = media::open_within(path, &part, limit.max(frame_bytes))?;
            Ok(Loaded {
                long: Some((start + frames).max(start + clip.frames.frames + 1)),
                clip: Arc::new(clip),
            })
        }
        Err(e) => Err(e),
    }
}

/// Why a job gave no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The user cancelled it.
    #[error("cancelled")]
    Cancelled,
    /// Everything else, with its causes joined into one line.
    #[error("{0}")]
    Failed(String),
}

impl JobError {
    fn from_anyhow(e: &anyhow::Error) -> Self {
        let cancelled = e.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<TokenizerError>(),
                Some(TokenizerError::Cancelled)
            ) || matches!(
                cause.downcast_ref::<AnalysisError>(),
                Some(AnalysisError::Cancelled)
            ) || cause
                .downcast_ref::<ModelError>()
                .is_some_and(ModelError::is_cancelled)
        });
        if cancelled {
            return JobError::Cancelled;
        }
        JobError::Failed(
            e.chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": "),
        )
    }
}

/// What a job is expected to need, against the budget, and what the planner changed to fit.
#[derive(Clone, Debug, PartialEq)]
pub struct JobMemory {
    pub estimate: u64,
    pub budget: u64,
    /// A shorter window or tiles, and why; `None` when the job runs as asked.
    pub adjustment: Option<String>,
}

/// The job in flight, as the UI sees it.
#[derive(Clone, Debug)]
pub struct Running {
    pub key: JobKey,
    pub started: Instant,
    pub stage: String,
    pub done: usize,
    pub total: usize,
    /// Set once the model is loaded and the job planned.
    pub memory: Option<JobMemory>,
    cancel: Arc<AtomicBool>,
}

impl Running {
    /// Seconds left, extrapolated from the windows done so far.
    pub fn eta_seconds(&self) -> Option<f64> {
        (self.done > 0 && self.total >= self.done).then(|| {
            let per = self.started.elapsed().as_secs_f64() / self.done as f64;
            per * (self.total - self.done) as f64
        })
    }

    pub fn fraction(&self) -> f32 {
        if self.total == 0 {
            0.0
        } else {
            self.done as f32 / self.total as f32
        }
    }
}

/// The most bytes of results kept: a quarter of the memory available at start, at least 512 MiB.
fn results_cache_limit() -> u64 {
    crate::sys::available_ram().map_or(2 << 30, |a| (a / 4).max(512 << 20))
}

/// Handles to the workers plus the result cache (owned by the UI thread).
pub struct Jobs {
    decode_tx: SyncSender<Request>,
    run_tx: SyncSender<Request>,
    events: Receiver<Event>,
    pub running: Option<Running>,
    pub decoding: Option<PathBuf>,
    cache: LruCache<JobKey, Arc<Analysis>>,
    /// Models the worker holds in memory.
    pub loaded: HashSet<ModelSource>,
    /// The memory every job may use (`view --memory-budget`); `None` for the default.
    pub memory_budget: Option<u64>,
    /// Where jobs find official releases (`None`: the Hugging Face cache is off).
    pub hub: Option<Arc<Hub>>,
}

impl Jobs {
    /// Starts the workers. `repaint` is called from a worker after each event.
    pub fn new(repaint: Option<Box<dyn Fn() + Send + Sync>>) -> Self {
        let repaint: Option<Arc<dyn Fn() + Send + Sync>> = repaint.map(Arc::from);
        let (event_tx, events) = sync_channel::<Event>(256);
        let (decode_tx, decode_rx) = sync_channel::<Request>(4);
        let (run_tx, run_rx) = sync_channel::<Request>(4);
        for (name, rx) in [("tokenscope-decode", decode_rx), ("tokenscope-run", run_rx)] {
            let tx = event_tx.clone();
            let wake = repaint.clone();
            let spawned = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || worker(rx, tx, wake));
            if let Err(e) = spawned {
                log::error!("cannot start the {name} worker: {e}");
            }
        }
        Self {
            decode_tx,
            run_tx,
            events,
            running: None,
            decoding: None,
            cache: LruCache::new(results_cache_limit()),
            loaded: HashSet::new(),
            memory_budget: None,
            hub: None,
        }
    }

    /// Asks for a file to be decoded from source frame `start`, holding at most `limit` bytes
    /// of frames.
    pub fn decode(&mut self, path: &Path, start: usize, limit: u64) -> Result<(), String> {
        send(
            &self.decode_tx,
            Request::Decode {
                path: path.to_path_buf(),
                start,
                limit,
            },
        )?;
        self.decoding = Some(path.to_path_buf());
        Ok(())
    }

    /// The cached analysis for a key.
    pub fn cached(&self, key: &JobKey) -> Option<Arc<Analysis>> {
        self.cache.get(key).cloned()
    }

    /// Bytes the cached results take (approximately).
    pub fn cached_bytes(&self) -> u64 {
        self.cache.total_bytes()
    }

    /// Every cached analysis of one input and settings (one per model).
    pub fn cached_for<'a>(
        &'a self,
        input: &'a Path,
        settings: &'a analysis::RunSettings,
    ) -> impl Iterator<Item = &'a Arc<Analysis>> + 'a {
        self.cache
            .values_where(move |k| k.input == input && &k.settings == settings)
    }

    /// Starts a job, cancelling the one running (one inference job at a time).
    pub fn run(&mut self, key: JobKey, name: String, clip: Arc<Clip>) -> Result<(), String> {
        if self.running.as_ref().is_some_and(|r| r.key == key) {
            return Ok(());
        }
        self.cancel();
        let cancel = Arc::new(AtomicBool::new(false));
        send(
            &self.run_tx,
            Request::Analyse {
                key: key.clone(),
                name,
                clip,
                cancel: cancel.clone(),
                memory_budget: self.memory_budget,
                hub: self.hub.clone(),
            },
        )?;
        self.running = Some(Running {
            key,
            started: Instant::now(),
            stage: "queued".into(),
            done: 0,
            total: 0,
            memory: None,
            cancel,
        });
        Ok(())
    }

    pub fn cancel(&mut self) {
        if let Some(r) = self.running.take() {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Drains the workers' events: updates progress and the cache, returns what the app must
    /// act on (decoded clips, finished or failed jobs).
    pub fn poll(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(Event::Progress {
                    key,
                    stage,
                    done,
                    total,
                }) => {
                    if let Some(r) = self.running.as_mut().filter(|r| r.key == key) {
                        r.stage = stage;
                        r.done = done;
                        r.total = total;
                    }
                }
                Ok(Event::Planned { key, memory }) => {
                    if let Some(r) = self.running.as_mut().filter(|r| r.key == key) {
                        r.memory = Some(memory);
                    }
                }
                Ok(Event::Loaded(model)) => {
                    self.loaded.insert(model);
                }
                Ok(Event::Unloaded(model)) => {
                    self.loaded.remove(&model);
                }
                Ok(Event::Finished { key, result }) => {
                    if self.running.as_ref().is_some_and(|r| r.key == key) {
                        self.running = None;
                    }
                    if let Ok(a) = &result {
                        let evicted = self.cache.insert(key.clone(), a.clone(), a.approx_bytes());
                        if evicted > 0 {
                            log::info!(
                                "results cache full: dropped the {evicted} least recently used"
                            );
                        }
                    }
                    out.push(Event::Finished { key, result });
                }
                Ok(Event::Decoded { path, result }) => {
                    if self.decoding.as_ref() == Some(&path) {
                        self.decoding = None;
                    }
                    // A file changed since its results were computed must not show them.
                    let stale = self
                        .cache
                        .check_input(&path, FileIdentity::of(&path), |k| k.input == path);
                    if stale > 0 {
                        log::info!(
                            "{} changed on disk: dropped {stale} results",
                            path.display()
                        );
                    }
                    out.push(Event::Decoded { path, result });
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        out
    }

    /// Whether a worker is busy.
    pub fn busy(&self) -> bool {
        self.running.is_some() || self.decoding.is_some()
    }
}

fn send(tx: &SyncSender<Request>, request: Request) -> Result<(), String> {
    tx.try_send(request).map_err(|e| match e {
        TrySendError::Full(_) => "the worker is busy; try again in a moment".to_string(),
        TrySendError::Disconnected(_) => "the worker thread stopped".to_string(),
    })
}

/// A worker loop: handles requests until the app drops its sender.
fn worker(
    requests: Receiver<Request>,
    events: SyncSender<Event>,
    repaint: Option<Arc<dyn Fn() + Send + Sync>>,
) {
    let mut models: Vec<(ModelSource, Arc<LoadedModel>)> = Vec::new();
    let emit = |event: Event| {
        // Progress may be dropped when the UI is behind; results never are.
        let sent = match event {
            Event::Progress { .. } => events.try_send(event).is_ok(),
            _ => events.send(event).is_ok(),
        };
        if let Some(wake) = &repaint {
            wake();
        }
        sent
    };
    while let Ok(request) = requests.recv() {
        match request {
            Request::Decode { path, start, limit } => {
                let result = decode_range(&path, start, limit).map_err(|e| e.to_string());
                emit(Event::Decoded { path, result });
            }
            Request::Analyse {
                key,
                name,
                clip,
                cancel,
                memory_budget,
                hub,
            } => {
                if cancel.load(Ordering::Relaxed) {
                    continue;
                }
                let result = analyse_job(
                    &key,
                    name,
                    &clip,
                    memory_budget,
                    hub.as_deref(),
                    &cancel,
                    &mut models,
                    &emit,
                )
                .map(Arc::new)
                .map_err(|e| JobError::from_anyhow(&e));
                emit(Event::Finished { key, result });
            }
        }
    }
}

/// Loads (or reuses) the model, plans the job's memory, runs `analysis::stream` over the frame
/// range and keeps what the panels draw.
#[allow(clippy::too_many_arguments)]
fn analyse_job(
    key: &JobKey,
    name: String,
    clip: &Clip,
    budget: Option<u64>,
    hub: Option<&Hub>,
    cancel: &AtomicBool,
    models: &mut Vec<(ModelSource, Arc<LoadedModel>)>,
    emit: &dyn Fn(Event) -> bool,
) -> anyhow::Result<Analysis> {
    let started = Instant::now();
    let progress = |stage: &str, done, total| {
        emit(Event::Progress {
            key: key.clone(),
            stage: stage.into(),
            done,
            total,
        });
    };
    progress("loading model", 0, 0);
    let loaded = match models.iter().position(|(k, _)| k == &key.model) {
        Some(i) => {
            // Most recently used last.
            let entry = models.remove(i);
            let model = entry.1.clone();
            models.push(entry);
            model
        }
        None => {
            let device = device::select_device(device::DeviceChoice::Auto)?;
            let dtype = device::select_dtype(device::DTypeChoice::Auto, &device)?;
            let options = LoadOptions {
                variant: None,
                device,
                dtype,
            };
            let mut fetch_progress = |p: &FetchProgress<'_>| {
                // Bytes in MiB: the bar counts in usize, and a release is gigabytes.
                progress(
                    "fetching model",
                    (p.bytes >> 20) as usize,
                    (p.total >> 20) as usize,
                );
            };
            let (_, model) = key.model.load(
                &shipped::project_root(),
                hub,
                &options,
                cancel,
                &mut fetch_progress,
            )?;
            let model = Arc::new(model);
            if models.len() >= LOADED_MODELS {
                let (evicted, _) = models.remove(0);
                emit(Event::Unloaded(evicted));
            }
            models.push((key.model.clone(), model.clone()));
            emit(Event::Loaded(key.model.clone()));
            model
        }
    };
    let tokenizer = &loaded.tokenizer;
    let config = tokenizer.config();
    if !tokenizer.has_encoder() || !tokenizer.has_decoder() {
        anyhow::bail!(
            "{} needs both encoder and decoder weights to reconstruct",
            loaded.variant_name
        );
    }
    let s = key.settings;
    let available = clip.frames.frames.saturating_sub(s.start);
    let count = s.frames.min(available);
    if count == 0 {
        anyhow::bail!(
            "frame {} is past the end of the clip ({} frames)",
            s.start,
            clip.frames.frames
        );
    }
    let device = tokenizer.device();
    let size = (clip.frames.width, clip.frames.height);
    let frame_bytes = (size.0 * size.1 * 3) as u64;
    let job = plan::JobSpec {
        requested_window: s.temporal_window,
        // The reconstruction, its difference and heat-map images, and the window's tokens.
        kept: count as u64 * frame_bytes * 3,
        ..plan::JobSpec::for_model(tokenizer, size, count)
    };
    let plan = plan::plan_on(device, &job, budget)?;
    emit(Event::Planned {
        key: key.clone(),
        memory: JobMemory {
            estimate: plan.estimate,
            budget: plan.budget.bytes,
            adjustment: plan.adjustment.clone(),
        },
    });
    let facts = ModelFacts {
        name,
        variant: loaded.variant_name.clone(),
        family: config.family.name().to_string(),
        discrete: config.family.is_discrete(),
        video: config.family.is_video(),
        spatial: config.spatial_compression,
        temporal: config.temporal_compression,
        latent_channels: config.latent_channels,
        parameters: loaded.parameters,
        device: device::describe(device),
        dtype: format!("{:?}", tokenizer.dtype()).to_lowercase(),
        training_shorter_side: loaded
            .trained_shorter_side
            .unwrap_or_else(|| analysis::training_shorter_side(&loaded.variant_name)),
    };
    let mut collector = analysis::Collector::new(s.start, &facts, size, count);
    let mut source = stream::InMemory::range(&clip.frames, s.start, count);
    let measured = stream::analyse_with(
        tokenizer,
        &mut source,
        &plan,
        cancel,
        &mut |done, total| progress("encoding and decoding", done, total.unwrap_or(count)),
        &mut |window| collector.keep(window),
    )?;
    let bits_per_pixel = measured.bits_per_pixel(tokenizer);
    Ok(collector.finish(
        key.clone(),
        facts,
        measured,
        bits_per_pixel,
        started.elapsed().as_secs_f64(),
    )?)
}

#[cfg(test)]
mod job_error_tests {
    use super::*;

    /// A cancel is recognised by its type, through any context added on the way up, and nothing
    /// else that merely says "cancelled" counts as one.
    #[test]
    fn cancel_is_told_apart_by_type_not_by_text() {
        use anyhow::Context as _;
        let cancelled: anyhow::Result<()> =
            Err(TokenizerError::Cancelled).context("running the model");
        assert_eq!(
            JobError::from_anyhow(&cancelled.unwrap_err()),
            JobError::Cancelled
        );
        let lookalike = anyhow::anyhow!("cancelled");
        assert_eq!(
            JobError::from_anyhow(&lookalike),
            JobError::Failed("cancelled".into())
        );
        assert_eq!(
            JobError::from_anyhow(&AnalysisError::Cancelled.into()),
            JobError::Cancelled
        );
        let failed: anyhow::Result<()> =
            Err(anyhow::anyhow!("no such file")).context("loading `m`");
        assert_eq!(
            JobError::from_anyhow(&failed.unwrap_err()).to_string(),
            "loading `m`: no such file"
        );
    }
}
