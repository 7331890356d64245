//! The desktop viewer (eframe, wgpu renderer).
//!
//! Data flows one way: decode → tokenize → measure → show. Workers ([`jobs`]) decode and run
//! models; the UI thread lays out one file per panel, each pushing [`Command`]s that
//! [`ViewerApp::apply`] handles after the layout pass.

pub mod analysis;
pub mod bench;
mod cache;
pub mod colormap;
pub mod command;
mod compare;
pub mod fetch;
mod files;
pub mod gpu;
pub mod jobs;
mod metrics_panel;
pub mod models;
mod rates;
mod shortcuts;
pub mod state;
mod status;
mod timeline;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use egui::Vec2;

pub use self::analysis::{Analysis, JobKey, RunSettings};
pub use self::command::{Command, ExportKind};
use self::fetch::Fetch;
use self::gpu::FramePair;
use self::jobs::{Event, JobError, Jobs};
use self::models::ModelEntry;
pub use self::state::{AppState, Layout, TokenView, ViewSettings};
use crate::analysis::ModelSource;
use crate::hub::{Hub, HubConfig};
use crate::media::Clip;

/// How the viewer was started.
#[derive(Clone, Debug, Default)]
pub struct ViewerOptions {
    pub file: Option<PathBuf>,
    pub model: Option<String>,
    pub frame: Option<usize>,
    pub layout: Option<Layout>,
    /// Frames to run the model on (overrides the saved setting).
    pub frames: Option<usize>,
    /// Save a screenshot of the window here once the job has finished, then exit.
    pub screenshot: Option<PathBuf>,
    /// Start with the token overlay on.
    pub tokens: bool,
    /// Do not read the Hugging Face cache (tests, benchmarks).
    pub no_hub: bool,
    /// The Hub and cache to use instead of the environment's (tests use a local stand-in).
    pub hub: Option<HubConfig>,
    /// Models to run before `model`, so the plots compare rates from the start.
    pub also: Vec<String>,
    /// The memory each job may use in all (`--memory-budget`); default: 80% of what is available.
    pub memory_budget: Option<u64>,
    /// The memory the decoded clip may take; a longer clip is held a range at a time. Default:
    /// a third of what is available.
    pub clip_memory: Option<u64>,
}

/// Zoom and pan, shared by every pane.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewTransform {
    /// Fit the image in the pane (zoom and centre follow the pane size).
    pub fit: bool,
    /// Points per image pixel.
    pub zoom: f32,
    /// Image point at the centre of each pane.
    pub center: Vec2,
    /// Wipe split as a fraction of the pane width.
    pub wipe: f32,
}

impl Default for ViewTransform {
    fn default() -> Self {
        Self {
            fit: true,
            zoom: 1.0,
            center: Vec2::ZERO,
            wipe: 0.5,
        }
    }
}

/// What is under the cursor in a pane.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hover {
    pub x: usize,
    pub y: usize,
    pub original: [u8; 3],
    pub reconstruction: Option<[u8; 3]>,
    /// (window, latent frame, cell x, cell y).
    pub cell: Option<(usize, usize, usize, usize)>,
}

/// Answers of the system dialogs, which run on their own threads.
enum DialogAnswer {
    Open(PathBuf),
    Model(PathBuf),
    Export(ExportKind, PathBuf),
    /// A background export finished.
    Exported(Result<PathBuf, String>),
}

/// Screenshot mode: wait for the job, render, save, exit.
#[derive(Default)]
struct ScreenshotPlan {
    path: Option<PathBuf>,
    requested: bool,
    /// Frames rendered since the results were ready (the plots need a pass or two to settle).
    settle: u32,
    saved: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
    started: Option<Instant>,
}

/// The texture of the token overlay for one frame.
struct TokenTexture {
    key: (usize, usize, usize, TokenView, usize, Option<i64>, u64),
    texture: egui::TextureHandle,
}

/// Playing the clip at its frame rate.
#[derive(Debug, Default)]
pub struct Playback {
    pub playing: bool,
    /// Seconds of play not yet turned into frame steps.
    clock: f64,
}

/// The textures on screen and what they were built from, so they are rebuilt only when that
/// changes.
struct Textures {
    /// Whether the comparison is drawn by the wgpu callback (else by egui images).
    gpu: bool,
    /// Original and reconstruction of the current frame, for the wgpu callback.
    pair: Option<Arc<FramePair>>,
    /// (frame, analysis, clip) `pair` was built for.
    pair_key: Option<(usize, usize, usize)>,
    /// Bumped with every new frame of pixels, so the GPU side re-uploads that one only.
    generation: u64,
    tokens: Option<TokenTexture>,
}

/// The system dialogs run on threads; their answers come back on this channel.
struct Dialogs {
    tx: Sender<DialogAnswer>,
    rx: Receiver<DialogAnswer>,
}

