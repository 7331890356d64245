//! A local stand-in of the Hugging Face Hub for the download tests: a small HTTP server on
//! 127.0.0.1 that answers like the Hub (`HEAD` with X-Repo-Commit, X-Linked-Etag and
//! X-Linked-Size, a redirect of LFS files to a separate storage host, error codes), serving fake
//! repos made of the reference checkpoints, with faults to order (dropped connections, corrupted
//! bytes, error statuses, a slow link).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokenscope::hub::HubConfig;

use super::model_dir;

/// The commit every fake repo is at.
pub const COMMIT: &str = "3f68cd45302c7b4b532d933e71d9e6e54b1c7d5e";
pub struct FakeFile {
    pub bytes: Vec<u8>,
    pub sha256: String,
    /// LFS files are redirected to the storage host; small files are served directly.
    pub lfs: bool,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub host: &'static str,
    pub path: String,
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
pub struct State {
    /// repo id → (file name → file)
    pub repos: HashMap<String, HashMap<String, FakeFile>>,
    pub requests: Vec<Seen>,
    /// file name → bytes after which the first storage GET of that file drops the connection.
    pub drop_first_get: HashMap<String, usize>,
    /// files whose bytes are sent altered (same length, same announced sha256).
    pub corrupt: HashSet<String>,
    /// file name → status (and X-Error-Code) answered to any request for it.
    pub status: HashMap<String, (u16, Option<&'static str>)>,
    /// file name → pause between 16 KiB chunks of storage GETs (a slow link, for cancelling).
    pub throttle: HashMap<String, Duration>,
}

pub struct FakeHub {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeHub {
    pub fn start() -> Self {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let storage = TcpListener::bind("127.0.0.1:0").unwrap();
        hub.set_nonblocking(true).unwrap();
        storage.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", hub.local_addr().unwrap());
        let storage_url = format!("http://{}", storage.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Bounded: the server stops by itself after two minutes.
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let mut idle = true;
                    for (listener, host) in [(&hub, "hub"), (&storage, "storage")] {
                        if let Ok((stream, _)) = listener.accept() {
                            idle = false;
                            let state = state.clone();
                            let storage_url = storage_url.clone();
                            std::thread::spawn(move || {
                                handle(stream, host, &state, &storage_url);
                            });
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                // The listeners close here: later connections are refused.
            })
        };
        FakeHub {
            endpoint,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Serves `files` of a reference model folder as `repo`.
    pub fn add_repo(&self, repo: &str, reference: &str, files: &[&str]) {
        let dir = model_dir(reference);
        let mut map = HashMap::new();
        for file in files {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            map.insert(
                file.to_string(),
                FakeFile {
                    sha256: sha256_hex(&bytes),
                    lfs: file.ends_with(".jit"),
                    bytes,
                },
            );
        }
        lock(&self.state).repos.insert(repo.to_string(), map);
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state().requests.clone()
    }

    /// A Hub configuration that reaches this server and caches in `cache`, with short timeouts.
    pub fn config(&self, cache: &Path) -> HubConfig {
        let mut config = HubConfig::new(self.endpoint.clone(), cache);
        config.retry_delay = Duration::from_millis(10);
        config.read_timeout = Duration::from_secs(10);
        config.connect_timeout = Duration::from_secs(5);
        config
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn handle(mut stream: TcpStream, host: &'static str, state: &Mutex<State>, storage_url: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let seen = Seen {
        method: method.clone(),
        host,
        path: path.clone(),
        headers: headers.clone(),
    };
    let head = method == "HEAD";
    let mut st = lock(state);
    st.requests.push(seen);

    if host == "storage" {
        // /<sha256>/<file>
        let mut segments = path.trim_start_matches('/').splitn(2, '/');
        let (sha, file) = (segments.next().unwrap_or(""), segments.next().unwrap_or(""));
        let Some(found) = st
            .repos
            .values()
            .flat_map(|files| files.values())
            .find(|f| f.sha256 == sha)
        else {
            respond(&mut stream, 404, &[], b"no such blob");
            return;
        };
        let mut bytes = found.bytes.clone();
        if st.corrupt.contains(file) {
            for b in bytes.iter_mut().skip(1000).step_by(997) {
                *b ^= 0x5a;
            }
        }
        let total = bytes.len();
        let start = headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
        let drop_after = st.drop_first_get.remove(file);
        let throttle = st.throttle.get(file).copied();
        drop(st);
        let (status, body, mut extra) = match start {
            Some(s) if s >= total => {
                respond(
                    &mut stream,
                    416,
                    &[("Content-Range", format!("bytes */{total}"))],
                    b"",
                );
                return;
            }
            Some(s) => (
                206,
                bytes.get(s..).unwrap().to_vec(),
                vec![("Content-Range", format!("bytes {s}-{}/{total}", total - 1))],
            ),
            None => (200, bytes, Vec::new()),
        };
        extra.push(("Content-Type", "application/octet-stream".to_string()));
        match drop_after {
            Some(after) => {
                // Announce everything, send part, then drop the connection.
                extra.push(("Content-Length", body.len().to_string()));
                let mut head = format!("HTTP/1.1 {status} OK\r\n");
                for (n, v) in &extra {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.get(..after).unwrap());
                let _ = stream.flush();
                std::thread::sleep(Duration::from_millis(20));
                let _ = stream.shutdown(Shutdown::Both);
            }
            None => match throttle {
                Some(pause) => {
                    extra.push(("Content-Length", body.len().to_string()));
                    respond(&mut stream, status, &extra, &[]);
                    for chunk in body.chunks(16 * 1024) {
                        if stream.write_all(chunk).is_err() {
                            break;
                        }
                        let _ = stream.flush();
                        std::thread::sleep(pause);
                    }
                }
                None => respond(&mut stream, status, &extra, &body),
            },
        }
        return;
    }

    // /<owner>/<name>/resolve/<revision>/<file>
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [owner, name, "resolve", _revision, file] = segments.as_slice() else {
        respond(&mut stream, 404, &[], b"not found");
        return;
    };
    let repo = format!("{owner}/{name}");
    let commit = ("X-Repo-Commit", COMMIT.to_string());
    if let Some((status, code)) = st.status.get(*file).copied() {
        let mut headers = vec![commit];
        if let Some(code) = code {
            headers.push(("X-Error-Code", code.to_string()));
            headers.push(("X-Error-Message", format!("{code} for {file}")));
        }
        respond(&mut stream, status, &headers, b"error");
        return;
    }
    let Some(files) = st.repos.get(&repo) else {
        respond(
            &mut stream,
            404,
            &[
                ("X-Error-Code", "RepoNotFound".to_string()),
                ("X-Error-Message", "Repository not found".to_string()),
            ],
            b"Repository not found",
        );
        return;
    };
    let Some(found) = files.get(*file) else {
        respond(
            &mut stream,
            404,
            &[
                commit,
                ("X-Error-Code", "EntryNotFound".to_string()),
                ("X-Error-Message", "Entry not found".to_string()),
            ],
            b"Entry not found",
        );
        return;
    };
    if found.lfs {
        let location = format!("{storage_url}/{}/{file}", found.sha256);
        respond(
            &mut stream,
            302,
            &[
                commit,
                ("ETag", format!("\"{}\"", &found.sha256[..40])),
                ("X-Linked-Etag", format!("\"{}\"", found.sha256)),
                ("X-Linked-Size", found.bytes.len().to_string()),
                ("Location", location),
            ],
            b"",
        );
    } else {
        // A small file: the ETag is the git blob id, not a sha256.
        let headers = [
            commit,
            ("ETag", format!("\"{}\"", &found.sha256[..40])),
            ("Content-Length", found.bytes.len().to_string()),
        ];
        let body = if head {
            Vec::new()
        } else {
            found.bytes.clone()
        };
        respond(&mut stream, 200, &headers, &body);
    }
}

/// A fresh folder, removed when the test passes (kept for a look when it fails).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("tokenscope-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}
