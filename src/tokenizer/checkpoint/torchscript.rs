//! A safe, bounded reader for the weights inside PyTorch TorchScript archives (`.jit` files
//! written by `torch.jit.save`).
//!
//! A TorchScript archive is a zip file whose entries all sit under one top-level folder (its
//! name varies, so it is located through the single `<root>/data.pkl` entry). `data.pkl` is a
//! pickle of the module tree; each tensor in it points at a raw little-endian storage in
//! `<root>/data/<key>`. This module reads the zip, interprets `data.pkl` with the small
//! non-executing interpreter of [`super::pickle`] (which accepts only an allowlist of opcodes and
//! globals), and turns every tensor into a contiguous CPU [`Tensor`] of the stored dtype, named by
//! its state-dict key (`encoder.conv_in.0.conv3d.weight`, ...).
//!
//! Nothing in the file is ever executed, and every size is checked before anything is allocated:
//! corrupt, truncated or hostile files produce a [`TorchScriptError`], never a panic.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use super::pickle::{self, PickleError, PickledTensor};

/// Largest accepted `data.pkl` (real ones are well below 1 MiB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Largest accepted small metadata entry (`byteorder`).
const MAX_METADATA_BYTES: u64 = 64;
/// Most bytes decompressed from the archive in total (64 GiB).
const MAX_TOTAL_BYTES: u64 = 1 << 36;
/// Most bytes of tensors that have more elements than their storage (stride-0 views), in total.
const MAX_EXPANDED_BYTES: u64 = 1 << 30;
/// Deflate cannot expand data by more than about 1032:1; a header claiming more is a lie.
const MAX_DEFLATE_RATIO: u64 = 1032;
/// Initial buffer size when reading an entry: memory grows only as real data arrives.
const MAX_INITIAL_CAPACITY: u64 = 64 << 20;

/// One tensor of a TorchScript archive.
#[derive(Debug, Clone)]
pub struct ArchiveTensor {
    /// The state-dict key: attribute names from the root module joined with `.`.
    pub name: String,
    /// A contiguous CPU tensor of the stored dtype (F32, BF16, F16, F64, I64, I32, I16, U8, ...).
    pub tensor: Tensor,
}

/// Everything that can go wrong while reading a TorchScript archive. Every variant names the
/// file (the path, or the label given to [`read_torchscript_bytes`]).
#[derive(Debug, thiserror::Error)]
pub enum TorchScriptError {
    /// The file could not be opened or read.
    #[error("cannot read `{file}`: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },

