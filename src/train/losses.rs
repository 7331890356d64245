//! The loss of the Cosmos recipe. Stage 1: L1 pixel loss plus a VGG-19 perceptual term. Stage 2
//! adds optical-flow consistency and a Gram-matrix texture term, and late in training an
//! adversarial term from a patch discriminator. Terms that need VGG-19 weights are off without
//! them. Tokenscope adds an optional chroma term (not in the Cosmos recipe) for small models trained
//! on footage of muted colours.

use candle_core::Tensor;

use super::discriminator::{self, PatchDiscriminator};
use super::vgg::{self, Vgg19};
use super::{flow, Result};

/// Weights of the loss terms (0 switches a term off).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossWeights {
    pub l1: f64,
    /// L1 of the chroma error (the error minus its mean over the colour channels): on footage of
    /// muted colours plain L1 learns luminance first and colour thousands of steps later.
    #[serde(default)]
    pub chroma: f64,
    /// Mean squared error, the measure PSNR is made of: L1 spends little on the few large errors
    /// (edges, fine texture) that dominate the squared error, so a late stage with this term buys
    /// PSNR that L1 alone leaves.
    #[serde(default)]
    pub mse: f64,
    #[serde(default)]
    pub perceptual: f64,
    #[serde(default)]
    pub gram: f64,
    #[serde(default)]
    pub flow: f64,
    #[serde(default)]
    pub adversarial: f64,
    /// First step with the adversarial term.
    #[serde(default)]
    pub adversarial_start: usize,
}

impl Default for LossWeights {
    /// Stage 1.
    fn default() -> Self {
        Self {
            l1: 1.0,
            chroma: 0.0,
            mse: 0.0,
            perceptual: 0.1,
            gram: 0.0,
            flow: 0.0,
            adversarial: 0.0,
            adversarial_start: 0,
        }
    }
}

impl LossWeights {
    /// Stage 2 (fine-tuning): flow consistency and texture on, adversarial for the last 40%.
    pub fn stage2(total_steps: usize) -> Self {
        Self {
            l1: 1.0,
            chroma: 0.0,
            mse: 0.0,
            perceptual: 0.1,
            gram: 0.1,
            flow: 0.2,
            adversarial: 0.05,
            adversarial_start: total_steps * 3 / 5,
        }
    }

    pub fn needs_vgg(&self) -> bool {
        self.perceptual > 0.0 || self.gram > 0.0
    }

    pub fn adversarial_at(&self, step: usize) -> bool {
        self.adversarial > 0.0 && step >= self.adversarial_start
    }

    /// A readable list of the enabled terms.
    pub fn describe(&self, with_vgg: bool) -> String {
        let mut terms = vec![format!("L1 x{}", self.l1)];
        if self.chroma > 0.0 {
            terms.push(format!("chroma L1 x{}", self.chroma));
        }
        if self.mse > 0.0 {
            terms.push(format!("MSE x{}", self.mse));
        }
        let vgg_state = |w: f64, name: &str| {
            if w <= 0.0 {
                None
            } else if with_vgg {
                Some(format!("{name} x{w}"))
            } else {
                Some(format!("{name} x{w} (off: no VGG-19 weights given)"))
            }
        };
        terms.extend(vgg_state(self.perceptual, "VGG-19 perceptual"));
        terms.extend(vgg_state(self.gram, "Gram texture"));
        if self.flow > 0.0 {
            terms.push(format!("optical-flow consistency x{}", self.flow));
        }
        if self.adversarial > 0.0 {
            terms.push(format!(
                "hinge adversarial x{} from step {}",
                self.adversarial, self.adversarial_start
            ));
        }
        terms.join(", ")
    }
}

/// The value of each term of one step's loss (for logs and the model card).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LossParts {
    pub l1: f64,
    #[serde(default)]
    pub chroma: f64,
    #[serde(default)]
    pub mse: f64,
    #[serde(default)]
    pub perceptual: f64,
    #[serde(default)]
    pub gram: f64,
    #[serde(default)]
    pub flow: f64,
    #[serde(default)]
    pub adversarial: f64,
    /// The discriminator's own hinge loss (not part of `total`).
    #[serde(default)]
    pub discriminator: f64,
    pub total: f64,
}

/// What the optional terms need.
pub struct LossContext<'a> {
    pub vgg: Option<&'a Vgg19>,
    pub discriminator: Option<&'a PatchDiscriminator>,
    pub step: usize,
}

/// Mean absolute error.
pub fn l1(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    (x - y)?.abs()?.mean_all()
}

/// Mean squared error.
pub fn mse(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    (x - y)?.sqr()?.mean_all()
}

/// Mean absolute chroma error: the error with its mean over the colour channels (dimension 1 of
/// (B, 3, H, W) and (B, 3, T, H, W)) removed, so a pure brightness error costs nothing here.
pub fn chroma_l1(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let error = (x - y)?;
    let grey = error.mean_keepdim(1)?;
    error.broadcast_sub(&grey)?.abs()?.mean_all()
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(f64::from(
        t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?,
    ))
}

