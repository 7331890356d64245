//! A small PatchGAN discriminator for the adversarial term (switched on late in training, as the
//! Cosmos paper does for high compression), with the hinge loss.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Result;
use crate::compute;

/// Four 4x4 convolutions (strides 2, 2, 1, 1) with LeakyReLU(0.2): one logit per ~22 px patch.
pub struct PatchDiscriminator {
    vars: BTreeMap<String, Var>,
    strides: Vec<usize>,
}

impl PatchDiscriminator {
    pub fn new(width: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xD15C);
        let widths = [3, width, 2 * width, 4 * width, 1];
        let mut vars = BTreeMap::new();
        for (i, pair) in widths.windows(2).enumerate() {
            let (Some(&cin), Some(&cout)) = (pair.first(), pair.get(1)) else {
                continue;
            };
            let bound = 1.0 / ((cin * 16) as f32).sqrt();
            let w: Vec<f32> = (0..cout * cin * 16)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let b: Vec<f32> = (0..cout).map(|_| rng.random_range(-bound..bound)).collect();
            vars.insert(
                format!("{i}.weight"),
                Var::from_vec(w, (cout, cin, 4, 4), device)?,
            );
            vars.insert(format!("{i}.bias"), Var::from_vec(b, cout, device)?);
        }
        Ok(Self {
            vars,
            strides: vec![2, 2, 1, 1],
        })
    }

    /// Restores saved weights (`<prefix><i>.weight` / `.bias`).
    pub fn restore(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        prefix: &str,
    ) -> Result<()> {
        for (name, var) in self.vars.iter() {
            let key = format!("{prefix}{name}");
            let saved = tensors.get(&key).ok_or_else(|| {
                super::TrainError::Invalid(format!("training state lacks `{key}`"))
            })?;
            var.set(&saved.to_device(var.device())?)?;
        }
        Ok(())
    }

    pub fn vars(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// Patch logits (N, 1, h, w) of (N, 3, H, W) images in [-1, 1].
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let mut x = images.clone();
        let last = self.strides.len().saturating_sub(1);
        for (i, &stride) in self.strides.iter().enumerate() {
            let (Some(w), Some(b)) = (
                self.vars.get(&format!("{i}.weight")),
                self.vars.get(&format!("{i}.bias")),
            ) else {
                break;
            };
            x = compute::conv2d(&x, w.as_tensor(), Some(b.as_tensor()), stride, 1)?;
            if i < last {
                x = x.maximum(&(&x * 0.2)?)?;
            }
        }
        Ok(x)
    }
}

/// Video batches (B, 3, T, H, W) as frames (B·T, 3, H, W); images pass through.
pub fn frames_of(batch: &Tensor) -> Result<Tensor> {
    match batch.dims() {
        [b, c, t, h, w] => Ok(batch
            .permute((0, 2, 1, 3, 4))?
            .reshape((b * t, *c, *h, *w))?),
        _ => Ok(batch.clone()),
    }
}

/// Hinge loss of the discriminator: real logits pushed above 1, fake below −1.
pub fn discriminator_loss(real: &Tensor, fake: &Tensor) -> Result<Tensor> {
    let real_term = (1.0 - real)?.relu()?.mean_all()?;
    let fake_term = (fake + 1.0)?.relu()?.mean_all()?;
    Ok((real_term + fake_term)?)
}

/// The generator's side of the hinge loss.
pub fn generator_loss(fake: &Tensor) -> Result<Tensor> {
    Ok(fake.mean_all()?.neg()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discriminator_learns_to_separate_two_sources() {
        let device = Device::Cpu;
        let d = PatchDiscriminator::new(8, 1, &device).unwrap();
        let mut opt = super::super::optim::AdamW::new(
            d.vars(),
            super::super::optim::AdamWSettings {
                learning_rate: 2e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let real = Tensor::rand(-1f32, 1f32, (4, 3, 32, 32), &device).unwrap();
        let fake = (Tensor::rand(-1f32, 1f32, (4, 3, 32, 32), &device).unwrap() * 0.1).unwrap();
        let mut losses = Vec::new();
        for _ in 0..30 {
            let loss =
                discriminator_loss(&d.forward(&real).unwrap(), &d.forward(&fake).unwrap()).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
            let grads = loss.backward().unwrap();
            opt.step(d.vars(), &grads, 1.0).unwrap();
        }
        assert!(losses[29] < 0.5 * losses[0], "{losses:?}");
    }
}
