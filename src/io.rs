//! Writing files safely: to a temporary file next to the target, renamed when complete, never over
//! an input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refusing to overwrite the input `{0}`; choose another output path")]
    WouldOverwriteInput(PathBuf),
    #[error("writing `{path}`: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Whether a path names a tensor file (`.safetensors`) rather than an image or video.
pub fn is_tensor_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// Fails when `output` is one of `inputs` (compared after resolving links).
pub fn ensure_not_input(output: &Path, inputs: &[&Path]) -> Result<(), WriteError> {
    let resolved = output.canonicalize().ok();
    for input in inputs {
        let same = match (&resolved, input.canonicalize().ok()) {
            (Some(a), Some(b)) => *a == b,
            _ => output == *input,
        };
        if same {
            return Err(WriteError::WouldOverwriteInput(output.to_path_buf()));
        }
    }
    Ok(())
}

/// A temporary path in the same folder as `target`, so the final rename is atomic.
pub fn temp_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = format!(".{name}.{}.tmp", std::process::id());
    target.with_file_name(tmp)
}

/// Writes with `write` into a temporary file, then renames it over `target`.
pub fn write_atomically(
    target: &Path,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), WriteError> {
    let fail = |reason: String| WriteError::Write {
        path: target.to_path_buf(),
        reason,
    };
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
    }
    let tmp = temp_path_for(target);
    if let Err(reason) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(reason));
    }
    std::fs::rename(&tmp, target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e.to_string())
    })
}

/// Saves named tensors (converted to contiguous CPU tensors) with string metadata.
pub fn save_safetensors(
    target: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(), WriteError> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let cpu = tensor
            .to_device(&candle_core::Device::Cpu)
            .and_then(|t| t.contiguous())
            .map_err(|e| WriteError::Write {
                path: target.to_path_buf(),
                reason: e.to_string(),
            })?;
        owned.push((name.to_string(), cpu));
    }
    write_atomically(target, |tmp| {
        safetensors::serialize_to_file(
            owned.iter().map(|(n, t)| (n.as_str(), t)),
            Some(metadata),
            tmp,
        )
        .map_err(|e| e.to_string())
    })
}
