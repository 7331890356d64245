//! The models the viewer can run: trained ones in `assets/models/`, the tiny reference ones in
//! `../shared/reference/`, folders or files picked by the user, and the official releases in the
//! Hugging Face cache. Each with its family, compression and whether it can run now.

use std::path::{Path, PathBuf};

use crate::analysis::ModelSource;
use crate::hub::{CacheStatus, Hub, Release};
pub use crate::shipped::{folders_in, project_root, trained_models};
use crate::tokenizer::config::{self, Family};

/// Where a model comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Trained,
    Reference,
    Picked,
    HuggingFace,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Trained => "Tokenscope nano model, trained here (not an NVIDIA release)",
            Origin::Reference => "reference (tiny, random weights)",
            Origin::Picked => "opened",
            Origin::HuggingFace => "Hugging Face cache",
        }
    }
}

/// Whether a model can run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Checkpoint files are on disk.
    OnDisk,
    /// Not runnable, and why (with what to do about it).
    Unavailable(String),
}

/// One model in the catalogue.
#[derive(Clone, Debug)]
pub struct ModelEntry {
    /// What the job runs (the catalogue key).
    pub key: ModelSource,
    pub name: String,
    pub origin: Origin,
    pub family: Option<Family>,
    pub spatial: usize,
    pub temporal: usize,
    pub availability: Availability,
    /// For official releases: the repo to fetch and how much it downloads.
    pub hub: Option<HubSource>,
}

/// Where an official release comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSource {
    pub repo: String,
    /// Approximate bytes a fetch downloads (`encoder.jit` + `decoder.jit`).
    pub download_bytes: u64,
}

impl ModelEntry {
    /// Pixels per token position: spatial² × temporal.
    pub fn compression(&self) -> usize {
        self.spatial * self.spatial * self.temporal.max(1)
    }

    pub fn rate_label(&self) -> String {
        if self.temporal > 1 {
            format!("{}x{}x{}", self.temporal, self.spatial, self.spatial)
        } else {
            format!("{}x{}", self.spatial, self.spatial)
        }
    }

    pub fn is_available(&self) -> bool {
        self.availability == Availability::OnDisk
    }
}

/// Family and compression of a checkpoint folder: from a variant name in its path, else from
/// its `config.json`.
fn describe_folder(path: &Path) -> (Option<Family>, usize, usize) {
    let text = path.display().to_string();
    if let Some(v) = config::find_variant_in_text(&text) {
        return (
            Some(v.config.family),
            v.config.spatial_compression,
            v.config.temporal_compression,
        );
    }
    let json = if path.is_dir() {
        path.join("config.json")
    } else {
        path.with_file_name("config.json")
    };
    if let Some(cfg) = std::fs::read_to_string(json)
        .ok()
        .and_then(|t| config::config_from_json(&t).ok())
    {
        return (
            Some(cfg.family),
            cfg.spatial_compression,
            cfg.temporal_compression,
        );
    }
    (None, 0, 0)
}

