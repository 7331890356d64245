//! Where Tokenscope's own trained models live: checkpoint folders under `assets/models/`.

use std::path::{Path, PathBuf};

/// The repository root (for `assets/` and `../shared/`), from the current directory or the
/// executable's build location.
pub fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("assets").is_dir() {
        return manifest;
    }
    std::env::current_dir().unwrap_or(manifest)
}

/// Whether a folder holds a checkpoint file Tokenscope reads.
pub fn has_checkpoint(dir: &Path) -> bool {
    [
        "model.safetensors",
        "encoder.jit",
        "autoencoder.jit",
        "diffusion_pytorch_model.safetensors",
    ]
    .iter()
    .any(|f| dir.join(f).is_file())
}

/// The models Tokenscope trained and ships: checkpoint folders in `<root>/assets/models`, sorted.
pub fn trained_models(root: &Path) -> Vec<PathBuf> {
    folders_in(&root.join("assets/models"))
}

/// Checkpoint folders directly under `dir`, sorted by name.
pub fn folders_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && has_checkpoint(p))
        .collect();
    out.sort();
    out
}
