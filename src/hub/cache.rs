//! The Hugging Face cache layout, as `huggingface_hub` writes it, so the Python tools and
//! Tokenscope share one copy of every file:
//!
//! ```text
//! <cache>/models--nvidia--Cosmos-0.1-Tokenizer-CV8x8x8/
//!     blobs/<etag>                  file contents, named by the Hub's ETag (sha256 for LFS files)
//!     blobs/<etag>.incomplete       a download in progress; resumed with an HTTP Range request
//!     refs/main                     the commit hash `main` pointed at when last fetched
//!     snapshots/<commit>/encoder.jit -> ../../blobs/<etag>
//! <cache>/.locks/models--nvidia--Cosmos-0.1-Tokenizer-CV8x8x8/<etag>.lock
//! ```

use std::path::{Path, PathBuf};

use super::registry::{FILE_SETS, PREFERRED_FILES};

/// `nvidia/Cosmos-0.1-Tokenizer-CV8x8x8` → `models--nvidia--Cosmos-0.1-Tokenizer-CV8x8x8`.
pub fn repo_folder_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// Whether `revision` is a full commit hash (then it names a snapshot folder directly).
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether `name` is safe to use as one path component (ETags and commit hashes from a server).
pub fn is_safe_component(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What the cache holds of one repo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// A snapshot folder with a complete set of files (`encoder.jit` + `decoder.jit`, or
    /// `autoencoder.jit`); pass `snapshot` to the loader.
    Complete {
        snapshot: PathBuf,
        files: Vec<String>,
        bytes: u64,
    },
    /// Some files, or an interrupted download that `fetch` resumes.
    Partial {
        /// The snapshot folder the present files are in, if any.
        snapshot: Option<PathBuf>,
        present: Vec<String>,
        missing: Vec<String>,
        /// Bytes already in `.incomplete` downloads.
        incomplete_bytes: u64,
    },
    Absent,
}

impl CacheStatus {
    pub fn is_complete(&self) -> bool {
        matches!(self, CacheStatus::Complete { .. })
    }

    /// `complete`, `partial` or `absent`.
    pub fn label(&self) -> &'static str {
        match self {
            CacheStatus::Complete { .. } => "complete",
            CacheStatus::Partial { .. } => "partial",
            CacheStatus::Absent => "absent",
        }
    }

    /// The snapshot folder to load from, when complete.
    pub fn snapshot(&self) -> Option<&Path> {
        match self {
            CacheStatus::Complete { snapshot, .. } => Some(snapshot),
            _ => None,
        }
    }
}

