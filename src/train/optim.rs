//! AdamW with decoupled weight decay, global-norm gradient clipping, a warm-up + cosine learning
//! rate, and an exponential moving average of the weights (the official files hold EMA weights).
//! The optimiser state is plain tensors so a run can be saved and resumed exactly.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::params::Parameters;
use super::{Result, TrainError};

#[derive(Clone, Copy, Debug)]
pub struct AdamWSettings {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// Learning rate at `step` (0-based): linear warm-up to `peak`, then cosine decay to `peak · floor`.
pub fn learning_rate_at(step: usize, total: usize, warmup: usize, peak: f64, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (floor + (1.0 - floor) * cosine)
}

/// First and second moments per parameter.
pub struct AdamW {
    settings: AdamWSettings,
    moments: BTreeMap<String, (Tensor, Tensor)>,
    /// Optimiser steps taken (for bias correction).
    pub steps: usize,
}

impl AdamW {
    pub fn new<'a>(
        vars: impl IntoIterator<Item = (&'a String, &'a Var)>,
        settings: AdamWSettings,
    ) -> Result<Self> {
        let mut moments = BTreeMap::new();
        for (name, var) in vars {
            let zeros = var.as_tensor().zeros_like()?;
            moments.insert(name.clone(), (zeros.clone(), zeros));
        }
        Ok(Self {
            settings,
            moments,
            steps: 0,
        })
    }

    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.settings.learning_rate = learning_rate;
    }

    /// One update from `grads`, scaled by `grad_scale` (gradient clipping). Parameters without a
    /// gradient (unused by this loss) are left alone.
    pub fn step<'a>(
        &mut self,
        vars: impl IntoIterator<Item = (&'a String, &'a Var)>,
        grads: &GradStore,
        grad_scale: f64,
    ) -> Result<()> {
        self.steps += 1;
        let s = self.settings;
        let t = self.steps as i32;
        let correction1 = 1.0 - s.beta1.powi(t);
        let correction2 = 1.0 - s.beta2.powi(t);
        for (name, var) in vars {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let grad = (grad * grad_scale)?;
            let (m, v) = self
                .moments
                .get_mut(name)
                .ok_or_else(|| TrainError::Invalid(format!("no optimiser state for `{name}`")))?;
            *m = ((&*m * s.beta1)? + (&grad * (1.0 - s.beta1))?)?;
            *v = ((&*v * s.beta2)? + (grad.sqr()? * (1.0 - s.beta2))?)?;
            let m_hat = (&*m / correction1)?;
            let v_hat = (&*v / correction2)?;
            let update = (m_hat / (v_hat.sqrt()? + s.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - s.learning_rate * s.weight_decay))?;
            var.set(&(decayed - (update * s.learning_rate)?)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`<prefix>m.<key>`, `<prefix>v.<key>`) for the state file.
    pub fn state_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.moments
            .iter()
            .flat_map(|(k, (m, v))| {
                [
                    (format!("{prefix}m.{k}"), m.clone()),
                    (format!("{prefix}v.{k}"), v.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments saved by [`AdamW::state_tensors`].
    pub fn restore(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        steps: usize,
    ) -> Result<()> {
        for (name, (m, v)) in self.moments.iter_mut() {
            let (Some(saved_m), Some(saved_v)) = (
                tensors.get(&format!("{prefix}m.{name}")),
                tensors.get(&format!("{prefix}v.{name}")),
            ) else {
                return Err(TrainError::Invalid(format!(
                    "training state lacks the optimiser moments of `{name}`"
                )));
            };
            *m = saved_m.to_device(m.device())?;
            *v = saved_v.to_device(v.device())?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Global L2 norm of all gradients, and the factor that scales it down to `max_norm`.
pub fn clip_scale<'a>(
    vars: impl IntoIterator<Item = (&'a String, &'a Var)>,
    grads: &GradStore,
    max_norm: f64,
) -> Result<(f64, f64)> {
    let mut sum = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sum.sqrt();
    if !norm.is_finite() {
        return Err(TrainError::Diverged(format!(
            "the gradient norm is {norm}; lower --lr or check the data"
        )));
    }
    let scale = if norm > max_norm {
        max_norm / norm
    } else {
        1.0
    };
    Ok((norm, scale))
}

/// Exponential moving average of the weights.
pub struct Ema {
    pub decay: f64,
    pub weights: BTreeMap<String, Tensor>,
}

impl Ema {
    pub fn new(params: &Parameters, decay: f64) -> Result<Self> {
        Ok(Self {
            decay,
            weights: params.snapshot()?,
        })
    }

    /// Blends the current weights in; early steps use a smaller decay so the average is not
    /// dominated by the random initialisation.
    pub fn update(&mut self, params: &Parameters, step: usize) -> Result<()> {
        let decay = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        for (name, var) in params.iter() {
            if let Some(avg) = self.weights.get_mut(name) {
                let current = var.as_tensor().detach();
                *avg = ((&*avg * decay)? + (current * (1.0 - decay))?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_decays_to_the_floor() {
        assert!((learning_rate_at(0, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert!((learning_rate_at(9, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((learning_rate_at(10, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((learning_rate_at(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        let mid = learning_rate_at(55, 100, 10, 1.0, 0.1);
        assert!((mid - 0.55).abs() < 1e-9, "{mid}");
    }
}
