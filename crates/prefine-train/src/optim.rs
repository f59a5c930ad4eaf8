//! AdamW with PyTorch's semantics (decoupled weight decay, bias-corrected moments), fused into
//! one pass per parameter, with a per-parameter decay flag (no decay on biases and layer norms
//! is the usual fine-tuning recipe). Each parameter is updated in place in its own storage
//! (a candle in-place op), reading the backward pass's gradient tensor where it lies: no copy of
//! parameters or gradients per step.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor, Var};
use prefine_model::ops::with_f32;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

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
    /// Accumulated gradient since the last update (none until the first `accumulate`, and
    /// released by every update so that it does not sit beside the next backward pass).
    grad: Option<Grad>,
    /// Updates applied to this parameter (PyTorch keeps the step count per parameter, so a
    /// parameter that skips steps gets its own bias correction).
    steps: u64,
    /// Multiplier of the scheduled learning rate (e.g. adapters faster than the backbone).
    lr_mult: f64,
}

/// `(name, variable, first moment, second moment, steps)` of one parameter.
pub type SlotState<'a> = (&'a str, &'a Var, &'a [f32], &'a [f32], u64);

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
                    grad: None,
                    steps: 0,
                    lr_mult: 1.0,
                }
            })
            .collect();
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    /// Sets the learning-rate multiplier of every parameter whose name satisfies `pred`.
    pub fn set_lr_mult(&mut self, pred: impl Fn(&str) -> bool, mult: f64) {
        for s in &mut self.slots {
            if pred(&s.name) {
                s.lr_mult = mult;
            }
        }
    }

    /// `(name, variable, m, v, steps)` of every parameter, for checkpoints.
    pub fn state(&self) -> Vec<SlotState<'_>> {
        self.slots
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    &s.var,
                    s.m.as_slice(),
                    s.v.as_slice(),
                    s.steps,
                )
            })
            .collect()
    }

    /// Restores the moments and step counts saved by [`AdamW::state`] (matched by name).
    pub fn restore_state(
        &mut self,
        step: u64,
        state: &std::collections::HashMap<String, (Vec<f32>, Vec<f32>, u64)>,
    ) -> Result<()> {
        for s in &mut self.slots {
            let (m, v, n) = state.get(&s.name).ok_or_else(|| Error::Config {
                field: "checkpoint".into(),
                reason: format!("no optimizer state for {}", s.name),
            })?;
            if m.len() != s.m.len() || v.len() != s.v.len() {
                return Err(Error::Config {
                    field: "checkpoint".into(),
                    reason: format!("optimizer state of {} has the wrong size", s.name),
                });
            }
            s.m.clone_from(m);
            s.v.clone_from(v);
            s.steps = *n;
        }
        self.step = step;
        Ok(())
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

    /// Applies one update from `grads` (no clipping, no accumulation).
    pub fn step(&mut self, grads: GradStore) -> Result<()> {
        self.accumulate(grads)?;
        self.apply(1.0)
    }

    /// Adds the gradients of one micro-batch to the accumulation buffers. The store is consumed
    /// one tensor at a time, so that a gradient and its copy never both stay alive for long.
    pub fn accumulate(&mut self, mut grads: GradStore) -> Result<()> {
        for slot in &mut self.slots {
            let Some(g) = grads.remove(slot.var.as_tensor()) else {
                continue;
            };
            slot.grad = Some(match slot.grad.take() {
                // The first micro-batch's gradient is kept as the backward pass made it.
                None => Grad::Tensor(g.contiguous()?),
                Some(sum) => {
                    let mut sum = sum.into_vec()?;
                    with_f32(&g, "AdamW", |g| {
                        sum.par_iter_mut().zip(g).for_each(|(a, b)| *a += b)
                    })?;
                    Grad::Sum(sum)
                }
            });
        }
        Ok(())
    }

    /// L2 norm of the accumulated gradient over all parameters.
    pub fn grad_norm(&self) -> f64 {
        let mut total = 0.0f64;
        for slot in &self.slots {
            if let Some(g) = &slot.grad {
                total += g
                    .with_slice(|g| g.par_iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>())
                    .unwrap_or(f64::NAN);
            }
        }
        total.sqrt()
    }

    /// Scale that clips the accumulated gradient to `max_norm` (PyTorch `clip_grad_norm_`), given
    /// the gradient is first multiplied by `pre_scale` (e.g. `1 / accumulation steps`).
    pub fn clip_scale(&self, max_norm: f64, pre_scale: f64) -> f64 {
        let norm = self.grad_norm() * pre_scale;
        if max_norm > 0.0 && norm > max_norm {
            pre_scale * max_norm / (norm + 1e-6)
        } else {
            pre_scale
        }
    }

    /// Updates every parameter that has an accumulated gradient (multiplied by `grad_scale`),
    /// then clears the buffers.
    pub fn apply(&mut self, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        // 1 - beta in f64 first, as PyTorch does (0.999f32 is not exactly 0.999).
        let (ob1, ob2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
        let gs = grad_scale as f32;
        for slot in &mut self.slots {
            let Some(grad) = slot.grad.take() else {
                continue;
            };
            if !grad.with_slice(all_finite)? {
                return Err(Error::NonFinite {
                    what: format!("gradient of {}", slot.name),
                    step: self.step,
                });
            }
            slot.steps += 1;
            let t = slot.steps as i32;
            let lr = c.lr * slot.lr_mult;
            let decay = if slot.decay {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let rule = UpdateRule {
                b1,
                b2,
                ob1,
                ob2,
                eps,
                grad_scale: gs,
                step_size: (lr / (1.0 - c.beta1.powi(t))) as f32,
                bc2_sqrt: (1.0 - c.beta2.powi(t)).sqrt() as f32,
                decay,
            };
            // The parameter is updated where it lives (no copy out and back in); the gradient
            // buffer is released when `grad` drops at the end of this iteration.
            grad.with_slice(|g| {
                slot.var.as_tensor().inplace_op1(&AdamWUpdate {
                    rule,
                    moments: RefCell::new((&mut slot.m, &mut slot.v)),
                    grad: g,
                })
            })??;
        }
        Ok(())
    }
}

/// A parameter's accumulated gradient.
enum Grad {
    /// One micro-batch's gradient, as the backward pass produced it (contiguous).
    Tensor(Tensor),
    /// The sum over several micro-batches.
    Sum(Vec<f32>),
}

impl Grad {
    /// Runs `f` on the gradient's values.
    fn with_slice<R>(&self, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
        match self {
            Grad::Tensor(t) => Ok(with_f32(t, "AdamW", f)?),
            Grad::Sum(v) => Ok(f(v)),
        }
    }

    /// The values as an owned vector (copied out of a tensor).
    fn into_vec(self) -> Result<Vec<f32>> {
        match self {
            Grad::Tensor(t) => Ok(t.flatten_all()?.to_vec1()?),
            Grad::Sum(v) => Ok(v),
        }
    }
}

/// Whether every value is finite, in one vectorised pass (`0 x` is NaN for NaN and infinities).
fn all_finite(g: &[f32]) -> bool {
    g.par_chunks(16 * 1024)
        .all(|c| c.iter().fold(0.0f32, |acc, &x| acc + x * 0.0) == 0.0)
}

/// The constants of one AdamW update of one parameter.
#[derive(Clone, Copy)]
struct UpdateRule {
    b1: f32,
    b2: f32,
    ob1: f32,
    ob2: f32,
    eps: f32,
    grad_scale: f32,
    step_size: f32,
    bc2_sqrt: f32,
    decay: f32,
}

/// The fused AdamW update of one parameter, applied to its storage in place.
struct AdamWUpdate<'a> {
    rule: UpdateRule,
    moments: RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    grad: &'a [f32],
}

impl InplaceOp1 for AdamWUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("AdamW: parameters must be f32");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("AdamW: parameter is not contiguous");
        };
        let p = &mut data[a..b];
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if p.len() != m.len() || p.len() != self.grad.len() {
            candle_core::bail!("AdamW: parameter, moment and gradient sizes differ");
        }
        let r = self.rule;
        let chunk = 16 * 1024;
        p.par_chunks_mut(chunk)
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .zip(self.grad.par_chunks(chunk))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    let gi = g[i] * r.grad_scale;
                    m[i] = r.b1 * m[i] + r.ob1 * gi;
                    v[i] = r.b2 * v[i] + r.ob2 * gi * gi;
                    let denom = v[i].sqrt() / r.bc2_sqrt + r.eps;
                    p[i] = p[i] * r.decay - r.step_size * m[i] / denom;
                }
            });
        Ok(())
    }
}