/// Runs waiting for their turn.
struct RunQueue {
    /// "Compare all": models still to run, popped from the back.
    compare: Vec<ModelSource>,
    /// Catalogue keys of `ViewerOptions::also`, queued once the clip is decoded.
    also: Vec<ModelSource>,
    /// Whether to run the model as soon as the clip is decoded.
    autorun: bool,
}

pub struct ViewerApp {
    pub state: AppState,
    pub clip: Option<Arc<Clip>>,
    pub models: Vec<ModelEntry>,
    picked_models: Vec<PathBuf>,
    /// Catalogue key of the current model.
    pub model: Option<ModelSource>,
    pub jobs: Jobs,
    /// The analysis of (clip, model, settings), when computed.
    pub current: Option<Arc<Analysis>>,
    pub frame: usize,
    pub playback: Playback,
    pub view: ViewTransform,
    pub hover: Option<Hover>,
    pub selected_index: Option<i64>,
    commands: Vec<Command>,
    /// Failures not yet dismissed; each is shown once.
    pub errors: Vec<String>,
    pub notice: Option<String>,
    textures: Textures,
    screenshot: ScreenshotPlan,
    pub show_help: bool,
    queue: RunQueue,
    dialogs: Dialogs,
    pub last_export: Option<PathBuf>,
    pending_seek: Option<usize>,
    /// The memory a decoded clip may take; a longer clip is held a range at a time.
    clip_limit: u64,
    /// For a clip held a range at a time: its length in frames.
    pub long_clip: Option<usize>,
    /// The official releases' source and cache (None: not listed).
    hub: Option<Arc<Hub>>,
    /// The download in flight, if any (one at a time).
    pub fetching: Option<Fetch>,
    /// Wakes the UI from a worker thread.
    wake: Arc<dyn Fn() + Send + Sync>,
    /// Duration of the last `frame_ui` call, for the benchmark.
    pub last_frame_ms: f64,
    /// Resident memory, sampled on a timer for the status bar.
    pub memory: status::MemorySampler,
}

/// The bundled demo clip.
pub fn demo_clip() -> PathBuf {
    models::project_root().join("assets/demo.mp4")
}