    /// Not a zip, or a zip without the entries of a TorchScript archive.
    #[error(
        "`{file}` is not a TorchScript archive ({reason}); expected a file saved with \
         torch.jit.save"
    )]
    NotTorchScript { file: String, reason: String },

    /// The zip structure or one of its entries is damaged.
    #[error("`{file}` is damaged: {detail}; re-download or re-export the file")]
    Corrupt { file: String, detail: String },

    /// `data.pkl` is not a well-formed pickle of a module tree.
    #[error(
        "`{file}` is damaged: its data.pkl is malformed at byte {offset}: {detail}; re-download \
         or re-export the file"
    )]
    MalformedPickle {
        file: String,
        offset: u64,
        detail: String,
    },

    /// `data.pkl` uses an opcode that `torch.jit.save` never writes for weights.
    #[error(
        "`{file}`: its data.pkl uses the pickle opcode {opcode} at byte {offset}, which does not \
         occur in TorchScript weight archives; the file is damaged or was not written by \
         torch.jit.save"
    )]
    UnsupportedOpcode {
        file: String,
        opcode: String,
        offset: u64,
    },

    /// `data.pkl` refers to a Python global outside the allowlist. Nothing was executed.
    #[error(
        "`{file}`: its data.pkl refers to `{global}` at byte {offset}, which this reader refuses \
         to load (only tensors, storages and TorchScript modules are allowed; nothing was \
         executed); the file is not a plain TorchScript weights archive and may be malicious"
    )]
    DisallowedGlobal {
        file: String,
        global: String,
        offset: u64,
    },

    /// A valid archive using a feature this reader does not support (a tensor dtype candle
    /// cannot represent, big-endian storages, ...).
    #[error("`{file}`: {detail}")]
    Unsupported { file: String, detail: String },

    /// The object tree in `data.pkl` is not a TorchScript module tree.
    #[error("`{file}`: unexpected content in data.pkl at `{path}`: {detail}")]
    Structure {
        file: String,
        path: String,
        detail: String,
    },

    /// A storage is too short for a tensor that views it.
    #[error(
        "`{file}` is truncated or damaged: storage `{storage}` holds {actual} bytes but tensor \
         `{tensor}` {shape:?} needs {needed}"
    )]
    Truncated {
        file: String,
        storage: String,
        actual: u64,
        tensor: String,
        shape: Vec<u64>,
        needed: u64,
    },

    /// A storage entry referenced by `data.pkl` is not in the zip.
    #[error(
        "`{file}` is incomplete: storage `{storage}` of tensor `{tensor}` is missing from the \
         archive; re-download or re-export the file"
    )]
    MissingStorage {
        file: String,
        storage: String,
        tensor: String,
    },

    /// A safety bound was exceeded.
    #[error(
        "`{file}`: {what} exceeds the safety limit of {limit}; the file is damaged or far larger \
         than any tokenizer checkpoint"
    )]
    LimitExceeded {
        file: String,
        what: String,
        limit: u64,
    },

    /// candle refused to build a tensor.
    #[error("`{file}`: cannot build tensor `{tensor}`: {source}")]
    Tensor {
        file: String,
        tensor: String,
        #[source]
        source: Box<candle_core::Error>,
    },
}

