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

/// The bytes of one tensor written to a spool file beside the target as they are produced (the
/// reconstruction of a long clip, window by window), then copied into the safetensors file by
/// [`save_safetensors_spooled`], so the tensor is never in memory whole. The spool file is
/// removed when this is dropped, whatever happened.
pub struct SpooledTensor {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    bytes: u64,
}

impl SpooledTensor {
    /// An empty spool file next to `target` (same folder, hidden, named after it).
    pub fn create(target: &Path) -> Result<Self, WriteError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = target.with_file_name(format!(".{name}.{}.spool.tmp", std::process::id()));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| write_error(target, e))?;
        }
        let file = std::fs::File::create(&path).map_err(|e| write_error(target, e))?;
        Ok(Self {
            path,
            file: std::io::BufWriter::new(file),
            bytes: 0,
        })
    }

    /// Appends raw bytes (little-endian values, in the tensor's row-major order).
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        use std::io::Write as _;
        self.file
            .write_all(bytes)
            .map_err(|e| write_error(&self.path, e))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for SpooledTensor {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn write_error(path: &Path, e: std::io::Error) -> WriteError {
    WriteError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// [`save_safetensors`] plus one tensor whose bytes are in `spooled`: `name`, `dtype` and `shape`
/// describe it, and the spool must fill the shape exactly. It is written after the in-memory
/// tensors (which go first, widest type first, so every tensor stays aligned) and copied from
/// the spool file in pieces.
pub fn save_safetensors_spooled(
    target: &Path,
    tensors: &[(&str, &Tensor)],
    (name, dtype, shape, mut spooled): (&str, safetensors::Dtype, &[usize], SpooledTensor),
    metadata: HashMap<String, String>,
) -> Result<(), WriteError> {
    use safetensors::tensor::{Metadata, TensorInfo, View};
    use std::io::Write as _;
    let fail = |reason: String| WriteError::Write {
        path: target.to_path_buf(),
        reason,
    };
    let expected = (shape.iter().product::<usize>() as u64 * dtype.bitsize() as u64).div_ceil(8);
    if spooled.len() != expected {
        return Err(fail(format!(
            "`{name}` has {} bytes for a {shape:?} {dtype} tensor ({expected} bytes)",
            spooled.len()
        )));
    }
    let mut owned = Vec::with_capacity(tensors.len());
    for (tensor_name, tensor) in tensors {
        let cpu = tensor
            .to_device(&candle_core::Device::Cpu)
            .and_then(|t| t.contiguous())
            .map_err(|e| fail(e.to_string()))?;
        owned.push((tensor_name.to_string(), cpu));
    }
    // `View::dtype`: the safetensors type, which orders by alignment (candle's `dtype` does not).
    owned.sort_by(|(a_name, a), (b_name, b)| {
        View::dtype(b).cmp(&View::dtype(a)).then(a_name.cmp(b_name))
    });
    let mut infos = Vec::with_capacity(owned.len() + 1);
    let mut offset = 0usize;
    for (tensor_name, tensor) in &owned {
        let n = View::data_len(tensor);
        infos.push((
            tensor_name.clone(),
            TensorInfo {
                dtype: View::dtype(tensor),
                shape: tensor.dims().to_vec(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    infos.push((
        name.to_string(),
        TensorInfo {
            dtype,
            shape: shape.to_vec(),
            data_offsets: (offset, offset + expected as usize),
        },
    ));
    let header = Metadata::new(Some(metadata), infos).map_err(|e| fail(e.to_string()))?;
    let mut header = serde_json::to_string(&header)
        .map_err(|e| fail(e.to_string()))?
        .into_bytes();
    // The data section starts 8-byte aligned, as the safetensors writer leaves it.
    header.resize(header.len().next_multiple_of(8), b' ');
    spooled
        .file
        .flush()
        .map_err(|e| fail(format!("spool file: {e}")))?;
    write_atomically(target, |tmp| {
        let io = |e: std::io::Error| e.to_string();
        let mut out = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io)?);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&header).map_err(io)?;
        for (_, tensor) in &owned {
            out.write_all(&View::data(tensor)).map_err(io)?;
        }
        let mut spool = std::fs::File::open(&spooled.path).map_err(io)?;
        std::io::copy(&mut spool, &mut out).map_err(io)?;
        out.flush().map_err(io)
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
