//! Official checkpoints by name: the released repos on the Hugging Face Hub, fetched into the
//! shared Hugging Face cache and found there again without the network.
//!
//! * [`registry`]: every released tokenizer repo, its variant, files and sizes.
//! * [`Hub`]: list the known models with their cache status, fetch one (progress callback,
//!   cancel flag, resumable, verified), resolve a `--model` argument (a path, a variant name or a
//!   repo id) to a folder the loader reads, and say where to put the files when offline.
//! * [`HubConfig`]: endpoint, cache folder, token, offline; from the environment
//!   (`HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`, `HF_HUB_OFFLINE`) or given explicitly.
//!
//! The cache layout is `huggingface_hub`'s ([`cache`]), so files fetched here are seen by the
//! Python tools and the other way round.

pub mod cache;
mod download;
pub mod registry;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use cache::{CacheStatus, RepoCache};
pub use registry::{find_model, known_models, FileSizes, KnownModel, Release};

use download::{Client, FileRef, RemoteFile};
use registry::{FALLBACK_FILES, OPTIONAL_FILES, PREFERRED_FILES};

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Everything that goes wrong finding or fetching a model. Each message names the repo and file.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "`{name}`: no such file or folder, and not a known Cosmos tokenizer name (e.g. CV8x8x8, \
         DV8x16x16-720p, nvidia/Cosmos-0.1-Tokenizer-CI8x8) or Hugging Face repo id (owner/name); \
         `tokenscope models list` shows every known model"
    )]
    UnknownModel { name: String },
    /// Offline (`HF_HUB_OFFLINE`) and not in the cache; `help` says where to put the files.
    #[error("{help}")]
    Offline { repo: String, help: String },
    #[error(
        "could not reach {endpoint} to fetch `{repo}`: {reason}. Check the network (and \
         HTTPS_PROXY), or work offline: {where_to_put}"
    )]
    Network {
        endpoint: String,
        repo: String,
        reason: String,
        where_to_put: String,
    },
    #[error(
        "repository `{repo}` was not found on {endpoint}{}",
        if *has_token { " (or the token in HF_TOKEN has no access to it)" }
        else { " (a private or gated repo also answers this way without a token: set HF_TOKEN)" }
    )]
    RepoNotFound {
        repo: String,
        endpoint: String,
        has_token: bool,
    },
    #[error("revision `{revision}` of `{repo}` was not found")]
    RevisionNotFound { repo: String, revision: String },
    #[error("`{file}` was not found in `{repo}` (revision `{revision}`)")]
    FileNotFound {
        repo: String,
        file: String,
        revision: String,
    },
    #[error(
        "`{file}` of `{repo}` (revision `{revision}`) was not found on {endpoint} (HTTP 404): the \
         repo or the file does not exist"
    )]
    NotFound {
        repo: String,
        file: String,
        revision: String,
        endpoint: String,
    },
    #[error(
        "access to `{file}` of `{repo}` was refused (HTTP {status}): the repo is gated or \
         private. {}",
        if *has_token {
            format!("The token in HF_TOKEN has no access: accept the repo's terms at {endpoint}/{repo} with that account, or use another token.")
        } else {
            format!("Accept its terms at {endpoint}/{repo}, then set HF_TOKEN to an access token of that account (or log in with `huggingface-cli login`).")
        }
    )]
    Gated {
        repo: String,
        file: String,
        status: u16,
        endpoint: String,
        has_token: bool,
    },
    #[error(
        "the server at {endpoint} failed (HTTP {status}) on `{file}` of `{repo}`; this is a \
         server-side error, try again later"
    )]
    Server {
        repo: String,
        file: String,
        status: u16,
        endpoint: String,
    },
    #[error("HTTP {status} for `{file}` of `{repo}`: {message}")]
    Http {
        repo: String,
        file: String,
        status: u16,
        message: String,
    },
    #[error(
        "the download of `{file}` of `{repo}` stopped at {done} of {} bytes ({reason}); run the \
         fetch again to resume from `{}`",
        if *total > 0 { total.to_string() } else { "?".to_string() },
        partial.display()
    )]
    Interrupted {
        repo: String,
        file: String,
        done: u64,
        /// The size the server announced; 0 when it announced none.
        total: u64,
        reason: String,
        partial: PathBuf,
    },
    #[error(
        "the download of `{file}` of `{repo}` is corrupted: {reason}; it was deleted, fetch it \
         again"
    )]
    Corrupted {
        repo: String,
        file: String,
        reason: String,
    },
    #[error(
        "the download of `{file}` of `{repo}` was cancelled; what arrived is kept in `{}` and a \
         later fetch resumes from there",
        partial.display()
    )]
    Cancelled {
        repo: String,
        file: String,
        partial: PathBuf,
    },
    #[error("the server at {endpoint} did not answer like the Hugging Face Hub: {reason}")]
    BadResponse { endpoint: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Where the Hub is, where the cache is, and how to talk to it. [`HubConfig::from_env`] reads the
/// variables every Hugging Face tool reads; tests and the viewer can set the fields directly.
#[derive(Clone)]
pub struct HubConfig {
    /// `HF_ENDPOINT`, default `https://huggingface.co`; files are at
    /// `{endpoint}/{repo}/resolve/{revision}/{file}`.
    pub endpoint: String,
    /// The hub cache folder: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub` (`$XDG_CACHE_HOME/huggingface/hub` when that is set).
    pub cache_dir: PathBuf,
    /// `HF_TOKEN`, else the token file (`HF_TOKEN_PATH`, else `$HF_HOME/token`), sent as
    /// `Authorization: Bearer` to the endpoint only.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: never touch the network; only the cache is used.
    pub offline: bool,
    /// How many times an interrupted transfer is resumed within one fetch.
    pub retries: u32,
    /// Wait before the first retry; doubles with each further one.
    pub retry_delay: Duration,
    pub connect_timeout: Duration,
    /// A connection silent for this long is given up (and resumed, within `retries`).
    pub read_timeout: Duration,
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .field("retries", &self.retries)
            .field("retry_delay", &self.retry_delay)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

impl HubConfig {
    /// Defaults for `endpoint` and `cache_dir` as given, no token, online.
    pub fn new(endpoint: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            cache_dir: cache_dir.into(),
            token: None,
            offline: false,
            retries: 5,
            retry_delay: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
        }
    }

    /// From the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From any source of environment variables (`lookup("HF_HOME")` and so on).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let home = get("HOME")
            .or_else(|| get("USERPROFILE"))
            .map(PathBuf::from);
        let hf_home = match get("HF_HOME") {
            Some(dir) => expand_home(&dir, home.as_deref()),
            None => {
                let base = match get("XDG_CACHE_HOME") {
                    Some(dir) => expand_home(&dir, home.as_deref()),
                    None => home
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("."))
                        .join(".cache"),
                };
                base.join("huggingface")
            }
        };
        let cache_dir = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(|dir| expand_home(&dir, home.as_deref()))
            .unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = get("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = get("HF_TOKEN")
            .or_else(|| get("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = get("HF_TOKEN_PATH")
                    .map(|p| expand_home(&p, home.as_deref()))
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            })
            .map(|t| t.trim().to_string());
        let offline = get("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v));
        let mut config = Self::new(endpoint, cache_dir);
        config.token = token;
        config.offline = offline;
        config
    }
}

/// A repo to fetch: a known one, or any `owner/name` on the Hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoTarget {
    pub repo: String,
    pub model: Option<&'static KnownModel>,
}

