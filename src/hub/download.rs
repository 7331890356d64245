//! Talking to the Hub: a `HEAD` per file for its commit, ETag and size (as `huggingface_hub`
//! does), then a `GET` of the file into `blobs/<etag>.incomplete`, resumed with `Range` after an
//! interruption, checked against the size and (for LFS files) the sha256 the Hub gave, and renamed
//! into place.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::http::{HeaderMap, Response};
use ureq::Body;

use super::cache::{is_safe_component, RepoCache};
use super::{HubConfig, HubError};

/// What a `HEAD` of one file told.
#[derive(Clone, Debug)]
pub(crate) struct RemoteFile {
    pub name: String,
    /// Where the bytes are (the CDN location of an LFS file, else the resolve URL).
    pub download_url: String,
    pub commit: String,
    /// The ETag without quotes: the sha256 of an LFS file, the git blob id of a small one.
    pub etag: String,
    pub size: Option<u64>,
}

impl RemoteFile {
    /// The sha256 the contents must have, when the ETag is one (LFS files).
    pub fn sha256(&self) -> Option<&str> {
        (self.etag.len() == 64 && self.etag.chars().all(|c| c.is_ascii_hexdigit()))
            .then_some(self.etag.as_str())
    }
}

/// Where one file of a repo is being fetched from.
pub(crate) struct FileRef<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub file: &'a str,
}

const MAX_REDIRECTS: usize = 10;
const CHUNK: usize = 256 * 1024;

pub(crate) struct Client {
    agent: ureq::Agent,
    config: HubConfig,
}

/// The `scheme://host:port` part of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url.get(after_scheme..).and_then(|rest| rest.find('/')) {
        Some(slash) => url.get(..after_scheme + slash).unwrap_or(url),
        None => url,
    }
}

/// Resolves a `Location` header against the URL it came from.
fn join_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let dir = base.rfind('/').and_then(|i| base.get(..=i)).unwrap_or(base);
        format!("{dir}{location}")
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn normalise_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// Percent-encodes a revision for the URL path (`refs/pr/1` → `refs%2Fpr%2F1`).
fn encode_revision(revision: &str) -> String {
    let mut out = String::with_capacity(revision.len());
    for byte in revision.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn describe_transport(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Io(e) => e.to_string(),
        ureq::Error::Timeout(what) => format!("timed out ({what})"),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        other => other.to_string(),
    }
}

/// How a transfer attempt ended when it did not finish the file.
enum AttemptError {
    /// Worth another try from where it stopped (a dropped connection, a 5xx).
    Transient(String),
    Fatal(Box<HubError>),
}

