//! VGG-19 features for the perceptual and Gram-matrix (texture) losses, from torchvision's
//! `vgg19` weights saved as safetensors (`features.<i>.weight` / `.bias`). The weights are frozen:
//! gradients flow through them to the reconstruction only.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::{Result, TrainError};
use crate::compute;

/// Convolution widths of VGG-19's 16 layers; `M` marks a 2x2 max-pool.
const LAYOUT: [Option<usize>; 21] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    Some(512),
    None,
];

/// Features are taken after these convolutions' ReLUs (relu1_2, relu2_2, relu3_4, relu4_4,
/// relu5_4), counted over convolutions only.
const TAPS: [usize; 5] = [1, 3, 7, 11, 15];

/// ImageNet normalisation torchvision's weights expect.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

pub struct Vgg19 {
    convs: Vec<(Tensor, Tensor)>,
    /// How many taps to compute (deeper ones cost the most).
    depth: usize,
}

impl Vgg19 {
    /// Loads torchvision's `vgg19` `features.*` tensors; every key is checked by name and shape.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, device).map_err(|e| {
            TrainError::Invalid(format!(
                "--vgg19 `{}` is not a readable safetensors file: {e}",
                path.display()
            ))
        })?;
        Self::from_tensors(&tensors, path)
    }

    pub fn from_tensors(tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<Self> {
        let mut convs = Vec::new();
        let mut in_channels = 3;
        for (index, layer) in LAYOUT.iter().enumerate() {
            let Some(out_channels) = *layer else {
                continue;
            };
            // torchvision numbers conv, ReLU and pool modules together: conv k sits at
            // features.<its position counting each conv and ReLU and each pool once>.
            let key = torchvision_index(index);
            let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
                let full = format!("features.{key}.{name}");
                let t = tensors.get(&full).ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "--vgg19 `{}` lacks `{full}` (expected shape {shape:?}); give torchvision's vgg19 state dict as safetensors",
                        origin.display()
                    ))
                })?;
                if t.dims() != shape {
                    return Err(TrainError::Invalid(format!(
                        "--vgg19 `{}`: `{full}` has shape {:?}, expected {shape:?}",
                        origin.display(),
                        t.dims()
                    )));
                }
                Ok(t.to_dtype(candle_core::DType::F32)?)
            };
            let weight = get("weight", &[out_channels, in_channels, 3, 3])?;
            let bias = get("bias", &[out_channels])?;
            convs.push((weight, bias));
            in_channels = out_channels;
        }
        Ok(Self {
            convs,
            depth: TAPS.len(),
        })
    }

    /// The tapped feature maps of images in [-1, 1], (N, 3, H, W).
    pub fn features(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        let device = images.device();
        let mean = Tensor::from_vec(MEAN.to_vec(), (1, 3, 1, 1), device)?;
        let std = Tensor::from_vec(STD.to_vec(), (1, 3, 1, 1), device)?;
        let mut x = ((images + 1.0)? * 0.5)?
            .broadcast_sub(&mean)?
            .broadcast_div(&std)?;
        let mut taps = Vec::with_capacity(self.depth);
        let mut conv_index = 0;
        for layer in LAYOUT {
            if taps.len() == self.depth {
                break;
            }
            match layer {
                None => x = x.max_pool2d(2)?,
                Some(_) => {
                    let Some((w, b)) = self.convs.get(conv_index) else {
                        break;
                    };
                    x = compute::conv2d(&x, w, Some(b), 1, 1)?.relu()?;
                    if TAPS.contains(&conv_index) {
                        taps.push(x.clone());
                    }
                    conv_index += 1;
                }
            }
        }
        Ok(taps)
    }
}

/// torchvision's `features` index of the module at position `index` of [`LAYOUT`]: every conv is
/// followed by a ReLU (two indices), every pool takes one.
fn torchvision_index(index: usize) -> usize {
    LAYOUT
        .iter()
        .take(index)
        .map(|l| if l.is_some() { 2 } else { 1 })
        .sum()
}