/// Whether `name` has the shape of a Hub repo id: `owner/name`, letters, digits, `-_.`.
fn looks_like_repo_id(name: &str) -> bool {
    let mut parts = name.split('/');
    let (Some(owner), Some(repo), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['.', '-'])
            && !p.ends_with('.')
            && !p.contains("..")
            && !p.contains("--")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let file_like = [".jit", ".safetensors", ".pt", ".pth", ".json", ".bin"]
        .iter()
        .any(|ext| repo.to_ascii_lowercase().ends_with(ext));
    part_ok(owner) && part_ok(repo) && !file_like
}

impl RepoTarget {
    /// A known model by any of its names, else a Hub repo id; else [`HubError::UnknownModel`].
    pub fn parse(name: &str) -> Result<Self, HubError> {
        if let Some(model) = find_model(name) {
            return Ok(Self {
                repo: model.repo.to_string(),
                model: Some(model),
            });
        }
        let trimmed = name.trim().trim_end_matches('/');
        if looks_like_repo_id(trimmed) {
            return Ok(Self {
                repo: trimmed.to_string(),
                model: None,
            });
        }
        Err(HubError::UnknownModel {
            name: name.to_string(),
        })
    }
}

/// A known model and what the cache holds of it.
#[derive(Clone, Debug)]
pub struct ModelEntry {
    pub model: &'static KnownModel,
    pub status: CacheStatus,
}

/// Where a fetch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Asking the Hub about the file.
    Checking,
    /// Already in the cache; nothing to download.
    Cached,
    /// Bytes arriving (including a resumed prefix already on disk).
    Downloading,
    /// In the cache and linked into the snapshot.
    Done,
}