/// Reads every tensor of the TorchScript archive at `path`, in pickling order, named by their
/// dotted state-dict keys.
pub fn read_torchscript(path: &Path) -> Result<Vec<ArchiveTensor>, TorchScriptError> {
    let label = path.display().to_string();
    let io_err = |source| TorchScriptError::Io {
        file: label.clone(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if meta.is_dir() {
        return Err(not_torchscript(&label, "it is a directory"));
    }
    if meta.len() == 0 {
        return Err(not_torchscript(&label, "the file is empty"));
    }
    read_archive(BufReader::new(file), &label)
}

/// Like [`read_torchscript`], for an archive already in memory; `label` names it in messages.
pub fn read_torchscript_bytes(
    bytes: &[u8],
    label: &str,
) -> Result<Vec<ArchiveTensor>, TorchScriptError> {
    if bytes.is_empty() {
        return Err(not_torchscript(label, "the file is empty"));
    }
    read_archive(std::io::Cursor::new(bytes), label)
}

/// Whether `path` looks like a TorchScript archive: a zip with exactly one `<root>/data.pkl` and
/// a `<root>/code/` folder or `<root>/constants.pkl`. Reads only the zip directory.
pub fn is_torchscript_archive(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 4];
    if reader.read_exact(&mut magic).is_err() || &magic != b"PK\x03\x04" {
        return false;
    }
    if reader.seek(SeekFrom::Start(0)).is_err() {
        return false;
    }
    let Ok(zip) = ZipArchive::new(reader) else {
        return false;
    };
    match find_root(&zip) {
        Ok(root) => has_torchscript_entries(&zip, &root),
        Err(_) => false,
    }
}

fn not_torchscript(file: &str, reason: impl Into<String>) -> TorchScriptError {
    TorchScriptError::NotTorchScript {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

fn corrupt(file: &str, detail: impl Into<String>) -> TorchScriptError {
    TorchScriptError::Corrupt {
        file: file.to_owned(),
        detail: detail.into(),
    }
}

fn limit_exceeded(file: &str, what: impl Into<String>, limit: u64) -> TorchScriptError {
    TorchScriptError::LimitExceeded {
        file: file.to_owned(),
        what: what.into(),
        limit,
    }
}

fn pickle_error(file: &str, err: PickleError) -> TorchScriptError {
    let file = file.to_owned();
    match err {
        PickleError::Truncated { offset } => TorchScriptError::MalformedPickle {
            file,
            offset,
            detail: "the pickle ends before its STOP opcode (truncated)".into(),
        },
        PickleError::UnsupportedOpcode { opcode, offset } => TorchScriptError::UnsupportedOpcode {
            file,
            opcode: format!("0x{opcode:02x} ({})", pickle::opcode_name(opcode)),
            offset,
        },
        PickleError::DisallowedGlobal { global, offset } => TorchScriptError::DisallowedGlobal {
            file,
            global,
            offset,
        },
        PickleError::UnsupportedDtype { storage, offset } => TorchScriptError::Unsupported {
            file,
            detail: format!(
                "its data.pkl stores a tensor as `{storage}` (byte {offset}), an element type this \
                 reader cannot represent; convert the tensor to a supported dtype (float32, \
                 bfloat16, float16, float64, int64, int32, int16, uint8, bool) before saving"
            ),
        },
        PickleError::Malformed { offset, detail } => TorchScriptError::MalformedPickle {
            file,
            offset,
            detail,
        },
        PickleError::Limit { what, limit } => TorchScriptError::LimitExceeded { file, what, limit },
        PickleError::Structure { path, detail } => {
            TorchScriptError::Structure { file, path, detail }
        }
    }
}

/// The single top-level folder holding `data.pkl`.
fn find_root<R: Read + Seek>(zip: &ZipArchive<R>) -> Result<String, String> {
    let mut roots: Vec<String> = Vec::new();
    let mut invalid = false;
    for name in zip.file_names_raw() {
        let Some(root) = name.strip_suffix(b"/data.pkl") else {
            continue;
        };
        if root.is_empty() || root.contains(&b'/') {
            continue;
        }
        match std::str::from_utf8(root) {
            Ok(root) => roots.push(root.to_owned()),
            Err(_) => {
                invalid = true;
                roots.push(String::from_utf8_lossy(root).into_owned());
            }
        }
    }
    match roots.as_slice() {
        [] => Err("no `*/data.pkl` entry".into()),
        [root] if !invalid => Ok(root.clone()),
        [root] => Err(format!("the folder name {root:?} is not valid UTF-8")),
        several => {
            let listed: Vec<String> = several
                .iter()
                .take(5)
                .map(|r| format!("`{r}/data.pkl`"))
                .collect();
            Err(format!(
                "{} `*/data.pkl` entries ({}{}), expected exactly one",
                several.len(),
                listed.join(", "),
                if several.len() > 5 { ", ..." } else { "" }
            ))
        }
    }
}

/// Whether the zip has the TorchScript-only entries `<root>/code/...` or `<root>/constants.pkl`.
fn has_torchscript_entries<R: Read + Seek>(zip: &ZipArchive<R>, root: &str) -> bool {
    let code = format!("{root}/code/");
    let constants = format!("{root}/constants.pkl");
    zip.file_names_raw()
        .any(|n| n.starts_with(code.as_bytes()) || n == constants.as_bytes())
}

fn open_error(label: &str, err: ZipError) -> TorchScriptError {
    match err {
        ZipError::Io(source)
            if !matches!(
                source.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            TorchScriptError::Io {
                file: label.to_owned(),
                source,
            }
        }
        other => not_torchscript(label, format!("not a readable zip file: {other}")),
    }
}

/// Reads one entry completely. `check` sees the declared size before anything is allocated.
/// Returns `Ok(None)` if the entry does not exist. Verifies the real size (and, through the zip
/// reader, the CRC) against the header.
fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    label: &str,
    name: &str,
    budget: &mut u64,
    check: impl FnOnce(u64) -> Result<(), TorchScriptError>,
) -> Result<Option<Vec<u8>>, TorchScriptError> {
    let mut entry = match zip.by_name(name) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(err) => return Err(corrupt(label, format!("cannot open entry `{name}`: {err}"))),
    };
    let declared = entry.size();
    check(declared)?;
    if declared > *budget {
        return Err(limit_exceeded(
            label,
            "the total size of the entries read",
            MAX_TOTAL_BYTES,
        ));
    }
    if entry.compression() != CompressionMethod::Stored {
        let possible = entry
            .compressed_size()
            .saturating_mul(MAX_DEFLATE_RATIO)
            .saturating_add(1024);
        if declared > possible {
            return Err(corrupt(
                label,
                format!(
                    "entry `{name}` claims to expand {} compressed bytes to {declared}, more \
                     than deflate can",
                    entry.compressed_size()
                ),
            ));
        }
    }
    let capacity = usize::try_from(declared.min(MAX_INITIAL_CAPACITY)).unwrap_or(0);
    let mut buf = Vec::with_capacity(capacity);
    (&mut entry)
        .take(declared.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|err| corrupt(label, format!("cannot read entry `{name}`: {err}")))?;
    if buf.len() as u64 != declared {
        return Err(corrupt(
            label,
            format!(
                "entry `{name}` should hold {declared} bytes but holds {}",
                if (buf.len() as u64) > declared {
                    "more".to_string()
                } else {
                    buf.len().to_string()
                }
            ),
        ));
    }
    *budget -= declared;
    Ok(Some(buf))
}

fn read_archive<R: Read + Seek>(
    reader: R,
    label: &str,
) -> Result<Vec<ArchiveTensor>, TorchScriptError> {
    let mut zip = ZipArchive::new(reader).map_err(|e| open_error(label, e))?;
    let root = find_root(&zip).map_err(|reason| not_torchscript(label, reason))?;
    if !has_torchscript_entries(&zip, &root) {
        return Err(not_torchscript(
            label,
            format!(
                "`{root}/data.pkl` is there but neither `{root}/code/` nor \
                 `{root}/constants.pkl`: this looks like a torch.save checkpoint (.pt/.pth), \
                 not a TorchScript module"
            ),
        ));
    }
    let mut budget = MAX_TOTAL_BYTES;

    let byteorder_name = format!("{root}/byteorder");
    let byteorder = read_entry(&mut zip, label, &byteorder_name, &mut budget, |size| {
        if size > MAX_METADATA_BYTES {
            Err(limit_exceeded(
                label,
                format!("the size of `{byteorder_name}` ({size} bytes)"),
                MAX_METADATA_BYTES,
            ))
        } else {
            Ok(())
        }
    })?;
    if let Some(order) = byteorder {
        let order = String::from_utf8_lossy(&order);
        if order.trim() != "little" {
            return Err(TorchScriptError::Unsupported {
                file: label.to_owned(),
                detail: format!(
                    "its storages are in {:?} byte order; only little-endian archives are \
                     supported",
                    order.trim()
                ),
            });
        }
    }

    let pkl_name = format!("{root}/data.pkl");
    let pkl = read_entry(&mut zip, label, &pkl_name, &mut budget, |size| {
        if size > MAX_PICKLE_BYTES {
            Err(limit_exceeded(
                label,
                format!("the size of `{pkl_name}` ({size} bytes)"),
                MAX_PICKLE_BYTES,
            ))
        } else {
            Ok(())
        }
    })?
    .ok_or_else(|| corrupt(label, format!("entry `{pkl_name}` cannot be opened")))?;
    let tensors = pickle::parse_module_tensors(&pkl).map_err(|e| pickle_error(label, e))?;
    drop(pkl);

    materialise_all(&mut zip, label, &root, tensors, &mut budget)
}

fn materialise_all<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    label: &str,
    root: &str,
    tensors: Vec<PickledTensor>,
    budget: &mut u64,
) -> Result<Vec<ArchiveTensor>, TorchScriptError> {
    // How many tensors view each storage; shared storages are kept until their last use.
    let mut uses: HashMap<String, (usize, &PickledTensor)> = HashMap::new();
    for t in &tensors {
        match uses.get_mut(&t.storage.key) {
            Some((count, first)) => {
                if first.storage.dtype != t.storage.dtype || first.storage.numel != t.storage.numel
                {
                    return Err(TorchScriptError::Structure {
                        file: label.to_owned(),
                        path: t.name.clone(),
                        detail: format!(
                            "storage `data/{}` is declared as {} {} elements for `{}` but as {} \
                             {} elements here",
                            t.storage.key,
                            first.storage.numel,
                            first.storage.class,
                            first.name,
                            t.storage.numel,
                            t.storage.class
                        ),
                    });
                }
                *count += 1;
            }
            None => {
                uses.insert(t.storage.key.clone(), (1, t));
            }
        }
    }
    let mut remaining: HashMap<String, usize> =
        uses.into_iter().map(|(k, (n, _))| (k, n)).collect();

    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let mut expanded_budget = MAX_EXPANDED_BYTES;
    let mut out = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let key = &t.storage.key;
        let left = match remaining.get_mut(key) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        let bytes = match cache.remove(key) {
            Some(bytes) => bytes,
            None => read_storage(zip, label, root, t, budget)?,
        };
        let tensor = build_tensor(label, t, &bytes, &mut expanded_budget)?;
        if left > 0 {
            cache.insert(key.clone(), bytes);
        }
        out.push(ArchiveTensor {
            name: t.name.clone(),
            tensor,
        });
    }
    Ok(out)
}