/// The weighted sum of every enabled term, with each term's value.
pub fn total_loss(
    input: &Tensor,
    reconstruction: &Tensor,
    weights: &LossWeights,
    context: &LossContext,
) -> Result<(Tensor, LossParts)> {
    let mut parts = LossParts::default();
    let l1_term = l1(input, reconstruction)?;
    parts.l1 = scalar(&l1_term)?;
    let mut total = (&l1_term * weights.l1)?;
    if weights.chroma > 0.0 {
        let term = chroma_l1(input, reconstruction)?;
        parts.chroma = scalar(&term)?;
        total = (total + (term * weights.chroma)?)?;
    }
    if weights.mse > 0.0 {
        let term = mse(input, reconstruction)?;
        parts.mse = scalar(&term)?;
        total = (total + (term * weights.mse)?)?;
    }
    if let (Some(net), true) = (context.vgg, weights.needs_vgg()) {
        let real = net.features(&discriminator::frames_of(input)?)?;
        let fake = net.features(&discriminator::frames_of(reconstruction)?)?;
        if weights.perceptual > 0.0 {
            let term = vgg::perceptual_loss(&real, &fake)?;
            parts.perceptual = scalar(&term)?;
            total = (total + (term * weights.perceptual)?)?;
        }
        if weights.gram > 0.0 {
            let term = vgg::gram_loss(&real, &fake)?;
            parts.gram = scalar(&term)?;
            total = (total + (term * weights.gram)?)?;
        }
    }
    if weights.flow > 0.0 && input.rank() == 5 {
        let term = flow::flow_loss(input, reconstruction)?;
        parts.flow = scalar(&term)?;
        total = (total + (term * weights.flow)?)?;
    }
    if let (Some(d), true) = (context.discriminator, weights.adversarial_at(context.step)) {
        let term =
            discriminator::generator_loss(&d.forward(&discriminator::frames_of(reconstruction)?)?)?;
        parts.adversarial = scalar(&term)?;
        total = (total + (term * weights.adversarial)?)?;
    }
    parts.total = scalar(&total)?;
    Ok((total, parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn chroma_l1_ignores_brightness_errors_and_measures_colour_errors() {
        let device = Device::Cpu;
        let input = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &device).unwrap();
        // Brighter by 0.3 in every channel: no colour error.
        let brighter = (&input + 0.3).unwrap();
        let brightness = chroma_l1(&input, &brighter).unwrap();
        assert!(brightness.to_scalar::<f32>().unwrap().abs() < 1e-7);
        // Red up by 0.3 only: the chroma error is (0.2, -0.1, -0.1), mean absolute 0.4 / 3.
        let mut reddish = vec![0f32; 12];
        reddish[..4].fill(0.3);
        let reddish = Tensor::from_vec(reddish, (1, 3, 2, 2), &device).unwrap();
        let colour = chroma_l1(&input, &reddish)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((colour - 0.4 / 3.0).abs() < 1e-6, "{colour}");
        // The same on video batches (B, 3, T, H, W).
        let video = reddish.unsqueeze(2).unwrap();
        let zeros = video.zeros_like().unwrap();
        let colour = chroma_l1(&zeros, &video)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((colour - 0.4 / 3.0).abs() < 1e-6, "{colour}");
    }

    #[test]
    fn the_mse_term_prefers_many_small_errors_to_one_large_error_of_the_same_l1() {
        let device = Device::Cpu;
        let input = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &device).unwrap();
        // Both miss by 1.2 in total: spread over all twelve values, or all in one.
        let spread = (&input + 0.1).unwrap();
        let mut peak = vec![0f32; 12];
        peak[5] = 1.2;
        let peak = Tensor::from_vec(peak, (1, 3, 2, 2), &device).unwrap();
        let context = LossContext {
            vgg: None,
            discriminator: None,
            step: 0,
        };
        let l1_only = LossWeights {
            perceptual: 0.0,
            ..LossWeights::default()
        };
        let with_mse = LossWeights {
            mse: 10.0,
            ..l1_only
        };
        let (_, spread_l1) = total_loss(&input, &spread, &l1_only, &context).unwrap();
        let (_, peak_l1) = total_loss(&input, &peak, &l1_only, &context).unwrap();
        assert!((spread_l1.total - peak_l1.total).abs() < 1e-6);
        let (_, spread_parts) = total_loss(&input, &spread, &with_mse, &context).unwrap();
        let (_, peak_parts) = total_loss(&input, &peak, &with_mse, &context).unwrap();
        // Mean squared error: 0.01 for the spread miss, 1.44 / 12 = 0.12 for the single one.
        assert!(
            (spread_parts.mse - 0.01).abs() < 1e-6,
            "{}",
            spread_parts.mse
        );
        assert!((peak_parts.mse - 0.12).abs() < 1e-6, "{}", peak_parts.mse);
        assert!((peak_parts.total - (0.1 + 10.0 * 0.12)).abs() < 1e-5);
        assert!(peak_parts.total > spread_parts.total);
    }
}