/// Linear warm-up from 0 to the peak learning rate, then linear decay to 0
/// (transformers' `get_linear_schedule_with_warmup`).
#[derive(Debug, Clone, Copy)]
pub struct LinearSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Total optimizer steps.
    pub total: u64,
}

impl LinearSchedule {
    /// Learning rate for optimizer step `step` (0-based, as transformers counts).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            self.peak * step as f64 / self.warmup.max(1) as f64
        } else {
            let rest = self.total.saturating_sub(self.warmup).max(1) as f64;
            self.peak * (self.total.saturating_sub(step) as f64 / rest).max(0.0)
        }
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
            opt.step(loss.backward().unwrap()).unwrap();
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
    fn a_non_finite_gradient_is_refused_and_leaves_the_parameter_as_it_was() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let var =
                Var::from_tensor(&Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
            let mut opt = AdamW::new(
                vec![("w".into(), var.clone(), true)],
                AdamWConfig::default(),
            )
            .unwrap();
            let x = Tensor::new(&[0.5f32, bad, 1.0], &Device::Cpu).unwrap();
            let loss = (var.as_tensor() * &x).unwrap().sum_all().unwrap();
            opt.accumulate(loss.backward().unwrap()).unwrap();
            let err = opt.apply(1.0).unwrap_err();
            assert!(matches!(err, Error::NonFinite { .. }), "{bad}: {err}");
            let after: Vec<f32> = var.as_tensor().to_vec1().unwrap();
            assert_eq!(after, [1.0, -2.0, 3.0], "{bad}");
        }
    }

    #[test]
    fn accumulation_and_clipping_equal_one_big_step() {
        let make =
            || Var::from_tensor(&Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
        let (a, b) = (make(), make());
        let cfg = AdamWConfig {
            lr: 0.1,
            ..Default::default()
        };
        let mut big = AdamW::new(vec![("w".into(), a.clone(), true)], cfg.clone()).unwrap();
        let mut acc = AdamW::new(vec![("w".into(), b.clone(), true)], cfg).unwrap();
        let x1 = Tensor::new(&[0.5f32, 1.0, -1.0], &Device::Cpu).unwrap();
        let x2 = Tensor::new(&[2.0f32, 0.0, 1.0], &Device::Cpu).unwrap();
        // Mean loss over two micro-batches == one batch with both.
        let loss = |v: &Var, x: &Tensor| {
            (v.as_tensor() * x)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let both = ((loss(&a, &x1) + loss(&a, &x2)).unwrap() / 2.0).unwrap();
        big.accumulate(both.backward().unwrap()).unwrap();
        let s = big.clip_scale(1.0, 1.0);
        big.apply(s).unwrap();
        acc.accumulate(loss(&b, &x1).backward().unwrap()).unwrap();
        acc.accumulate(loss(&b, &x2).backward().unwrap()).unwrap();
        let s = acc.clip_scale(1.0, 0.5);
        acc.apply(s).unwrap();
        let (va, vb): (Vec<f32>, Vec<f32>) = (
            a.as_tensor().to_vec1().unwrap(),
            b.as_tensor().to_vec1().unwrap(),
        );
        for (x, y) in va.iter().zip(&vb) {
            assert!((x - y).abs() < 1e-6, "{va:?} vs {vb:?}");
        }
    }

    #[test]
    fn linear_schedule_matches_transformers() {
        let s = LinearSchedule {
            peak: 1.0,
            warmup: 10,
            total: 110,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(110), 0.0);
    }

    #[test]
    fn decay_rule() {
        assert!(AdamW::decays("encoder.layer.0.output.dense.weight"));
        assert!(!AdamW::decays("encoder.layer.0.output.dense.bias"));
        assert!(!AdamW::decays("embeddings.LayerNorm.weight"));
    }
}