/// An entry for a folder or file on disk; shipped models are keyed by name.
pub fn entry_for_path(path: &Path, origin: Origin) -> ModelEntry {
    let (family, spatial, temporal) = describe_folder(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let key = match origin {
        Origin::Trained => ModelSource::Shipped(name.clone()),
        _ => ModelSource::Path(path.to_path_buf()),
    };
    ModelEntry {
        key,
        name,
        origin,
        family,
        spatial,
        temporal,
        availability: if path.exists() {
            Availability::OnDisk
        } else {
            Availability::Unavailable(format!("`{}` does not exist", path.display()))
        },
        hub: None,
    }
}

/// Scans every source. `picked` are paths the user opened earlier this session; `hub` lists the
/// official releases with their state in its cache.
pub fn scan(root: &Path, picked: &[PathBuf], hub: Option<&Hub>) -> Vec<ModelEntry> {
    let mut out = Vec::new();
    for dir in trained_models(root) {
        out.push(entry_for_path(&dir, Origin::Trained));
    }
    for dir in folders_in(&root.join("../shared/reference")) {
        let dir = dir.canonicalize().unwrap_or(dir);
        out.push(entry_for_path(&dir, Origin::Reference));
    }
    for p in picked {
        if !out.iter().any(|e| e.key == ModelSource::Path(p.clone())) {
            out.push(entry_for_path(p, Origin::Picked));
        }
    }
    if let Some(hub) = hub {
        let offline = hub.config().offline;
        for entry in hub.list() {
            let variant = config::find_variant(entry.model.variant);
            let (family, spatial, temporal) = variant
                .map(|v| {
                    (
                        Some(v.config.family),
                        v.config.spatial_compression,
                        v.config.temporal_compression,
                    )
                })
                .unwrap_or((None, 0, 0));
            let how_to_get = || {
                if offline {
                    hub.offline_help(entry.model.repo)
                        .unwrap_or_else(|e| e.to_string())
                } else {
                    // The repo id: the short name of a 1.0 repo would fetch its 0.1 namesake.
                    format!(
                        "press Fetch (or run `tokenscope models fetch {}`)",
                        entry.model.repo
                    )
                }
            };
            let (key, availability) = match &entry.status {
                CacheStatus::Complete { snapshot, .. } => {
                    (ModelSource::Path(snapshot.clone()), Availability::OnDisk)
                }
                CacheStatus::Partial { missing, .. } => (
                    ModelSource::Hub(entry.model.repo.to_string()),
                    Availability::Unavailable(format!(
                        "partly in the Hugging Face cache (missing {}): {}",
                        missing.join(", "),
                        how_to_get()
                    )),
                ),
                CacheStatus::Absent => (
                    ModelSource::Hub(entry.model.repo.to_string()),
                    Availability::Unavailable(format!(
                        "not in the Hugging Face cache: {}",
                        how_to_get()
                    )),
                ),
            };
            out.push(ModelEntry {
                key,
                // 0.1 and 1.0 share short names (CV8x8x8, DV8x16x16): the release tells them
                // apart; Tokenize1 names already carry -720p/-360p.
                name: match entry.model.release {
                    Release::Tokenize1 => entry.model.short_name().to_string(),
                    release => format!("{} · {}", entry.model.short_name(), release.name()),
                },
                origin: Origin::HuggingFace,
                family,
                spatial,
                temporal,
                availability,
                hub: Some(HubSource {
                    repo: entry.model.repo.to_string(),
                    download_bytes: entry.model.sizes.download(),
                }),
            });
        }
    }
    out
}

/// The default model: the first trained one, else a tiny reference video model.
pub fn default_model(entries: &[ModelEntry]) -> Option<&ModelEntry> {
    let available = || entries.iter().filter(|e| e.is_available());
    available()
        .find(|e| e.origin == Origin::Trained)
        .or_else(|| available().find(|e| e.name == "DV8x8x8-tiny"))
        .or_else(|| available().find(|e| e.name == "CV8x8x8-tiny"))
        .or_else(|| available().next())
}

/// Finds an entry by key, by name, or by a path that canonicalises to the same folder.
pub fn find<'a>(entries: &'a [ModelEntry], spec: &str) -> Option<&'a ModelEntry> {
    let root = project_root();
    let canonical = Path::new(spec).canonicalize().ok();
    entries.iter().find(|e| {
        e.key.to_string() == spec
            || e.name == spec
            || canonical.as_ref().is_some_and(|c| {
                e.key
                    .local_path(&root)
                    .and_then(|p| p.canonicalize().ok())
                    .as_ref()
                    == Some(c)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_folders_are_listed_with_their_rates() {
        let root = project_root();
        if !root.join("../shared/reference").is_dir() {
            eprintln!("skipping: no ../shared/reference");
            return;
        }
        let entries = scan(&root, &[], None);
        let dv = entries
            .iter()
            .find(|e| e.name == "DV8x8x8-tiny")
            .expect("DV8x8x8-tiny listed");
        assert_eq!(dv.family, Some(Family::DV));
        assert_eq!((dv.spatial, dv.temporal), (8, 8));
        assert_eq!(dv.compression(), 512);
        assert!(dv.is_available());
        // A shipped nano model is the default; without one, the tiny discrete video model.
        let expected = match trained_models(&root).first() {
            Some(dir) => entry_for_path(dir, Origin::Trained).name,
            None => "DV8x8x8-tiny".to_string(),
        };
        assert_eq!(
            default_model(&entries).map(|e| e.name.as_str()),
            Some(expected.as_str())
        );
    }
}