/// Bytes a tensor needs from the start of its storage: `(last element + 1) * element size`.
fn needed_bytes(t: &PickledTensor) -> u64 {
    let e = t.storage.dtype.size_in_bytes() as u64;
    if t.size.contains(&0) {
        return 0;
    }
    pickle::last_index(t.offset, &t.size, &t.stride)
        .and_then(|last| last.checked_add(1))
        .and_then(|n| n.checked_mul(e))
        .unwrap_or(u64::MAX)
}

fn read_storage<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    label: &str,
    root: &str,
    t: &PickledTensor,
    budget: &mut u64,
) -> Result<Vec<u8>, TorchScriptError> {
    let e = t.storage.dtype.size_in_bytes() as u64;
    let storage = format!("data/{}", t.storage.key);
    let entry = format!("{root}/{storage}");
    // numel <= 2^34 and e <= 8, so this cannot overflow; saturate anyway.
    let expected = t.storage.numel.saturating_mul(e);
    let needed = needed_bytes(t);
    let bytes = read_entry(zip, label, &entry, budget, |actual| {
        if actual < needed {
            return Err(TorchScriptError::Truncated {
                file: label.to_owned(),
                storage: storage.clone(),
                actual,
                tensor: t.name.clone(),
                shape: t.size.clone(),
                needed,
            });
        }
        if actual != expected {
            return Err(corrupt(
                label,
                format!(
                    "storage `{storage}` holds {actual} bytes but data.pkl declares {} {} \
                     elements ({expected} bytes)",
                    t.storage.numel, t.storage.class
                ),
            ));
        }
        Ok(())
    })?;
    bytes.ok_or_else(|| TorchScriptError::MissingStorage {
        file: label.to_owned(),
        storage,
        tensor: t.name.clone(),
    })
}

