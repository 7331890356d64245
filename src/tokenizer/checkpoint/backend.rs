//! A `VarBuilder` backend over checkpoint tensors that reports a missing key or a wrong shape by
//! name, with the expected and found shapes, and records which keys the network used.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};

use crate::tokenizer::TokenizerError;

#[derive(Default)]
struct Usage {
    used: HashSet<String>,
    first_error: Option<TokenizerError>,
}

/// Shared view of what the backend saw, readable after the `VarBuilder` is gone.
#[derive(Clone)]
pub struct LoadReport {
    usage: Arc<Mutex<Usage>>,
    sizes: Arc<HashMap<String, usize>>,
}

impl LoadReport {
    /// The first structured loading error, if building failed because of the checkpoint.
    pub fn take_error(&self) -> Option<TokenizerError> {
        self.usage
            .lock()
            .ok()
            .and_then(|mut u| u.first_error.take())
    }

    /// (parameters used, sorted keys never requested).
    pub fn usage(&self) -> (usize, Vec<String>) {
        let Ok(usage) = self.usage.lock() else {
            return (0, Vec::new());
        };
        let used = usage.used.iter().filter_map(|k| self.sizes.get(k)).sum();
        let mut unused: Vec<String> = self
            .sizes
            .keys()
            .filter(|k| !usage.used.contains(*k))
            .cloned()
            .collect();
        unused.sort();
        (used, unused)
    }
}

pub struct CheckpointBackend {
    tensors: HashMap<String, Tensor>,
    hint: String,
    report: LoadReport,
}

impl CheckpointBackend {
    pub fn new(tensors: HashMap<String, Tensor>, hint: String) -> Self {
        let sizes = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.elem_count()))
            .collect();
        Self {
            tensors,
            hint,
            report: LoadReport {
                usage: Arc::new(Mutex::new(Usage::default())),
                sizes: Arc::new(sizes),
            },
        }
    }

    pub fn report(&self) -> LoadReport {
        self.report.clone()
    }

    fn fail(&self, error: TokenizerError) -> candle_core::Error {
        let message = error.to_string();
        if let Ok(mut usage) = self.report.usage.lock() {
            usage.first_error.get_or_insert(error);
        }
        candle_core::Error::Msg(message)
    }
}

impl candle_nn::var_builder::SimpleBackend for CheckpointBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(tensor) = self.tensors.get(name) else {
            return Err(self.fail(TokenizerError::MissingKey {
                key: name.to_string(),
                expected: shape.dims().to_vec(),
                hint: self.hint.clone(),
            }));
        };
        if tensor.dims() != shape.dims() {
            return Err(self.fail(TokenizerError::WrongShape {
                key: name.to_string(),
                expected: shape.dims().to_vec(),
                found: tensor.dims().to_vec(),
                hint: self.hint.clone(),
            }));
        }
        if let Ok(mut usage) = self.report.usage.lock() {
            usage.used.insert(name.to_string());
        }
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(device),
            None => Err(self.fail(TokenizerError::MissingKey {
                key: name.to_string(),
                expected: Vec::new(),
                hint: self.hint.clone(),
            })),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
