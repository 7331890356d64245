//! Reconstruction losses. Stage 1 of the Cosmos recipe is an L1 pixel loss (plus a perceptual term
//! when VGG-19 weights are given).

use candle_core::Tensor;

use super::Result;

/// Weights of the loss terms.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct LossWeights {
    pub l1: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self { l1: 1.0 }
    }
}

/// The value of each term of one step's loss (for logs and the model card).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LossParts {
    pub l1: f64,
    pub total: f64,
}

/// Mean absolute error.
pub fn l1(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    (x - y)?.abs()?.mean_all()
}

/// The weighted sum of every enabled term, with each term's value.
pub fn total_loss(
    input: &Tensor,
    reconstruction: &Tensor,
    weights: &LossWeights,
) -> Result<(Tensor, LossParts)> {
    let l1_term = l1(input, reconstruction)?;
    let total = (&l1_term * weights.l1)?;
    let parts = LossParts {
        l1: f64::from(l1_term.to_scalar::<f32>()?),
        total: f64::from(total.to_scalar::<f32>()?),
    };
    Ok((total, parts))
}