/// A progress report; `bytes`/`total` cover every file of the fetch.
#[derive(Clone, Debug)]
pub struct FetchProgress<'a> {
    pub repo: &'a str,
    pub file: &'a str,
    pub phase: Phase,
    pub file_bytes: u64,
    pub file_total: Option<u64>,
    pub bytes: u64,
    /// Sum of the sizes the Hub announced (0 while still checking).
    pub total: u64,
}

/// One file of a finished fetch.
#[derive(Clone, Debug)]
pub struct FetchedFile {
    pub name: String,
    /// `snapshots/<commit>/<name>`.
    pub path: PathBuf,
    pub bytes: u64,
    /// `false` when it was already in the cache.
    pub downloaded: bool,
}

/// What a fetch left in the cache.
#[derive(Clone, Debug)]
pub struct FetchOutcome {
    pub repo: String,
    pub revision: String,
    /// The commit the files came from (`None` when only the cache was used and no ref names
    /// one).
    pub commit: Option<String>,
    /// The folder to load: `<cache>/models--owner--name/snapshots/<commit>`.
    pub snapshot: PathBuf,
    pub files: Vec<FetchedFile>,
    /// Said when the network was not used (offline, or unreachable with a complete cache).
    pub note: Option<String>,
}

impl FetchOutcome {
    pub fn downloaded_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.downloaded)
            .map(|f| f.bytes)
            .sum()
    }
}

/// The Hub and the cache, as configured.
pub struct Hub {
    client: Client,
}

