//! The trainable parameters of a tokenizer: one `Var` per checkpoint key, initialised as PyTorch
//! initialises the official modules, or taken from an existing checkpoint (fine-tuning).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Result, TrainError};
use crate::tokenizer::model::{HaarTaps, Halves};
use crate::tokenizer::{NetworkConfig, Tokenizer};

/// Records every (name, shape) the network asks for, handing out zeros.
#[derive(Default)]
struct ShapeRecorder {
    shapes: Mutex<BTreeMap<String, Vec<usize>>>,
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut shapes) = self.shapes.lock() {
            shapes.insert(name.to_string(), s.dims().to_vec());
        }
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("`{name}` requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Every parameter key of the network `config` describes, with its shape.
pub fn parameter_shapes(config: &NetworkConfig) -> Result<BTreeMap<String, Vec<usize>>> {
    let shared = std::sync::Arc::new(ShapeRecorder::default());
    let vb = VarBuilder::from_backend(
        Box::new(SharedRecorder(shared.clone())),
        DType::F32,
        Device::Cpu,
    );
    Tokenizer::new(config, HaarTaps::default(), Halves::Both, vb)?;
    let shapes = shared
        .shapes
        .lock()
        .map_err(|_| TrainError::Invalid("parameter recorder poisoned".into()))?
        .clone();
    Ok(shapes)
}

/// The builder owns its backend; this handle lets us read the recording afterwards.
struct SharedRecorder(std::sync::Arc<ShapeRecorder>);

impl SimpleBackend for SharedRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// Named trainable tensors, in key order.
pub struct Parameters {
    vars: BTreeMap<String, Var>,
}

impl Parameters {
    /// PyTorch's default initialisation: convolutions U(±1/√fan_in) for weights and biases,
    /// norms weight 1 and bias 0.
    pub fn initialised(config: &NetworkConfig, seed: u64, device: &Device) -> Result<Self> {
        let shapes = parameter_shapes(config)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut vars = BTreeMap::new();
        for (name, shape) in &shapes {
            let values = initial_values(name, shape, &shapes, &mut rng);
            let var = Var::from_vec(values, shape.as_slice(), device)?;
            vars.insert(name.clone(), var);
        }
        Ok(Self { vars })
    }

    /// Starts from existing weights; keys the checkpoint lacks (or with another shape) are
    /// initialised fresh and listed in the returned notes.
    pub fn from_weights(
        config: &NetworkConfig,
        weights: &HashMap<String, Tensor>,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        let mut params = Self::initialised(config, seed, device)?;
        let mut notes = Vec::new();
        for (name, var) in params.vars.iter_mut() {
            match weights.get(name) {
                Some(t) if t.dims() == var.dims() => {
                    *var = Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?;
                }
                Some(t) => notes.push(format!(
                    "`{name}`: checkpoint shape {:?} differs from {:?}; initialised fresh",
                    t.dims(),
                    var.dims()
                )),
                None => notes.push(format!("`{name}` not in the checkpoint; initialised fresh")),
            }
        }
        Ok((params, notes))
    }

    /// Rebuilds parameters from saved tensors that must hold every key (resuming).
    pub fn from_exact(
        shapes: &BTreeMap<String, Vec<usize>>,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        device: &Device,
    ) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for (name, shape) in shapes {
            let key = format!("{prefix}{name}");
            let t = tensors.get(&key).ok_or_else(|| {
                TrainError::Invalid(format!("training state lacks `{key}` (shape {shape:?})"))
            })?;
            if t.dims() != shape.as_slice() {
                return Err(TrainError::Invalid(format!(
                    "training state `{key}` has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            vars.insert(
                name.clone(),
                Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?,
            );
        }
        Ok(Self { vars })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// A network whose weights are these variables (gradients flow back to them).
    pub fn tokenizer(&self, config: &NetworkConfig) -> Result<Tokenizer> {
        let device = self
            .vars
            .values()
            .next()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu);
        let tensors = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()));
        tokenizer_from_tensors(config, tensors, &device)
    }

    /// Detached copies of the current values.
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
            .collect()
    }
}

/// A runnable network from named weights: live variables (training) or the EMA copies
/// (validation, export).
pub fn tokenizer_from_tensors(
    config: &NetworkConfig,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    device: &Device,
) -> Result<Tokenizer> {
    let tensors: HashMap<String, Tensor> = tensors.into_iter().collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    Ok(Tokenizer::new(
        config,
        HaarTaps::default(),
        Halves::Both,
        vb,
    )?)
}

fn initial_values(
    name: &str,
    shape: &[usize],
    shapes: &BTreeMap<String, Vec<usize>>,
    rng: &mut StdRng,
) -> Vec<f32> {
    let count: usize = shape.iter().product();
    let is_weight = name.ends_with("weight");
    if shape.len() == 1 {
        // A norm's scale and shift, or a convolution's bias.
        let prefix = name.trim_end_matches("bias");
        let conv_weight = shapes
            .get(&format!("{prefix}weight"))
            .filter(|s| s.len() > 1);
        return match (is_weight, conv_weight) {
            (true, _) => vec![1.0; count],
            (false, None) => vec![0.0; count],
            (false, Some(w)) => uniform(count, fan_in(w), rng),
        };
    }
    uniform(count, fan_in(shape), rng)
}

fn fan_in(weight_shape: &[usize]) -> usize {
    weight_shape.iter().skip(1).product::<usize>().max(1)
}

fn uniform(count: usize, fan_in: usize, rng: &mut StdRng) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..count)
        .map(|_| rng.random_range(-bound..bound))
        .collect()
}