impl Client {
    pub fn new(config: HubConfig) -> Self {
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_recv_response(Some(config.read_timeout))
            .timeout_per_read(Some(config.read_timeout))
            .user_agent(format!("tokenscope/{}", env!("CARGO_PKG_VERSION")))
            .accept_encoding("identity")
            .build();
        Self {
            agent: ureq::Agent::new_with_config(agent_config),
            config,
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    fn resolve_url(&self, at: &FileRef<'_>) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.config.endpoint,
            at.repo,
            encode_revision(at.revision),
            at.file
        )
    }

    /// One request, no redirects followed. The token goes only to the Hub endpoint itself,
    /// never to the storage a download is redirected to.
    fn send(
        &self,
        head: bool,
        url: &str,
        range_from: Option<u64>,
    ) -> Result<Response<Body>, ureq::Error> {
        let mut request = if head {
            self.agent.head(url)
        } else {
            self.agent.get(url)
        };
        if let Some(token) = &self.config.token {
            if origin(url) == origin(&self.config.endpoint) {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
        }
        if let Some(from) = range_from {
            request = request.header("Range", format!("bytes={from}-"));
        }
        request.call()
    }

    fn network_error(&self, at: &FileRef<'_>, reason: String) -> HubError {
        HubError::Network {
            endpoint: self.config.endpoint.clone(),
            repo: at.repo.to_string(),
            reason,
            // Filled in by the caller, which knows the cache.
            where_to_put: String::new(),
        }
    }

    /// Turns a failed status into an error that names the repo and file.
    fn status_error(&self, at: &FileRef<'_>, status: u16, headers: &HeaderMap) -> HubError {
        let code = header(headers, "x-error-code").unwrap_or("");
        let message = header(headers, "x-error-message").unwrap_or("").to_string();
        let repo = at.repo.to_string();
        let file = at.file.to_string();
        let endpoint = self.config.endpoint.clone();
        match (status, code) {
            (_, "GatedRepo") | (403, _) => HubError::Gated {
                repo,
                file,
                status,
                endpoint,
                has_token: self.config.token.is_some(),
            },
            (_, "RepoNotFound") => HubError::RepoNotFound {
                repo,
                endpoint,
                has_token: self.config.token.is_some(),
            },
            (_, "RevisionNotFound") => HubError::RevisionNotFound {
                repo,
                revision: at.revision.to_string(),
            },
            (_, "EntryNotFound") => HubError::FileNotFound {
                repo,
                file,
                revision: at.revision.to_string(),
            },
            (401, _) => HubError::Gated {
                repo,
                file,
                status,
                endpoint,
                has_token: self.config.token.is_some(),
            },
            (404, _) => HubError::NotFound {
                repo,
                file,
                revision: at.revision.to_string(),
                endpoint,
            },
            (500..=599, _) => HubError::Server {
                repo,
                file,
                status,
                endpoint,
            },
            _ => HubError::Http {
                repo,
                file,
                status,
                message: if message.is_empty() {
                    match status {
                        429 => "too many requests; try again later".to_string(),
                        _ => "unexpected answer".to_string(),
                    }
                } else {
                    message
                },
            },
        }
    }

    /// `HEAD` of one file: its commit, ETag, size and where to download it from. Relative
    /// redirects (renamed repos) are followed; an absolute one (LFS storage) carries the
    /// metadata and names the download location.
    pub fn head(&self, at: &FileRef<'_>) -> Result<RemoteFile, HubError> {
        let mut url = self.resolve_url(at);
        for _ in 0..MAX_REDIRECTS {
            let response = self
                .send(true, &url, None)
                .map_err(|e| self.network_error(at, describe_transport(&e)))?;
            let status = response.status().as_u16();
            let headers = response.headers();
            let location = header(headers, "location");
            let download_url = match (status, location) {
                (300..=399, Some(location)) => {
                    let next = join_location(&url, location);
                    if origin(&next) == origin(&url) {
                        url = next;
                        continue;
                    }
                    next
                }
                (200..=299, _) => url.clone(),
                _ => return Err(self.status_error(at, status, headers)),
            };
            return self.metadata(at, headers, download_url);
        }
        Err(self.bad_response(format!("too many redirects for `{}`", at.file)))
    }

    fn bad_response(&self, reason: String) -> HubError {
        HubError::BadResponse {
            endpoint: self.config.endpoint.clone(),
            reason,
        }
    }

    fn metadata(
        &self,
        at: &FileRef<'_>,
        headers: &HeaderMap,
        download_url: String,
    ) -> Result<RemoteFile, HubError> {
        let commit = header(headers, "x-repo-commit").ok_or_else(|| {
            self.bad_response(format!(
                "no X-Repo-Commit header for `{}` of `{}`",
                at.file, at.repo
            ))
        })?;
        let etag = header(headers, "x-linked-etag")
            .or_else(|| header(headers, "etag"))
            .map(normalise_etag)
            .ok_or_else(|| {
                self.bad_response(format!("no ETag header for `{}` of `{}`", at.file, at.repo))
            })?;
        if !is_safe_component(commit) || !is_safe_component(&etag) {
            return Err(self.bad_response(format!(
                "unusable commit `{commit}` or ETag `{etag}` for `{}`",
                at.file
            )));
        }
        let size = header(headers, "x-linked-size")
            .or_else(|| header(headers, "content-length"))
            .and_then(|v| v.parse::<u64>().ok());
        Ok(RemoteFile {
            name: at.file.to_string(),
            download_url,
            commit: commit.to_string(),
            etag,
            size,
        })
    }

    /// `GET` from `url`, following redirects (without the token once off the Hub's host).
    fn get(&self, at: &FileRef<'_>, url: &str, range_from: Option<u64>) -> GetResult {
        let mut url = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let response = match self.send(false, &url, range_from) {
                Ok(r) => r,
                Err(e) => return GetResult::Transient(describe_transport(&e)),
            };
            let status = response.status().as_u16();
            if (300..=399).contains(&status) {
                if let Some(location) = header(response.headers(), "location") {
                    url = join_location(&url, location);
                    continue;
                }
            }
            return GetResult::Response(response);
        }
        GetResult::Fatal(self.bad_response(format!("too many redirects for `{}`", at.file)))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(4);
        (self.config.retry_delay * factor).min(Duration::from_secs(20))
    }

    /// Downloads one file into `blobs/<etag>` (unless already there) and returns the blob path.
    /// `report` is called with the bytes of this file on disk so far.
    pub fn download_blob(
        &self,
        cache: &RepoCache,
        at: &FileRef<'_>,
        remote: &RemoteFile,
        cancel: &AtomicBool,
        report: &mut dyn FnMut(u64),
    ) -> Result<PathBuf, HubError> {
        let blob = cache.blob_path(&remote.etag);
        if blob_is_complete(&blob, remote.size) {
            return Ok(blob);
        }
        let io = |context: String| move |source| HubError::Io { context, source };
        let blobs = blob.parent().map(Path::to_path_buf).unwrap_or_default();
        std::fs::create_dir_all(&blobs).map_err(io(format!("creating `{}`", blobs.display())))?;
        let lock_path = cache.lock_path(&remote.etag);
        let _lock = lock(&lock_path, cancel, at)?;
        // Another process may have finished it while we waited for the lock.
        if blob_is_complete(&blob, remote.size) {
            return Ok(blob);
        }
        let partial = cache.incomplete_path(&remote.etag);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial)
            .map_err(io(format!("opening `{}`", partial.display())))?;
        let mut have = file
            .metadata()
            .map_err(io(format!("reading `{}`", partial.display())))?
            .len();
        if remote.size.is_some_and(|size| have > size) {
            file.set_len(0)
                .map_err(io(format!("truncating `{}`", partial.display())))?;
            have = 0;
        }
        let mut hasher = Sha256::new();
        if have > 0 && remote.sha256().is_some() {
            hash_prefix(&mut file, have, &mut hasher)
                .map_err(io(format!("reading `{}`", partial.display())))?;
        }
        report(have);
        let mut size = remote.size;
        let mut attempt: u32 = 0;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(HubError::Cancelled {
                    repo: at.repo.to_string(),
                    file: at.file.to_string(),
                    partial: partial.clone(),
                });
            }
            if size.is_some_and(|s| have == s) {
                break;
            }
            let result = self.attempt(
                at,
                remote,
                &mut file,
                &partial,
                &mut have,
                &mut size,
                &mut hasher,
                cancel,
                report,
            );
            let progressed_from = have;
            match result {
                Ok(()) => break,
                Err(AttemptError::Fatal(e)) => {
                    if matches!(*e, HubError::Corrupted { .. }) {
                        let _ = std::fs::remove_file(&partial);
                    }
                    return Err(*e);
                }
                Err(AttemptError::Transient(reason)) => {
                    if attempt >= self.config.retries {
                        return Err(HubError::Interrupted {
                            repo: at.repo.to_string(),
                            file: at.file.to_string(),
                            done: have,
                            total: size.unwrap_or(0),
                            reason,
                            partial: partial.clone(),
                        });
                    }
                    log::info!(
                        "{} {}: {reason}; resuming at byte {progressed_from}",
                        at.repo,
                        at.file
                    );
                    std::thread::sleep(self.backoff(attempt));
                    attempt += 1;
                }
            }
        }
        file.sync_all()
            .map_err(io(format!("writing `{}`", partial.display())))?;
        drop(file);
        let corrupted = |reason: String| {
            let _ = std::fs::remove_file(&partial);
            HubError::Corrupted {
                repo: at.repo.to_string(),
                file: at.file.to_string(),
                reason,
            }
        };
        if let Some(expected) = size {
            if have != expected {
                return Err(corrupted(format!(
                    "{have} bytes arrived but the Hub announced {expected}"
                )));
            }
        }
        if let Some(expected) = remote.sha256() {
            let actual = hex(&hasher.finalize());
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(corrupted(format!(
                    "its sha256 is {actual} but the Hub says {expected}"
                )));
            }
        }
        std::fs::rename(&partial, &blob).map_err(io(format!(
            "moving `{}` to `{}`",
            partial.display(),
            blob.display()
        )))?;
        Ok(blob)
    }

    /// One `GET`, appending to the partial file from `have` on.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        at: &FileRef<'_>,
        remote: &RemoteFile,
        file: &mut File,
        partial: &Path,
        have: &mut u64,
        size: &mut Option<u64>,
        hasher: &mut Sha256,
        cancel: &AtomicBool,
        report: &mut dyn FnMut(u64),
    ) -> Result<(), AttemptError> {
        let io = |what: &str, e: std::io::Error| {
            AttemptError::Fatal(Box::new(HubError::Io {
                context: format!("{what} `{}`", partial.display()),
                source: e,
            }))
        };
        let restart = |file: &mut File, have: &mut u64, hasher: &mut Sha256| {
            *have = 0;
            *hasher = Sha256::new();
            file.set_len(0).map_err(|e| io("truncating", e))
        };
        let range_from = (*have > 0).then_some(*have);
        let response = match self.get(at, &remote.download_url, range_from) {
            GetResult::Response(r) => r,
            GetResult::Transient(reason) => return Err(AttemptError::Transient(reason)),
            GetResult::Fatal(e) => return Err(AttemptError::Fatal(Box::new(e))),
        };
        let status = response.status().as_u16();
        let headers = response.headers();
        match status {
            200 => {
                if *have > 0 {
                    // The server ignored the Range: start over.
                    restart(file, have, hasher)?;
                }
                if size.is_none() {
                    *size = header(headers, "content-length").and_then(|v| v.parse().ok());
                }
            }
            206 => {
                let content_range = header(headers, "content-range").unwrap_or("");
                let start = content_range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if start != Some(*have) {
                    restart(file, have, hasher)?;
                    return Err(AttemptError::Transient(format!(
                        "the server resumed at the wrong place ({content_range})"
                    )));
                }
                if size.is_none() {
                    *size = content_range
                        .rsplit('/')
                        .next()
                        .and_then(|s| s.trim().parse().ok());
                }
            }
            416 => {
                // Nothing left to send: the partial file is whole, or wrong; the size check
                // after the loop tells.
                if size.is_none_or(|s| *have != s) {
                    restart(file, have, hasher)?;
                    return Err(AttemptError::Transient(
                        "the server refused to resume; starting over".to_string(),
                    ));
                }
                return Ok(());
            }
            500..=599 | 429 => {
                return Err(AttemptError::Transient(format!(
                    "the server answered HTTP {status}"
                )))
            }
            401 | 403 if origin(&remote.download_url) != origin(&self.config.endpoint) => {
                // The storage host refused its signed link, which expires after a while; a new
                // fetch asks the Hub for a fresh one and resumes.
                return Err(AttemptError::Fatal(Box::new(HubError::Http {
                    repo: at.repo.to_string(),
                    file: at.file.to_string(),
                    status,
                    message: "the storage server refused the download link (it may have \
                              expired); run the fetch again to resume"
                        .to_string(),
                })));
            }
            _ => {
                return Err(AttemptError::Fatal(Box::new(
                    self.status_error(at, status, headers),
                )))
            }
        }
        file.seek(SeekFrom::Start(*have))
            .map_err(|e| io("seeking in", e))?;
        let mut reader = response.into_body().into_reader();
        let mut buffer = vec![0u8; CHUNK];
        loop {
            if cancel.load(Ordering::Relaxed) {
                let _ = file.flush();
                return Err(AttemptError::Fatal(Box::new(HubError::Cancelled {
                    repo: at.repo.to_string(),
                    file: at.file.to_string(),
                    partial: partial.to_path_buf(),
                })));
            }
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.flush();
                    return Err(AttemptError::Transient(format!("connection lost: {e}")));
                }
            };
            let chunk = buffer.get(..n).unwrap_or(&[]);
            file.write_all(chunk).map_err(|e| io("writing", e))?;
            hasher.update(chunk);
            *have += n as u64;
            report(*have);
            if size.is_some_and(|s| *have > s) {
                return Err(AttemptError::Fatal(Box::new(HubError::Corrupted {
                    repo: at.repo.to_string(),
                    file: at.file.to_string(),
                    reason: format!("more bytes arrived than the {} announced", fmt_size(*size)),
                })));
            }
        }
        file.flush().map_err(|e| io("writing", e))?;
        match *size {
            Some(s) if *have < s => Err(AttemptError::Transient(format!(
                "the connection closed after {} of {s} bytes",
                *have
            ))),
            _ => Ok(()),
        }
    }
}

