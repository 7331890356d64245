//! Fetching an official checkpoint from the Hugging Face Hub inside the viewer: one download at a
//! time on its own thread, into the standard cache (resumable, verified, see [`crate::hub`]),
//! reporting progress to the UI, which polls once per frame and can cancel.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use crate::hub::{Hub, Phase};

/// What the download thread reports.
enum FetchEvent {
    Progress {
        file: String,
        phase: Phase,
        bytes: u64,
        total: u64,
    },
    /// The snapshot folder to load, or why not.
    Finished(Result<Finished, String>),
}

/// A completed fetch.
#[derive(Clone, Debug)]
pub struct Finished {
    pub repo: String,
    pub snapshot: PathBuf,
    pub downloaded_bytes: u64,
    /// Said when the network was not used.
    pub note: Option<String>,
}

/// The fetch in flight, as the UI sees it.
pub struct Fetch {
    pub repo: String,
    /// The name shown in the catalogue.
    pub name: String,
    pub file: String,
    pub phase: Phase,
    pub bytes: u64,
    /// Sum of the sizes the Hub announced; 0 while it is still being asked.
    pub total: u64,
    pub started: Instant,
    cancel: Arc<AtomicBool>,
    events: Receiver<FetchEvent>,
}

impl Fetch {
    /// Starts downloading `repo` on a new thread; `wake` is called after each report.
    pub fn start(
        hub: Arc<Hub>,
        repo: &str,
        name: &str,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Self, String> {
        let (tx, events) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let thread_cancel = cancel.clone();
        let thread_repo = repo.to_string();
        std::thread::Builder::new()
            .name("tokenscope-fetch".into())
            .spawn(move || {
                let mut last_report = Instant::now();
                let mut progress = |p: &crate::hub::FetchProgress<'_>| {
                    // Byte counts arrive per chunk; a few reports a second are plenty.
                    let phase_change = p.phase != Phase::Downloading;
                    if phase_change || last_report.elapsed().as_millis() >= 50 {
                        last_report = Instant::now();
                        // The UI may have gone; then nobody needs the report.
                        let _ = tx.send(FetchEvent::Progress {
                            file: p.file.to_string(),
                            phase: p.phase,
                            bytes: p.bytes,
                            total: p.total,
                        });
                        wake();
                    }
                };
                let result = hub
                    .fetch(&thread_repo, &thread_cancel, &mut progress)
                    .map(|outcome| Finished {
                        downloaded_bytes: outcome.downloaded_bytes(),
                        repo: outcome.repo,
                        snapshot: outcome.snapshot,
                        note: outcome.note,
                    })
                    .map_err(|e| e.to_string());
                let _ = tx.send(FetchEvent::Finished(result));
                wake();
            })
            .map_err(|e| format!("cannot start the download thread: {e}"))?;
        Ok(Self {
            repo: repo.to_string(),
            name: name.to_string(),
            file: String::new(),
            phase: Phase::Checking,
            bytes: 0,
            total: 0,
            started: Instant::now(),
            cancel,
            events,
        })
    }

    /// Asks the download to stop; what arrived stays in the cache and the next fetch resumes it.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Reads the reports that arrived; `Some` once the fetch has ended.
    pub fn poll(&mut self) -> Option<Result<Finished, String>> {
        loop {
            match self.events.try_recv() {
                Ok(FetchEvent::Progress {
                    file,
                    phase,
                    bytes,
                    total,
                }) => {
                    self.file = file;
                    self.phase = phase;
                    self.bytes = bytes;
                    self.total = total;
                }
                Ok(FetchEvent::Finished(result)) => return Some(result),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    return Some(Err("the download thread stopped unexpectedly".into()))
                }
            }
        }
    }

    /// Share of the bytes arrived, once the sizes are known.
    pub fn fraction(&self) -> Option<f32> {
        (self.total > 0).then(|| (self.bytes as f64 / self.total as f64).clamp(0.0, 1.0) as f32)
    }

    /// One line for the UI: file, megabytes, rate.
    pub fn describe(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        match self.phase {
            Phase::Checking => format!("asking the Hub about {}…", self.repo),
            Phase::Cached | Phase::Done | Phase::Downloading => {
                let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
                format!(
                    "{} · {:.1} / {:.1} MB · {:.1} MB/s",
                    self.file,
                    mb(self.bytes),
                    mb(self.total),
                    mb(self.bytes) / seconds
                )
            }
        }
    }
}