fn human_size(bytes: u64) -> String {
    let mb = bytes as f64 / 1e6;
    if mb >= 100.0 {
        format!("{mb:.0} MB")
    } else if mb >= 0.1 {
        format!("{mb:.1} MB")
    } else {
        format!("{bytes} bytes")
    }
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Self {
            client: Client::new(config),
        }
    }

    /// A hub configured from the environment.
    pub fn from_env() -> Self {
        Self::new(HubConfig::from_env())
    }

    pub fn config(&self) -> &HubConfig {
        self.client.config()
    }

    fn repo_cache(&self, repo: &str) -> RepoCache {
        RepoCache::new(&self.config().cache_dir, repo)
    }

    /// The cache status of a target at `revision`; a known model found under one of its old
    /// names counts too.
    pub fn status_of(&self, target: &RepoTarget, revision: &str) -> CacheStatus {
        let status = self.repo_cache(&target.repo).status(revision);
        if status.is_complete() {
            return status;
        }
        let aliases = target.model.map(|m| m.aliases).unwrap_or(&[]);
        for alias in aliases {
            let old = self.repo_cache(alias).status(revision);
            if old.is_complete() {
                return old;
            }
        }
        status
    }

    /// The cache status of a model given by any name.
    pub fn status(&self, name: &str) -> Result<CacheStatus, HubError> {
        Ok(self.status_of(&RepoTarget::parse(name)?, "main"))
    }

    /// Every known model with its cache status.
    pub fn list(&self) -> Vec<ModelEntry> {
        known_models()
            .iter()
            .map(|model| {
                let target = RepoTarget {
                    repo: model.repo.to_string(),
                    model: Some(model),
                };
                ModelEntry {
                    model,
                    status: self.status_of(&target, "main"),
                }
            })
            .collect()
    }

    /// The files to put in place by hand, and where, for a model by any name: what to say when
    /// offline.
    pub fn offline_help(&self, name: &str) -> Result<String, HubError> {
        let target = RepoTarget::parse(name)?;
        Ok(self.offline_help_for(&target, "main"))
    }

    fn where_to_put(&self, target: &RepoTarget, revision: &str) -> (PathBuf, Vec<String>) {
        let cache = self.repo_cache(&target.repo);
        let (dir, present) = match self.status_of(target, revision) {
            CacheStatus::Partial {
                snapshot: Some(dir),
                present,
                ..
            } => (dir, present),
            _ => (cache.target_snapshot(revision), Vec::new()),
        };
        let missing = PREFERRED_FILES
            .iter()
            .filter(|f| !present.iter().any(|p| p == *f))
            .map(|f| f.to_string())
            .collect();
        (dir, missing)
    }

    fn offline_help_for(&self, target: &RepoTarget, revision: &str) -> String {
        let (dir, missing) = self.where_to_put(target, revision);
        let endpoint = &self.config().endpoint;
        let repo = &target.repo;
        let how_much = if missing.len() < PREFERRED_FILES.len() {
            "is only partly"
        } else {
            "is not"
        };
        let mut text = format!(
            "`{repo}` {how_much} in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set, so \
             nothing is downloaded. To use it offline, put its files here:",
            self.config().cache_dir.display()
        );
        for file in &missing {
            let size = target
                .model
                .and_then(|m| m.sizes.of(file))
                .map(|s| format!("   (about {})", human_size(s)))
                .unwrap_or_default();
            text.push_str(&format!("\n  {}{size}", dir.join(file).display()));
        }
        text.push_str(&format!(
            "\n(or autoencoder.jit alone in that folder), downloaded from \
             {endpoint}/{repo}/tree/{revision}; or pass a folder that holds them to --model; or \
             go online (unset HF_HUB_OFFLINE) and run `tokenscope models fetch {repo}`."
        ));
        text
    }

    fn short_where(&self, target: &RepoTarget, revision: &str) -> String {
        let (dir, missing) = self.where_to_put(target, revision);
        format!(
            "set HF_HUB_OFFLINE=1 and put {} in {}",
            missing.join(" and "),
            dir.display()
        )
    }

    /// Downloads a model's files (`encoder.jit` + `decoder.jit`, or `autoencoder.jit` where a
    /// repo has no halves, plus `config.json` when present) into the cache at `main`.
    pub fn fetch(
        &self,
        name: &str,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(&FetchProgress<'_>),
    ) -> Result<FetchOutcome, HubError> {
        self.fetch_target(&RepoTarget::parse(name)?, "main", cancel, progress)
    }

    /// [`Hub::fetch`] at a given revision (a branch, tag or commit).
    pub fn fetch_revision(
        &self,
        name: &str,
        revision: &str,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(&FetchProgress<'_>),
    ) -> Result<FetchOutcome, HubError> {
        self.fetch_target(&RepoTarget::parse(name)?, revision, cancel, progress)
    }

    fn cached_outcome(
        &self,
        target: &RepoTarget,
        revision: &str,
        note: String,
    ) -> Option<FetchOutcome> {
        let CacheStatus::Complete {
            snapshot, files, ..
        } = self.status_of(target, revision)
        else {
            return None;
        };
        let files = files
            .iter()
            .map(|name| {
                let path = snapshot.join(name);
                FetchedFile {
                    bytes: path.metadata().map(|m| m.len()).unwrap_or(0),
                    name: name.clone(),
                    path,
                    downloaded: false,
                }
            })
            .collect();
        Some(FetchOutcome {
            repo: target.repo.clone(),
            revision: revision.to_string(),
            commit: snapshot
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            snapshot,
            files,
            note: Some(note),
        })
    }

    /// `HEAD`s the files to fetch: the halves, else `autoencoder.jit`, plus optional files.
    fn plan(
        &self,
        target: &RepoTarget,
        revision: &str,
        progress: &mut dyn FnMut(&FetchProgress<'_>),
    ) -> Result<Vec<RemoteFile>, HubError> {
        let mut checking = |file: &str| {
            progress(&FetchProgress {
                repo: &target.repo,
                file,
                phase: Phase::Checking,
                file_bytes: 0,
                file_total: None,
                bytes: 0,
                total: 0,
            })
        };
        let head = |file: &str| {
            self.client.head(&FileRef {
                repo: &target.repo,
                revision,
                file,
            })
        };
        let mut files = Vec::new();
        for (i, file) in PREFERRED_FILES.iter().enumerate() {
            checking(file);
            match head(file) {
                Ok(remote) => files.push(remote),
                Err(e @ (HubError::FileNotFound { .. } | HubError::NotFound { .. })) if i == 0 => {
                    // No halves: the whole autoencoder in one archive, if the repo has it.
                    let mut fallback = Vec::new();
                    for alt in FALLBACK_FILES {
                        checking(alt);
                        match head(alt) {
                            Ok(remote) => fallback.push(remote),
                            Err(_) => return Err(e),
                        }
                    }
                    files = fallback;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        for file in OPTIONAL_FILES {
            checking(file);
            match head(file) {
                Ok(remote) => files.push(remote),
                Err(HubError::FileNotFound { .. } | HubError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(files)
    }

    fn fetch_target(
        &self,
        target: &RepoTarget,
        revision: &str,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(&FetchProgress<'_>),
    ) -> Result<FetchOutcome, HubError> {
        if self.config().offline {
            return self
                .cached_outcome(
                    target,
                    revision,
                    "HF_HUB_OFFLINE is set: the cached copy is used as it is".to_string(),
                )
                .ok_or_else(|| HubError::Offline {
                    repo: target.repo.clone(),
                    help: self.offline_help_for(target, revision),
                });
        }
        let plan = match self.plan(target, revision, progress) {
            Ok(plan) => plan,
            Err(HubError::Network {
                endpoint,
                repo,
                reason,
                ..
            }) => {
                let note = format!(
                    "could not reach {endpoint} ({reason}); the cached copy is used as it is"
                );
                return self.cached_outcome(target, revision, note).ok_or_else(|| {
                    HubError::Network {
                        endpoint,
                        repo,
                        reason,
                        where_to_put: self.short_where(target, revision),
                    }
                });
            }
            Err(e) => return Err(e),
        };
        let Some(commit) = plan.first().map(|f| f.commit.clone()) else {
            return Err(HubError::BadResponse {
                endpoint: self.config().endpoint.clone(),
                reason: format!("no files to fetch for `{}`", target.repo),
            });
        };
        let cache = self.repo_cache(&target.repo);
        let total: u64 = plan.iter().filter_map(|f| f.size).sum();
        let mut done_before: u64 = 0;
        let mut files = Vec::new();
        for remote in &plan {
            let at = FileRef {
                repo: &target.repo,
                revision,
                file: &remote.name,
            };
            let already = download::blob_is_complete(&cache.blob_path(&remote.etag), remote.size);
            let mut report = |file_bytes: u64| {
                progress(&FetchProgress {
                    repo: &target.repo,
                    file: &remote.name,
                    phase: if already {
                        Phase::Cached
                    } else {
                        Phase::Downloading
                    },
                    file_bytes,
                    file_total: remote.size,
                    bytes: done_before + file_bytes,
                    total,
                })
            };
            let blob = self
                .client
                .download_blob(&cache, &at, remote, cancel, &mut report)?;
            let bytes = blob
                .metadata()
                .map(|m| m.len())
                .unwrap_or(remote.size.unwrap_or(0));
            if already {
                report(bytes);
            }
            let path = cache
                .link_into_snapshot(&commit, &remote.name, &remote.etag)
                .map_err(|source| HubError::Io {
                    context: format!(
                        "linking `{}` into `{}`",
                        remote.name,
                        cache.snapshot_dir(&commit).display()
                    ),
                    source,
                })?;
            done_before += bytes;
            progress(&FetchProgress {
                repo: &target.repo,
                file: &remote.name,
                phase: Phase::Done,
                file_bytes: bytes,
                file_total: remote.size,
                bytes: done_before,
                total,
            });
            files.push(FetchedFile {
                name: remote.name.clone(),
                path,
                bytes,
                downloaded: !already,
            });
        }
        cache
            .write_ref(revision, &commit)
            .map_err(|source| HubError::Io {
                context: format!("writing `{}`", cache.ref_path(revision).display()),
                source,
            })?;
        Ok(FetchOutcome {
            repo: target.repo.clone(),
            revision: revision.to_string(),
            snapshot: cache.snapshot_dir(&commit),
            commit: Some(commit),
            files,
            note: None,
        })
    }

    /// What `--model` means: an existing file or folder as it is; else a variant name or repo id,
    /// resolved to its snapshot folder in the cache (no network when the cache has it), fetched
    /// first when it does not and the network is allowed.
    pub fn resolve(
        &self,
        spec: &str,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(&FetchProgress<'_>),
    ) -> Result<PathBuf, HubError> {
        let path = Path::new(spec);
        if path.exists() {
            return Ok(path.to_path_buf());
        }
        let (name, revision) = split_revision(spec);
        let target = RepoTarget::parse(name)?;
        if let Some(snapshot) = self.status_of(&target, revision).snapshot() {
            return Ok(snapshot.to_path_buf());
        }
        if self.config().offline {
            return Err(HubError::Offline {
                repo: target.repo.clone(),
                help: self.offline_help_for(&target, revision),
            });
        }
        Ok(self
            .fetch_target(&target, revision, cancel, progress)?
            .snapshot)
    }
}

/// `name@revision` → (name, revision); no `@` means the `main` branch. A revision is a branch,
/// a tag or a commit hash, as on the Hub.
pub fn split_revision(spec: &str) -> (&str, &str) {
    match spec.rsplit_once('@') {
        Some((name, revision)) if !name.is_empty() && !revision.is_empty() => (name, revision),
        _ => (spec, "main"),
    }
}

/// [`Hub::resolve`] with the environment's configuration and no progress reports.
pub fn resolve_model(spec: &str) -> Result<PathBuf, HubError> {
    Hub::from_env().resolve(spec, &AtomicBool::new(false), &mut |_| {})
}