fn is_contiguous(size: &[u64], stride: &[u64]) -> bool {
    let mut expected: u64 = 1;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(s);
    }
    true
}

fn build_tensor(
    label: &str,
    t: &PickledTensor,
    bytes: &[u8],
    expanded_budget: &mut u64,
) -> Result<Tensor, TorchScriptError> {
    let dtype: DType = t.storage.dtype;
    let e = dtype.size_in_bytes() as u64;
    let too_big = || {
        limit_exceeded(
            label,
            format!("the size of tensor `{}` {:?}", t.name, t.size),
            pickle::MAX_NUMEL,
        )
    };
    let shape: Vec<usize> = t
        .size
        .iter()
        .map(|&s| usize::try_from(s).map_err(|_| too_big()))
        .collect::<Result<_, _>>()?;
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |acc, &s| acc.checked_mul(s))
        .filter(|&n| n <= pickle::MAX_NUMEL)
        .ok_or_else(too_big)?;
    let out_bytes = numel.checked_mul(e).ok_or_else(too_big)?;
    let truncated = || TorchScriptError::Truncated {
        file: label.to_owned(),
        storage: format!("data/{}", t.storage.key),
        actual: bytes.len() as u64,
        tensor: t.name.clone(),
        shape: t.size.clone(),
        needed: needed_bytes(t),
    };
    if numel > 0 && needed_bytes(t) > bytes.len() as u64 {
        return Err(truncated());
    }
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| too_big());

    let data: Cow<'_, [u8]> = if numel == 0 {
        Cow::Borrowed(&[])
    } else if is_contiguous(&t.size, &t.stride) {
        let start = to_usize(t.offset.checked_mul(e).ok_or_else(truncated)?)?;
        let end = start
            .checked_add(to_usize(out_bytes)?)
            .ok_or_else(truncated)?;
        Cow::Borrowed(bytes.get(start..end).ok_or_else(truncated)?)
    } else {
        if numel > t.storage.numel {
            // A broadcasting view (stride 0) is larger than its storage: bound the amplification.
            if out_bytes > *expanded_budget {
                return Err(limit_exceeded(
                    label,
                    format!(
                        "the total size of tensors larger than their storage (tensor `{}` {:?})",
                        t.name, t.size
                    ),
                    MAX_EXPANDED_BYTES,
                ));
            }
            *expanded_budget -= out_bytes;
        }
        Cow::Owned(gather(t, bytes, numel, out_bytes).ok_or_else(truncated)?)
    };
    let data = if cfg!(target_endian = "big") && e > 1 {
        let mut owned = data.into_owned();
        for element in owned.chunks_exact_mut(dtype.size_in_bytes()) {
            element.reverse();
        }
        Cow::Owned(owned)
    } else {
        data
    };
    Tensor::from_raw_buffer(&data, dtype, &shape, &Device::Cpu).map_err(|source| {
        TorchScriptError::Tensor {
            file: label.to_owned(),
            tensor: t.name.clone(),
            source: Box::new(source),
        }
    })
}

/// Copies a strided view element by element into a contiguous buffer. `None` if an element
/// falls outside `bytes` (already ruled out by the caller).
fn gather(t: &PickledTensor, bytes: &[u8], numel: u64, out_bytes: u64) -> Option<Vec<u8>> {
    let e = usize::try_from(t.storage.dtype.size_in_bytes() as u64).ok()?;
    let mut out = Vec::with_capacity(usize::try_from(out_bytes).ok()?);
    let mut index = vec![0u64; t.size.len()];
    let mut pos = t.offset;
    for _ in 0..numel {
        let start = usize::try_from(pos).ok()?.checked_mul(e)?;
        out.extend_from_slice(bytes.get(start..start.checked_add(e)?)?);
        // Odometer increment, last dimension fastest.
        for ((i, &s), &st) in index.iter_mut().zip(&t.size).zip(&t.stride).rev() {
            if *i + 1 < s {
                *i += 1;
                pos = pos.checked_add(st)?;
                break;
            }
            pos = pos.checked_sub(st.checked_mul(*i)?)?;
            *i = 0;
        }
    }
    Some(out)
}