impl ViewerApp {
    /// Builds the app; `render_state` is eframe's wgpu state (None without a GPU renderer).
    pub fn new(
        ctx: &egui::Context,
        render_state: Option<&egui_wgpu::RenderState>,
        storage: Option<&dyn eframe::Storage>,
        options: ViewerOptions,
    ) -> Self {
        if let Some(rs) = render_state {
            gpu::install(rs);
        }
        let state: AppState = storage
            .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            .unwrap_or_default();
        let repaint = ctx.clone();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || repaint.request_repaint());
        let jobs_wake = wake.clone();
        let mut jobs = Jobs::new(Some(Box::new(move || jobs_wake())));
        jobs.memory_budget = options.memory_budget;
        let (dialog_tx, dialog_rx) = channel();
        let mut app = Self {
            state,
            clip: None,
            models: Vec::new(),
            picked_models: Vec::new(),
            model: None,
            jobs,
            current: None,
            frame: 0,
            playback: Playback::default(),
            view: ViewTransform::default(),
            hover: None,
            selected_index: None,
            commands: Vec::new(),
            errors: Vec::new(),
            notice: None,
            textures: Textures {
                gpu: gpu::installed(render_state),
                pair: None,
                pair_key: None,
                generation: 0,
                tokens: None,
            },
            screenshot: ScreenshotPlan::default(),
            show_help: false,
            queue: RunQueue {
                compare: Vec::new(),
                also: Vec::new(),
                autorun: true,
            },
            dialogs: Dialogs {
                tx: dialog_tx,
                rx: dialog_rx,
            },
            last_export: None,
            pending_seek: options.frame,
            clip_limit: options.clip_memory.unwrap_or_else(jobs::default_clip_limit),
            long_clip: None,
            hub: (!options.no_hub).then(|| {
                Arc::new(Hub::new(
                    options.hub.clone().unwrap_or_else(HubConfig::from_env),
                ))
            }),
            fetching: None,
            wake,
            last_frame_ms: 0.0,
            memory: status::MemorySampler::default(),
        };
        if let Some(layout) = options.layout {
            app.state.view.layout = layout;
        }
        if let Some(frames) = options.frames {
            app.state.view.frame_count = frames.max(1);
            app.state.view.start_frame = 0;
        }
        if options.tokens {
            app.state.view.token_view = TokenView::Values;
        }
        app.screenshot.path = options.screenshot.clone();
        app.rescan_models();
        app.jobs.hub = app.hub.clone();
        let wanted = options.model.clone().or(app.state.last_model.clone());
        app.model = wanted
            .as_deref()
            .and_then(|spec| {
                models::find(&app.models, spec)
                    .map(|e| e.key.clone())
                    .or_else(|| {
                        // A path not in the catalogue: add it as picked.
                        let p = PathBuf::from(spec);
                        p.exists().then(|| {
                            app.picked_models.push(p.clone());
                            app.rescan_models();
                            ModelSource::Path(p)
                        })
                    })
            })
            .or_else(|| models::default_model(&app.models).map(|e| e.key.clone()));
        if let Some(spec) = &options.model {
            if models::find(&app.models, spec).is_none() && !Path::new(spec).exists() {
                app.errors
                    .push(format!("model `{spec}` not found; using the default"));
            }
        }
        for spec in &options.also {
            match models::find(&app.models, spec) {
                Some(e) => app.queue.also.push(e.key.clone()),
                None => app.errors.push(format!("model `{spec}` not found")),
            }
        }
        let file = options.file.clone().unwrap_or_else(demo_clip);
        app.commands.push(Command::OpenFile(file));
        app
    }

    /// Whether the comparison is drawn by the wgpu callback.
    pub fn has_gpu(&self) -> bool {
        self.textures.gpu
    }

    fn rescan_models(&mut self) {
        self.models = models::scan(
            &models::project_root(),
            &self.picked_models,
            self.hub.as_deref(),
        );
    }

    /// The current model's catalogue entry.
    pub fn model_entry(&self) -> Option<&ModelEntry> {
        let key = self.model.as_ref()?;
        self.models.iter().find(|e| &e.key == key)
    }

    pub fn settings(&self) -> RunSettings {
        RunSettings {
            clip_start: self.clip.as_ref().map_or(0, |c| c.first_frame),
            start: self.state.view.start_frame,
            frames: self.state.view.frame_count.max(1),
            temporal_window: self.state.view.temporal_window.max(1),
        }
    }

    /// For a clip held a range at a time, the command that loads the range holding loaded-clip
    /// frame `frame` when it lies past either end of this one (`None` inside it, or for a clip
    /// held whole).
    fn range_past(&self, frame: i64) -> Option<Command> {
        let total = self.long_clip?;
        let clip = self.clip.as_ref()?;
        let (first, held) = (clip.first_frame, clip.frames.frames);
        let looping = self.state.view.looping;
        if frame >= held as i64 && first + held < total {
            Some(Command::LoadRange {
                start: first + held,
                seek: 0,
            })
        } else if frame >= held as i64 && looping && first > 0 {
            // Past the clip's last frame, looping: back to its first range.
            Some(Command::LoadRange { start: 0, seek: 0 })
        } else if frame < 0 && first > 0 {
            let start = first.saturating_sub(held);
            Some(Command::LoadRange {
                start,
                seek: first - start - 1,
            })
        } else if frame < 0 && looping && first + held < total {
            // Before the clip's first frame, looping: to its last range.
            let start = total.saturating_sub(held);
            Some(Command::LoadRange {
                start,
                seek: total - start - 1,
            })
        } else {
            None
        }
    }

    /// The job key of (clip, model, settings).
    pub fn current_key(&self) -> Option<JobKey> {
        Some(JobKey {
            input: self.clip.as_ref()?.source.clone(),
            model: self.model.clone()?,
            settings: self.settings(),
        })
    }

    pub fn frame_count(&self) -> usize {
        self.clip.as_ref().map_or(0, |c| c.frames.frames)
    }

    /// One image of the clip, RGB.
    pub fn original_frame(&self, frame: usize) -> Option<&[u8]> {
        let c = &self.clip.as_ref()?.frames;
        let n = c.width * c.height * 3;
        c.data.get(frame * n..(frame + 1) * n)
    }

    /// (width, height) of the clip.
    pub fn image_size(&self) -> Option<(usize, usize)> {
        self.clip
            .as_ref()
            .map(|c| (c.frames.width, c.frames.height))
    }

    /// Models "Compare all" has still to run.
    pub fn compare_pending(&self) -> &[ModelSource] {
        &self.queue.compare
    }

    /// Queues a command (tests and the benchmark drive the app this way too).
    pub fn push(&mut self, command: Command) {
        self.commands.push(command);
    }

    /// Everything that does not draw: job and download events, file dialogs, queued commands
    /// (such as the next model of "Compare all"), the current result and the memory figure.
    /// eframe calls it before every frame and, while the window is hidden, instead of one, so
    /// work in flight keeps moving when the viewer is minimised.
    pub fn logic(&mut self, ctx: &egui::Context) {
        self.handle_events();
        self.poll_fetch();
        self.read_dialogs();
        // Commands from outside (tests, start-up, the compare queue) first, so the next frame
        // shows their effect.
        self.apply_commands(ctx);
        self.refresh_current();
        self.memory.sample();
        if self.jobs.busy() || self.fetching.is_some() || !self.queue.compare.is_empty() {
            ctx.request_repaint();
        }
    }

    /// One whole frame outside eframe (the UI benchmark): [`Self::logic`] then [`Self::frame_ui`].
    pub fn logic_and_frame_ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.logic(&ctx);
        self.frame_ui(ui);
    }

    /// Lays out one frame from the current state, reads its input (keys, dropped files,
    /// playback) and applies the commands they and the panels produced.
    pub fn frame_ui(&mut self, ui: &mut egui::Ui) {
        let started = Instant::now();
        let ctx = ui.ctx().clone();
        self.shortcuts(&ctx);
        self.dropped_files(&ctx);
        self.tick_playback(&ctx);
        self.apply_commands(&ctx);
        self.refresh_current();
        self.prepare_frames();
        self.prepare_token_texture(&ctx);

        let mut out = Vec::new();
        egui::Panel::top("menu").show(ui, |ui| files::menu_ui(self, ui, &mut out));
        egui::Panel::bottom("status").show(ui, |ui| status::status_ui(self, ui, &mut out));
        egui::Panel::bottom("timeline").show(ui, |ui| timeline::timeline_ui(self, ui, &mut out));
        if self.state.view.show_metrics_panel {
            egui::Panel::bottom("metrics")
                .resizable(true)
                .default_size(210.0)
                .min_size(150.0)
                .show(ui, |ui| metrics_panel::metrics_ui(self, ui, &mut out));
        }
        if self.state.view.show_rates_panel {
            egui::Panel::left("rates")
                .resizable(true)
                .default_size(250.0)
                .show(ui, |ui| rates::rates_ui(self, ui, &mut out));
        }
        if self.state.view.show_tokens_panel {
            egui::Panel::right("tokens")
                .resizable(true)
                .default_size(270.0)
                .show(ui, |ui| tokens::tokens_ui(self, ui, &mut out));
        }
        let hover = egui::CentralPanel::default_margins()
            .show(ui, |ui| {
                let tex = self.textures.tokens.as_ref().map(|t| t.texture.id());
                compare::compare_ui(self, tex, ui, &mut out)
            })
            .inner;
        self.hover = hover;
        shortcuts::help_ui(self, &ctx, &mut out);
        files::errors_ui(self, &ctx, &mut out);
        self.commands.extend(out);
        self.apply_commands(&ctx);
        self.screenshot_step(&ctx);
        if self.jobs.busy() || self.playback.playing || self.fetching.is_some() {
            ctx.request_repaint();
        }
        self.last_frame_ms = started.elapsed().as_secs_f64() * 1e3;
    }

    fn handle_events(&mut self) {
        for event in self.jobs.poll() {
            match event {
                Event::Decoded { path, result } => match result {
                    Ok(jobs::Loaded { clip, long }) => {
                        let same_file = self.clip.as_ref().is_some_and(|c| c.source == path);
                        let (first, held) = (clip.first_frame, clip.frames.frames);
                        self.notice = Some(match long {
                            None => format!(
                                "opened {} ({held} frames, {}x{}, {:.2} fps)",
                                path.display(),
                                clip.frames.width,
                                clip.frames.height,
                                clip.fps
                            ),
                            Some(total) => format!(
                                "{}: frames {first}–{} of {total} held (the whole clip does not fit in memory); step past either end to load the next range",
                                path.display(),
                                first + held - 1,
                            ),
                        });
                        self.long_clip = long;
                        for w in &clip.warnings {
                            self.errors.push(format!("{}: {w}", path.display()));
                        }
                        self.state.remember_file(&path);
                        self.frame = self
                            .pending_seek
                            .take()
                            .unwrap_or(0)
                            .min(clip.frames.frames.saturating_sub(1));
                        if self.state.view.start_frame >= clip.frames.frames {
                            self.state.view.start_frame = 0;
                        }
                        self.clip = Some(clip);
                        if !same_file {
                            self.view = ViewTransform::default();
                        }
                        self.current = None;
                        self.textures.pair_key = None;
                        self.refresh_current();
                        if same_file {
                            // Another range of the same clip: cached results show at once, a
                            // run waits for Run.
                        } else if !self.queue.also.is_empty() {
                            // Popped from the back: the extra models first, the chosen one last.
                            let mut queue: Vec<ModelSource> = self.model.iter().cloned().collect();
                            queue.extend(self.queue.also.drain(..).rev());
                            self.queue.compare = queue;
                            self.next_in_queue();
                        } else if self.queue.autorun {
                            self.commands.push(Command::Run);
                        }
                    }
                    Err(e) => {
                        self.errors
                            .push(format!("cannot open {}: {e}", path.display()));
                        self.screenshot_fail(&format!("cannot open {}: {e}", path.display()));
                    }
                },
                Event::Finished { key, result } => match result {
                    Ok(a) => {
                        self.notice = Some(format!(
                            "{}: clip PSNR {:.2} dB, SSIM {:.4} ({:.1} s)",
                            a.model.name, a.summary.psnr_clip, a.summary.ssim_mean, a.seconds
                        ));
                        // A job that finished after another had started (it ended before its
                        // cancel was seen) must not move "Compare all" on: the queue waits on
                        // the job in flight.
                        if self.jobs.running.is_none() {
                            self.next_in_queue();
                        }
                    }
                    Err(JobError::Cancelled) => {
                        self.notice = Some("cancelled".into());
                    }
                    Err(JobError::Failed(e)) => {
                        self.errors.push(format!("{}: {e}", key.model.short_name()));
                        self.screenshot_fail(&e);
                        if self.jobs.running.is_none() {
                            self.next_in_queue();
                        }
                    }
                },
                Event::Planned { memory, .. } => {
                    if let Some(adjustment) = memory.adjustment {
                        self.notice = Some(format!("to fit in memory: {adjustment}"));
                    }
                }
                Event::Progress { .. } | Event::Loaded(_) | Event::Unloaded(_) => {}
            }
        }
    }

    /// Picks up the download's progress; when it ends, lists the model and selects it.
    fn poll_fetch(&mut self) {
        let Some(fetch) = self.fetching.as_mut() else {
            return;
        };
        let Some(result) = fetch.poll() else {
            return;
        };
        let name = fetch.name.clone();
        let cancelled = fetch.is_cancelled();
        self.fetching = None;
        self.rescan_models();
        match result {
            Ok(done) => {
                self.notice = Some(match &done.note {
                    Some(note) => format!("{name}: {note}"),
                    None => format!(
                        "{name}: fetched {:.1} MB into {}",
                        done.downloaded_bytes as f64 / 1e6,
                        done.snapshot.display()
                    ),
                });
                let key = models::find(&self.models, &done.snapshot.display().to_string())
                    .map(|e| e.key.clone());
                match key {
                    Some(key) => self.commands.push(Command::SelectModel(key)),
                    None => self.errors.push(format!(
                        "{name}: fetched into {}, but the catalogue does not list it; press Rescan",
                        done.snapshot.display()
                    )),
                }
            }
            Err(_) if cancelled => {
                self.notice = Some(format!(
                    "{name}: download cancelled; what arrived is kept and Fetch resumes it"
                ));
            }
            Err(e) => self.errors.push(format!("{name}: {e}")),
        }
    }

    fn read_dialogs(&mut self) {
        while let Ok(answer) = self.dialogs.rx.try_recv() {
            match answer {
                DialogAnswer::Open(p) => self.commands.push(Command::OpenFile(p)),
                DialogAnswer::Model(p) => {
                    if !self.picked_models.contains(&p) {
                        self.picked_models.push(p.clone());
                    }
                    self.rescan_models();
                    self.commands
                        .push(Command::SelectModel(ModelSource::Path(p)));
                }
                DialogAnswer::Export(kind, p) => self.commands.push(Command::Export(kind, Some(p))),
                DialogAnswer::Exported(Ok(p)) => {
                    self.notice = Some(format!("wrote {}", p.display()));
                    self.last_export = Some(p);
                }
                DialogAnswer::Exported(Err(e)) => self.errors.push(format!("export failed: {e}")),
            }
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let actions = ctx.input(shortcuts::pressed);
        let mut view = self.state.view.clone();
        let mut out = Vec::new();
        for action in actions {
            action.apply(&mut view, &mut out);
        }
        if view != self.state.view {
            out.push(Command::SetView(Box::new(view)));
        }
        self.commands.extend(out);
    }

    fn dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        for path in dropped {
            // A checkpoint folder or file becomes a model; anything else is opened as media.
            let is_model = path.is_dir()
                || path
                    .extension()
                    .is_some_and(|e| e == "safetensors" || e == "jit");
            if is_model {
                let _ = self.dialogs.tx.send(DialogAnswer::Model(path));
            } else {
                self.commands.push(Command::OpenFile(path));
            }
        }
    }

    fn tick_playback(&mut self, ctx: &egui::Context) {
        let Some(clip) = &self.clip else {
            return;
        };
        if !self.playback.playing {
            self.playback.clock = 0.0;
            return;
        }
        let speed = self.state.view.speed.clamp(0.05, 16.0);
        let fps = clip.playback_fps().max(1.0) * speed;
        self.playback.clock += f64::from(ctx.input(|i| i.stable_dt).min(0.25));
        let steps = (self.playback.clock * fps).floor();
        if steps >= 1.0 {
            self.playback.clock -= steps / fps;
            let n = clip.frames.frames;
            let next = self.frame + steps as usize;
            if next >= n {
                if self.state.view.looping {
                    self.frame = next % n.max(1);
                } else {
                    self.frame = n.saturating_sub(1);
                    self.playback.playing = false;
                }
            } else {
                self.frame = next;
            }
        }
        ctx.request_repaint();
    }

    fn refresh_current(&mut self) {
        let key = self.current_key();
        let fresh = match (&self.current, &key) {
            (Some(a), Some(k)) => a.key == *k,
            _ => false,
        };
        if !fresh {
            self.current = key.and_then(|k| self.jobs.cached(&k));
        }
    }

    /// Builds the frame pair for the GPU when the frame or the analysis changed.
    fn prepare_frames(&mut self) {
        let Some(clip) = &self.clip else {
            self.textures.pair = None;
            return;
        };
        let analysis_id = self.current.as_ref().map_or(0, |a| Arc::as_ptr(a) as usize);
        let key = (self.frame, analysis_id, Arc::as_ptr(clip) as usize);
        if self.textures.pair_key == Some(key) {
            return;
        }
        // Switching rates changes only the reconstruction: the original keeps its pixels and
        // its texture.
        let same_original = self
            .textures
            .pair_key
            .is_some_and(|(frame, _, clip)| (frame, clip) == (key.0, key.2));
        let kept_original = match &self.textures.pair {
            Some(pair) if same_original => Some(pair.original.clone()),
            _ => None,
        };
        let original = match kept_original {
            Some(original) => original,
            None => {
                let Some(pixels) = self.original_frame(self.frame).map(gpu::rgba_from_rgb) else {
                    return;
                };
                self.textures.generation += 1;
                gpu::Rgba {
                    generation: self.textures.generation,
                    pixels: Arc::new(pixels),
                }
            }
        };
        let (width, height) = (clip.frames.width as u32, clip.frames.height as u32);
        let reconstruction = match self.current.as_ref().and_then(|a| a.frame(self.frame)) {
            Some(rgb) => {
                self.textures.generation += 1;
                Some(gpu::Rgba {
                    generation: self.textures.generation,
                    pixels: Arc::new(gpu::rgba_from_rgb(rgb)),
                })
            }
            None => None,
        };
        self.textures.pair = Some(Arc::new(FramePair {
            width,
            height,
            original,
            reconstruction,
        }));
        self.textures.pair_key = Some(key);
    }

    /// The token overlay texture of the current frame.
    fn prepare_token_texture(&mut self, ctx: &egui::Context) {
        let view = self.state.view.token_view;
        let Some(a) = self.current.clone() else {
            self.textures.tokens = None;
            return;
        };
        if view == TokenView::Off {
            return;
        }
        let Some((window, t)) = a.token_frame(self.frame) else {
            return;
        };
        let key = (
            Arc::as_ptr(&a) as usize,
            window,
            t,
            view,
            self.state.view.latent_channel,
            self.selected_index,
            (self.state.view.token_opacity * 1000.0) as u64,
        );
        if self
            .textures
            .tokens
            .as_ref()
            .is_some_and(|tt| tt.key == key)
        {
            return;
        }
        let Some(image) = tokens::overlay_image(
            &a,
            window,
            t,
            view,
            self.state.view.latent_channel,
            self.selected_index,
            self.state.view.token_opacity,
            self.state.view.colormap,
        ) else {
            return;
        };
        let texture = ctx.load_texture("token overlay", image, egui::TextureOptions::NEAREST);
        self.textures.tokens = Some(TokenTexture { key, texture });
    }

    /// Whether the token overlay texture of the current frame is built.
    pub fn token_texture_ready(&self) -> bool {
        self.textures.tokens.is_some()
    }

    fn next_in_queue(&mut self) {
        if let Some(next) = self.queue.compare.pop() {
            self.commands.push(Command::SelectModel(next));
        }
    }

    fn run_current(&mut self) {
        let (Some(key), Some(clip)) = (self.current_key(), self.clip.clone()) else {
            if self.model.is_none() {
                self.errors.push(
                    "no model to run: open a checkpoint folder (Models > Open checkpoint folder…)"
                        .into(),
                );
            }
            return;
        };
        if let Some(entry) = self.model_entry() {
            if let models::Availability::Unavailable(why) = &entry.availability {
                self.errors.push(format!("{}: {why}", entry.name));
                return;
            }
        }
        if self.jobs.cached(&key).is_some() {
            return;
        }
        let name = self
            .model_entry()
            .map(|e| e.name.clone())
            .unwrap_or_else(|| key.model.short_name());
        if let Err(e) = self.jobs.run(key, name, clip) {
            self.errors.push(e);
        }
    }

    fn apply_commands(&mut self, ctx: &egui::Context) {
        let commands = std::mem::take(&mut self.commands);
        for command in commands {
            self.apply(command, ctx);
        }
    }

    /// Applies one command.
    pub fn apply(&mut self, command: Command, ctx: &egui::Context) {
        let frames = self.frame_count();
        match command {
            Command::OpenFile(path) => {
                self.long_clip = None;
                if let Err(e) = self.jobs.decode(&path, 0, self.clip_limit) {
                    self.errors.push(e);
                }
            }
            Command::LoadRange { start, seek } => {
                let Some(path) = self.clip.as_ref().map(|c| c.source.clone()) else {
                    return;
                };
                self.pending_seek = Some(seek);
                if let Err(e) = self.jobs.decode(&path, start, self.clip_limit) {
                    self.errors.push(e);
                }
            }
            Command::OpenDialog => files::open_dialog(self.dialogs.tx.clone(), false),
            Command::OpenModelDialog => files::open_dialog(self.dialogs.tx.clone(), true),
            Command::SelectModel(key) => {
                self.state.last_model = Some(key.to_string());
                self.model = Some(key);
                self.refresh_current();
                if self.current.is_none() {
                    self.run_current();
                } else {
                    // Cached: no job will finish to move "Compare all" on, so move it here.
                    self.next_in_queue();
                }
            }
            Command::Run => self.run_current(),
            Command::CompareAll => {
                let mut queue: Vec<ModelSource> = self
                    .models
                    .iter()
                    .filter(|e| e.is_available())
                    .map(|e| e.key.clone())
                    .collect();
                // Popped from the back: keep the catalogue order.
                queue.reverse();
                self.queue.compare = queue;
                self.next_in_queue();
            }
            Command::Cancel => {
                self.queue.compare.clear();
                self.jobs.cancel();
            }
            Command::Seek(f) => {
                self.frame = f.min(frames.saturating_sub(1));
            }
            Command::Step(d) => {
                self.playback.playing = false;
                let n = frames as i64;
                if let Some(range) = self.range_past(self.frame as i64 + d) {
                    self.apply(range, ctx);
                } else if n > 0 {
                    let next = self.frame as i64 + d;
                    self.frame = if self.state.view.looping {
                        next.rem_euclid(n) as usize
                    } else {
                        next.clamp(0, n - 1) as usize
                    };
                }
            }
            Command::TogglePlay => self.playback.playing = !self.playback.playing,
            Command::SetLayout(layout) => self.state.view.layout = layout,
            Command::ZoomFit => self.view.fit = true,
            Command::ZoomOneToOne => {
                if self.view.fit {
                    if let Some((w, h)) = self.image_size() {
                        self.view.center = Vec2::new(w as f32 / 2.0, h as f32 / 2.0);
                    }
                }
                self.view.fit = false;
                self.view.zoom = 1.0 / ctx.pixels_per_point();
            }
            Command::SetTransform { zoom, cx, cy } => {
                self.view.fit = false;
                self.view.zoom = zoom.clamp(0.02, 128.0);
                self.view.center = Vec2::new(cx, cy);
            }
            Command::SetWipe(f) => self.view.wipe = f.clamp(0.0, 1.0),
            Command::SetView(view) => {
                let rerun = view.frame_count != self.state.view.frame_count
                    || view.start_frame != self.state.view.start_frame
                    || view.temporal_window != self.state.view.temporal_window;
                self.state.view = *view;
                if rerun {
                    self.refresh_current();
                }
            }
            Command::SelectTokenIndex(i) => self.selected_index = i,
            Command::JumpToCell { frame, x, y } => {
                self.frame = frame.min(frames.saturating_sub(1));
                self.playback.playing = false;
                if let Some(a) = &self.current {
                    let s = a.model.spatial as f32;
                    let w = a
                        .token_frame(self.frame)
                        .and_then(|(wi, _)| a.windows.get(wi));
                    let (pl, pt) = w.map_or((0.0, 0.0), |w| {
                        (w.padding.cols.0 as f32, w.padding.rows.0 as f32)
                    });
                    self.view.fit = false;
                    self.view.zoom = (160.0 / s).max(self.view.zoom);
                    self.view.center =
                        Vec2::new((x as f32 + 0.5) * s - pl, (y as f32 + 0.5) * s - pt);
                }
            }
            Command::Export(kind, path) => match path {
                Some(path) if kind == ExportKind::Mp4 => {
                    if let Err(e) = files::export_mp4(self, path, self.dialogs.tx.clone()) {
                        self.errors.push(format!("export failed: {e:#}"));
                    }
                }
                Some(path) => match files::export(self, kind, &path) {
                    Ok(()) => {
                        self.notice = Some(format!("wrote {}", path.display()));
                        self.last_export = Some(path);
                    }
                    Err(e) => self.errors.push(format!("export failed: {e:#}")),
                },
                None => files::save_dialog(self.dialogs.tx.clone(), kind, self.export_name(kind)),
            },
            Command::ToggleHelp => self.show_help = !self.show_help,
            Command::DismissError => {
                if !self.errors.is_empty() {
                    self.errors.remove(0);
                }
            }
            Command::CycleModel(step) => {
                let available: Vec<&ModelEntry> =
                    self.models.iter().filter(|e| e.is_available()).collect();
                if !available.is_empty() {
                    let at = available
                        .iter()
                        .position(|e| Some(&e.key) == self.model.as_ref())
                        .unwrap_or(0) as i64;
                    let next = (at + i64::from(step)).rem_euclid(available.len() as i64) as usize;
                    if let Some(e) = available.get(next) {
                        let key = e.key.clone();
                        self.apply(Command::SelectModel(key), ctx);
                    }
                }
            }
            Command::RescanModels => self.rescan_models(),
            Command::FetchModel(repo) => self.start_fetch(&repo),
            Command::CancelFetch => {
                if let Some(fetch) = &self.fetching {
                    fetch.cancel();
                }
            }
        }
    }

    fn start_fetch(&mut self, repo: &str) {
        if let Some(busy) = &self.fetching {
            self.errors.push(format!(
                "{} is still downloading; cancel it or wait before fetching {repo}",
                busy.name
            ));
            return;
        }
        let Some(hub) = self.hub.clone() else {
            self.errors
                .push("the Hugging Face cache is off in this session (--no-hub)".into());
            return;
        };
        let name = self
            .models
            .iter()
            .find(|e| e.hub.as_ref().is_some_and(|h| h.repo == repo))
            .map_or_else(|| repo.to_string(), |e| e.name.clone());
        match Fetch::start(hub, repo, &name, self.wake.clone()) {
            Ok(fetch) => {
                self.notice = Some(format!("fetching {repo}…"));
                self.fetching = Some(fetch);
            }
            Err(e) => self.errors.push(format!("{name}: {e}")),
        }
    }

    /// A default file name for an export.
    fn export_name(&self, kind: ExportKind) -> String {
        let stem = self
            .clip
            .as_ref()
            .and_then(|c| c.source.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tokenscope".into());
        let model = self
            .current
            .as_ref()
            .map(|a| a.model.name.clone())
            .unwrap_or_default();
        match kind {
            ExportKind::Png => format!("{stem}-{model}-frame{}.png", self.frame),
            _ => format!("{stem}-{model}-metrics.{}", kind.extension()),
        }
    }

    fn screenshot_fail(&mut self, reason: &str) {
        if self.screenshot.path.is_some() {
            if let Ok(mut e) = self.screenshot.error.lock() {
                e.get_or_insert_with(|| reason.to_string());
            }
        }
    }

    /// In screenshot mode: once the results are shown, grab the window, save it, close.
    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let Some(path) = self.screenshot.path.clone() else {
            return;
        };
        let started = *self.screenshot.started.get_or_insert_with(Instant::now);
        if self.screenshot.saved.load(Ordering::Acquire) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        let ready = self.current.is_some() || !self.errors.is_empty();
        let timed_out = started.elapsed().as_secs() > 300;
        if (!ready || self.jobs.busy() || !self.queue.compare.is_empty()) && !timed_out {
            ctx.request_repaint();
            return;
        }
        self.screenshot.settle += 1;
        if self.screenshot.settle < 4 || self.screenshot.requested {
            ctx.request_repaint();
            return;
        }
        self.screenshot.requested = true;
        let saved = self.screenshot.saved.clone();
        let error = self.screenshot.error.clone();
        let wake = ctx.clone();
        ctx.request_screenshot(move |image| {
            if let Err(e) = files::save_color_image(&image, &path) {
                if let Ok(mut slot) = error.lock() {
                    *slot = Some(format!("saving the screenshot: {e:#}"));
                }
            }
            saved.store(true, Ordering::Release);
            wake.request_repaint();
        });
        ctx.request_repaint();
    }

    /// A failure in screenshot mode (for the exit status).
    pub fn screenshot_error(&self) -> Option<String> {
        self.screenshot.error.lock().ok().and_then(|e| e.clone())
    }

    /// Whether screenshot mode has saved its picture.
    pub fn screenshot_saved(&self) -> bool {
        self.screenshot.saved.load(Ordering::Acquire)
    }
}