fn fmt_size(size: Option<u64>) -> String {
    size.map(|s| format!("{s} bytes")).unwrap_or_default()
}

enum GetResult {
    Response(Response<Body>),
    Transient(String),
    Fatal(HubError),
}

pub(crate) fn blob_is_complete(blob: &Path, size: Option<u64>) -> bool {
    blob.metadata()
        .is_ok_and(|m| m.is_file() && size.is_none_or(|s| m.len() == s))
}

fn hash_prefix(file: &mut File, len: u64, hasher: &mut Sha256) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut limited = Read::by_ref(file).take(len);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = limited.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(buffer.get(..n).unwrap_or(&[]));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Holds an exclusive lock on `<cache>/.locks/.../<etag>.lock` so two processes never append to
/// the same partial file; waits for another holder, giving up when cancelled.
fn lock(path: &Path, cancel: &AtomicBool, at: &FileRef<'_>) -> Result<File, HubError> {
    let io = |source| HubError::Io {
        context: format!("locking `{}`", path.display()),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io)?;
    let mut waited = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !waited {
                    log::info!(
                        "another process is downloading `{}` of `{}`; waiting for it",
                        at.file,
                        at.repo
                    );
                    waited = true;
                }
                if cancel.load(Ordering::Relaxed) {
                    return Err(HubError::Cancelled {
                        repo: at.repo.to_string(),
                        file: at.file.to_string(),
                        partial: path.to_path_buf(),
                    });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // File systems without locks: go on unlocked, as huggingface_hub does.
            Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                return Ok(file)
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
    }
}