/// One repo's folder in the cache.
#[derive(Clone, Debug)]
pub struct RepoCache {
    folder: PathBuf,
    locks: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str) -> Self {
        let name = repo_folder_name(repo);
        Self {
            folder: cache_dir.join(&name),
            locks: cache_dir.join(".locks").join(name),
        }
    }

    /// `<cache>/models--owner--name`.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.folder.join("blobs").join(etag)
    }

    pub fn incomplete_path(&self, etag: &str) -> PathBuf {
        self.folder.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn lock_path(&self, etag: &str) -> PathBuf {
        self.locks.join(format!("{etag}.lock"))
    }

    pub fn ref_path(&self, revision: &str) -> PathBuf {
        self.folder.join("refs").join(revision)
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.folder.join("snapshots").join(commit)
    }

    /// The commit a revision (`main`) pointed at when last fetched.
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.ref_path(revision)).ok()?;
        let commit = text.trim();
        is_safe_component(commit).then(|| commit.to_string())
    }

    /// Points `refs/<revision>` at `commit` (written to a temporary file, then renamed).
    pub fn write_ref(&self, revision: &str, commit: &str) -> std::io::Result<()> {
        if is_commit_hash(revision) {
            return Ok(());
        }
        let path = self.ref_path(revision);
        crate::io::write_atomically(&path, |tmp| {
            std::fs::write(tmp, commit).map_err(|e| e.to_string())
        })
        .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Makes `snapshots/<commit>/<file>` point at `blobs/<etag>`: a relative symlink as
    /// `huggingface_hub` makes, or a hard link or a copy where symlinks are not allowed.
    pub fn link_into_snapshot(
        &self,
        commit: &str,
        file: &str,
        etag: &str,
    ) -> std::io::Result<PathBuf> {
        let pointer = self.snapshot_dir(commit).join(file);
        let blob = self.blob_path(etag);
        if let Some(parent) = pointer.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Build the link beside its final name, then rename over whatever was there.
        let tmp = crate::io::temp_path_for(&pointer);
        let _ = std::fs::remove_file(&tmp);
        let depth = file.split('/').count() + 1;
        let mut relative = PathBuf::new();
        for _ in 0..depth {
            relative.push("..");
        }
        relative.push("blobs");
        relative.push(etag);
        if make_symlink(&relative, &tmp).is_err() && std::fs::hard_link(&blob, &tmp).is_err() {
            std::fs::copy(&blob, &tmp)?;
        }
        std::fs::rename(&tmp, &pointer).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(pointer)
    }

    /// Snapshot folders to look in for `revision`: the one `refs/<revision>` names first, then
    /// (for `main`) every other snapshot, newest first, so files put in place by hand (e.g. in
    /// `snapshots/main/`) are found too.
    fn candidate_snapshots(&self, revision: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let referenced = self.read_ref(revision).map(|c| self.snapshot_dir(&c));
        if let Some(dir) = &referenced {
            out.push(dir.clone());
        }
        if revision == "main" {
            let mut others: Vec<(std::time::SystemTime, PathBuf)> =
                std::fs::read_dir(self.folder.join("snapshots"))
                    .into_iter()
                    .flatten()
                    .filter_map(|entry| entry.ok())
                    .map(|entry| entry.path())
                    .filter(|p| p.is_dir() && Some(p) != referenced.as_ref())
                    .map(|p| {
                        let modified = p
                            .metadata()
                            .and_then(|m| m.modified())
                            .unwrap_or(std::time::UNIX_EPOCH);
                        (modified, p)
                    })
                    .collect();
            others.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
            out.extend(others.into_iter().map(|(_, p)| p));
        }
        out
    }

    /// The snapshot folder `refs/<revision>` names (whether or not it exists yet), or
    /// `snapshots/<revision>` when there is no ref: where files belong when put in place by hand.
    pub fn target_snapshot(&self, revision: &str) -> PathBuf {
        match self.read_ref(revision) {
            Some(commit) => self.snapshot_dir(&commit),
            None => self.snapshot_dir(revision),
        }
    }

    /// Total bytes in `.incomplete` downloads of this repo.
    pub fn incomplete_bytes(&self) -> u64 {
        std::fs::read_dir(self.folder.join("blobs"))
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".incomplete"))
            .filter_map(|entry| entry.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// What the cache holds of this repo at `revision`.
    pub fn status(&self, revision: &str) -> CacheStatus {
        let candidates = self.candidate_snapshots(revision);
        for dir in &candidates {
            for set in FILE_SETS {
                if set.iter().all(|f| dir.join(f).is_file()) {
                    let bytes = set
                        .iter()
                        .filter_map(|f| dir.join(f).metadata().ok())
                        .map(|m| m.len())
                        .sum();
                    return CacheStatus::Complete {
                        snapshot: dir.clone(),
                        files: set.iter().map(|f| f.to_string()).collect(),
                        bytes,
                    };
                }
            }
        }
        // Not complete: report what the most relevant snapshot has.
        let mut best: Option<(PathBuf, Vec<String>)> = None;
        for dir in &candidates {
            let present: Vec<String> = FILE_SETS
                .iter()
                .flat_map(|set| set.iter())
                .filter(|f| dir.join(f).is_file())
                .map(|f| f.to_string())
                .collect();
            if !present.is_empty() && best.as_ref().is_none_or(|(_, p)| present.len() > p.len()) {
                best = Some((dir.clone(), present));
            }
        }
        let incomplete_bytes = self.incomplete_bytes();
        if best.is_none() && incomplete_bytes == 0 {
            return CacheStatus::Absent;
        }
        let (snapshot, present) = match best {
            Some((dir, present)) => (Some(dir), present),
            None => (None, Vec::new()),
        };
        let missing = PREFERRED_FILES
            .iter()
            .filter(|f| !present.iter().any(|p| p == *f))
            .map(|f| f.to_string())
            .collect();
        CacheStatus::Partial {
            snapshot,
            present,
            missing,
            incomplete_bytes,
        }
    }
}

#[cfg(unix)]
fn make_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn make_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

#[cfg(not(any(unix, windows)))]
fn make_symlink(_target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("symlinks are not supported here"))
}
