//! AdamW with PyTorch's semantics (decoupled weight decay, bias-corrected moments), fused into
//! one pass per parameter, with a per-parameter decay flag (no decay on biases and layer norms
//! is the usual fine-tuning recipe).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// AdamW hyper-parameters (PyTorch defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// First-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Second-moment decay.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Denominator epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_wd() -> f64 {
    0.01
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: default_wd(),
        }
    }
}

impl AdamWConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, r: &str| {
            Err(Error::Config {
                field: f.into(),
                reason: r.into(),
            })
        };
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr", "must be a non-negative number");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1/beta2", "must be in [0, 1)");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", "must be positive");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be non-negative");
        }
        Ok(())
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The optimizer state.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// Creates the optimizer over `(name, variable, apply_weight_decay)` triples.
    pub fn new(params: Vec<(String, Var, bool)>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let slots = params
            .into_iter()
            .map(|(name, var, decay)| {
                let n = var.elem_count();
                Slot {
                    name,
                    var,
                    decay,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    /// The usual decay rule: no weight decay on biases and layer-norm weights.
    pub fn decays(name: &str) -> bool {
        !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
    }

    /// Current learning rate.
    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update from `grads`. Parameters without a gradient are left unchanged.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let step_size = (c.lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let mut p: Vec<f32> = slot.var.as_tensor().flatten_all()?.to_vec1()?;
            let decay = if slot.decay {
                (1.0 - c.lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let chunk = 16 * 1024;
            p.par_chunks_mut(chunk)
                .zip(slot.m.par_chunks_mut(chunk))
                .zip(slot.v.par_chunks_mut(chunk))
                .zip(g.par_chunks(chunk))
                .for_each(|(((p, m), v), g)| {
                    for i in 0..p.len() {
                        let gi = g[i];
                        m[i] = b1 * m[i] + (1.0 - b1) * gi;
                        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                        let denom = v[i].sqrt() / bc2_sqrt + eps;
                        p[i] = p[i] * decay - step_size * m[i] / denom;
                    }
                });
            if p.iter().any(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    what: slot.name.clone(),
                    step: self.step,
                });
            }
            let shape = slot.var.shape().clone();
            slot.var
                .set(&Tensor::from_vec(p, shape, slot.var.device())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps of PyTorch `torch.optim.AdamW(lr=0.1, weight_decay=0.01)` on p = [1, -2],
    /// loss = sum(p^2), computed by hand from the update rule.
    #[test]
    fn matches_pytorch_update_rule() {
        let var = Var::from_tensor(&Tensor::new(&[1f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), var.clone(), true)],
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let mut expected = [1f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for t in 1..=2 {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            for i in 0..2 {
                let g = 2.0 * expected[i];
                expected[i] *= 1.0 - 0.1 * 0.01;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                expected[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - expected[i]).abs() < 1e-6,
                "{got:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn decay_rule() {
        assert!(AdamW::decays("encoder.layer.0.output.dense.weight"));
        assert!(!AdamW::decays("encoder.layer.0.output.dense.bias"));
        assert!(!AdamW::decays("embeddings.LayerNorm.weight"));
    }
}
