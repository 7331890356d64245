//! Which model a job runs and how it gets into memory: a [`ModelSource`] (a checkpoint on disk,
//! an official release on the Hugging Face Hub, a Tokenscope nano model) is resolved to a folder
//! through the hub layer, with progress and cancel passed as values so each front end shows them
//! its own way, then loaded.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::hub::{FetchProgress, Hub, HubError};
use crate::shipped;
use crate::tokenizer::checkpoint::{self, LoadOptions, LoadedModel};
use crate::tokenizer::TokenizerError;

/// Where a model's weights come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelSource {
    /// A checkpoint folder or file on disk.
    Path(PathBuf),
    /// An official release: a variant name or repo id, optionally `@revision`, taken from the
    /// Hugging Face cache, fetched when missing and the network is allowed.
    Hub(String),
    /// A Tokenscope nano model shipped in `assets/models/<name>`.
    Shipped(String),
}

/// Why a model could not be resolved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("`{0}` does not exist")]
    Missing(PathBuf),
    #[error("no Tokenscope nano model named `{0}` in assets/models/")]
    NoSuchShipped(String),
    #[error(
        "`{0}` is an official release, and the Hugging Face cache is off here; open a checkpoint folder instead"
    )]
    HubOff(String),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("loading `{path}`: {source}")]
    Load {
        path: PathBuf,
        // Boxed: a loader error is large, and this one travels through every caller.
        #[source]
        source: Box<TokenizerError>,
    },
}

impl ModelError {
    /// Whether the user cancelled (a fetch or a load).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, ModelError::Hub(HubError::Cancelled { .. }))
            || matches!(self, ModelError::Load { source, .. } if matches!(**source, TokenizerError::Cancelled))
    }
}

impl ModelSource {
    /// Reads a `--model` value or a saved setting: an existing path as it is, else the name of a
    /// shipped nano model under `root`, else a release name for the Hub.
    pub fn parse(spec: &str, root: &Path) -> Self {
        let path = Path::new(spec);
        if path.exists() {
            return ModelSource::Path(path.to_path_buf());
        }
        if !spec.contains(['/', '@']) && shipped::has_checkpoint(&shipped_dir(root, spec)) {
            return ModelSource::Shipped(spec.to_string());
        }
        ModelSource::Hub(spec.to_string())
    }

    /// The folder or file on disk, when it is known without asking the Hub.
    pub fn local_path(&self, root: &Path) -> Option<PathBuf> {
        match self {
            ModelSource::Path(p) => Some(p.clone()),
            ModelSource::Shipped(name) => Some(shipped_dir(root, name)),
            ModelSource::Hub(_) => None,
        }
    }

    /// The checkpoint's folder or file: on disk as it is, or from the Hugging Face cache,
    /// fetched when missing (unless `hub` is offline). `progress` sees every fetch report.
    pub fn resolve(
        &self,
        root: &Path,
        hub: Option<&Hub>,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(&FetchProgress<'_>),
    ) -> Result<PathBuf, ModelError> {
        match self {
            ModelSource::Path(p) if p.exists() => Ok(p.clone()),
            ModelSource::Path(p) => Err(ModelError::Missing(p.clone())),
            ModelSource::Shipped(name) => {
                let dir = shipped_dir(root, name);
                if shipped::has_checkpoint(&dir) {
                    Ok(dir)
                } else {
                    Err(ModelError::NoSuchShipped(name.clone()))
                }
            }
            ModelSource::Hub(spec) => {
                let hub = hub.ok_or_else(|| ModelError::HubOff(spec.clone()))?;
                Ok(hub.resolve(spec, cancel, progress)?)
            }
        }
    }

    /// [`resolve`](Self::resolve), then load the checkpoint.
    pub fn load(
        &self,
        root: &Path,
        hub: Option<&Hub>,
        options: &LoadOptions,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(&FetchProgress<'_>),
    ) -> Result<(PathBuf, LoadedModel), ModelError> {
        let path = self.resolve(root, hub, cancel, progress)?;
        let loaded = checkpoint::load(&path, options).map_err(|source| ModelError::Load {
            path: path.clone(),
            source: Box::new(source),
        })?;
        Ok((path, loaded))
    }
}

impl ModelSource {
    /// A short name for labels: a path's last component, else the name as given.
    pub fn short_name(&self) -> String {
        match self {
            ModelSource::Path(p) => p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            ModelSource::Hub(spec) | ModelSource::Shipped(spec) => spec.clone(),
        }
    }
}

/// Written as the spec [`ModelSource::parse`] reads (exports, saved settings).
impl serde::Serialize for ModelSource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for ModelSource {
    /// What [`ModelSource::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Path(p) => write!(f, "{}", p.display()),
            ModelSource::Hub(spec) | ModelSource::Shipped(spec) => f.write_str(spec),
        }
    }
}

fn shipped_dir(root: &Path, name: &str) -> PathBuf {
    root.join("assets/models").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tokenscope-model-source-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A spec is a path when one exists, a shipped model when `assets/models/` has it, else a
    /// release for the Hub; and it prints back to what parses to the same source.
    #[test]
    fn specs_parse_to_the_source_they_name_and_print_back() {
        let root = scratch("parse");
        let nano = root.join("assets/models/CI8x8-nano");
        std::fs::create_dir_all(&nano).unwrap();
        std::fs::write(nano.join("model.safetensors"), b"").unwrap();
        let picked = root.join("picked");
        std::fs::create_dir_all(&picked).unwrap();

        let cases = [
            (
                picked.display().to_string(),
                ModelSource::Path(picked.clone()),
            ),
            (
                "CI8x8-nano".to_string(),
                ModelSource::Shipped("CI8x8-nano".into()),
            ),
            ("CV8x8x8".to_string(), ModelSource::Hub("CV8x8x8".into())),
            (
                "nvidia/Cosmos-0.1-Tokenizer-CV8x8x8@main".to_string(),
                ModelSource::Hub("nvidia/Cosmos-0.1-Tokenizer-CV8x8x8@main".into()),
            ),
        ];
        for (spec, want) in cases {
            let source = ModelSource::parse(&spec, &root);
            assert_eq!(source, want, "{spec}");
            assert_eq!(ModelSource::parse(&source.to_string(), &root), source);
        }
    }

    /// Each source that cannot be resolved says why, without touching the network.
    #[test]
    fn unresolvable_sources_say_why() {
        let root = scratch("resolve");
        let cancel = AtomicBool::new(false);
        let gone = ModelSource::Path(root.join("gone"));
        assert!(matches!(
            gone.resolve(&root, None, &cancel, &mut |_| {}),
            Err(ModelError::Missing(_))
        ));
        let shipped = ModelSource::Shipped("nope".into());
        assert!(matches!(
            shipped.resolve(&root, None, &cancel, &mut |_| {}),
            Err(ModelError::NoSuchShipped(_))
        ));
        let release = ModelSource::Hub("CV8x8x8".into());
        let err = release
            .resolve(&root, None, &cancel, &mut |_| {})
            .unwrap_err();
        assert!(
            err.to_string().contains("Hugging Face cache is off"),
            "{err}"
        );
    }
}