/// Mean L1 distance between the feature maps of the input and the reconstruction.
pub fn perceptual_loss(input: &[Tensor], reconstruction: &[Tensor]) -> Result<Tensor> {
    summed_l1(input, reconstruction, |t| Ok(t.clone()))
}

/// Σ over feature levels of mean |f(input) − f(reconstruction)|; the input side is a constant.
fn summed_l1(
    input: &[Tensor],
    reconstruction: &[Tensor],
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for (a, b) in input.iter().zip(reconstruction) {
        let term = (f(&a.detach())? - f(b)?)?.abs()?.mean_all()?;
        total = Some(match total {
            Some(t) => (t + term)?,
            None => term,
        });
    }
    total.ok_or_else(|| TrainError::Invalid("no VGG features".into()))
}

/// Gram matrices (N, C, C) of (N, C, H, W) features, normalised by C·H·W.
pub fn gram(features: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = features.dims4()?;
    let flat = features.reshape((n, c, h * w))?;
    let g = flat.matmul(&flat.transpose(1, 2)?.contiguous()?)?;
    Ok((g / (c * h * w) as f64)?)
}

/// Mean L1 distance between the Gram matrices of the input's and the reconstruction's features.
pub fn gram_loss(input: &[Tensor], reconstruction: &[Tensor]) -> Result<Tensor> {
    summed_l1(input, reconstruction, gram)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random weights under torchvision's key names (the real ones are not on this machine).
    pub fn random_vgg_tensors() -> HashMap<String, Tensor> {
        let mut tensors = HashMap::new();
        let mut in_channels = 3;
        for (index, layer) in LAYOUT.iter().enumerate() {
            if let Some(out) = *layer {
                let key = torchvision_index(index);
                let bound = 1.0 / ((in_channels * 9) as f64).sqrt();
                let w = (Tensor::rand(0f32, 1f32, (out, in_channels, 3, 3), &Device::Cpu).unwrap()
                    * (2.0 * bound))
                    .unwrap()
                    .affine(1.0, -bound)
                    .unwrap();
                tensors.insert(format!("features.{key}.weight"), w);
                tensors.insert(
                    format!("features.{key}.bias"),
                    Tensor::zeros(out, candle_core::DType::F32, &Device::Cpu).unwrap(),
                );
                in_channels = out;
            }
        }
        tensors
    }

    #[test]
    fn torchvision_indices_match_the_published_layout() {
        let convs: Vec<usize> = LAYOUT
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_some())
            .map(|(i, _)| torchvision_index(i))
            .collect();
        assert_eq!(
            convs,
            vec![0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
        );
    }

    #[test]
    fn losses_vanish_for_identical_images_and_grow_with_difference() {
        let vgg = Vgg19::from_tensors(&random_vgg_tensors(), Path::new("random")).unwrap();
        let x = Tensor::rand(-1f32, 1f32, (1, 3, 32, 32), &Device::Cpu).unwrap();
        let y = (&x * 0.5).unwrap();
        let fx = vgg.features(&x).unwrap();
        assert_eq!(fx.len(), 5);
        let same = perceptual_loss(&fx, &fx)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let other = perceptual_loss(&fx, &vgg.features(&y).unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(same, 0.0);
        assert!(other > 0.0);
        let g = gram_loss(&fx, &vgg.features(&y).unwrap()).unwrap();
        assert!(g.to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn a_wrong_file_names_the_key_and_shapes() {
        let mut tensors = random_vgg_tensors();
        tensors.insert(
            "features.10.weight".into(),
            Tensor::zeros((1, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        let err = Vgg19::from_tensors(&tensors, Path::new("v.safetensors"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("features.10.weight") && err.contains("[256, 128, 3, 3]"),
            "{err}"
        );
        tensors.remove("features.0.bias");
        let err = Vgg19::from_tensors(&tensors, Path::new("v.safetensors"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("features.0.bias"), "{err}");
    }
}