impl eframe::App for ViewerApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        ViewerApp::logic(self, ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame_ui(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.state);
    }
}

/// Opens the window and runs until it is closed.
pub fn run_native(options: ViewerOptions) -> anyhow::Result<()> {
    let screenshot = options.screenshot.is_some();
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Tokenscope")
            .with_inner_size([1440.0, 900.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        // Screenshot runs must not pick up (or overwrite) the user's saved layout.
        persist_window: !screenshot,
        ..Default::default()
    };
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let saved = Arc::new(AtomicBool::new(false));
    let (failure_out, saved_out) = (failure.clone(), saved.clone());
    eframe::run_native(
        "tokenscope",
        native,
        Box::new(move |cc| {
            let storage = if screenshot { None } else { cc.storage };
            let app = ViewerApp::new(
                &cc.egui_ctx,
                cc.wgpu_render_state.as_ref(),
                storage,
                options,
            );
            Ok(Box::new(ScreenshotReport {
                app,
                failure: failure_out,
                saved: saved_out,
                persist: !screenshot,
            }))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the window failed: {e}"))?;
    if screenshot {
        if let Some(e) = failure.lock().ok().and_then(|f| f.clone()) {
            anyhow::bail!("{e}");
        }
        if !saved.load(Ordering::Acquire) {
            anyhow::bail!("the window closed before the screenshot was taken");
        }
    }
    Ok(())
}

/// Passes the screenshot outcome out of eframe's closure.
struct ScreenshotReport {
    app: ViewerApp,
    failure: Arc<Mutex<Option<String>>>,
    saved: Arc<AtomicBool>,
    /// Screenshot runs leave the user's saved state alone.
    persist: bool,
}

impl eframe::App for ScreenshotReport {
    fn logic(&mut self, ctx: &egui::Context, frame: &mut eframe::Frame) {
        eframe::App::logic(&mut self.app, ctx, frame);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        self.app.ui(ui, frame);
        if let Some(e) = self.app.screenshot_error() {
            if let Ok(mut f) = self.failure.lock() {
                *f = Some(e);
            }
        }
        if self.app.screenshot_saved() {
            self.saved.store(true, Ordering::Release);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.persist {
            self.app.save(storage);
        }
    }
}
