//! [`Param`]: one named weight with a trainable flag, and the seeded RNG used for
//! initialisation and dropout.

use std::sync::{Arc, Mutex};

use candle_core::{Tensor, Var};

use crate::ops::FrozenPacks;
use rand::SeedableRng;

use crate::error::Result;

/// prefine's RNG: ChaCha8, seeded explicitly (candle's CPU RNG cannot be seeded).
pub type SeedRng = rand_chacha::ChaCha8Rng;

/// A new RNG from a seed.
pub fn seed_rng(seed: u64) -> SeedRng {
    SeedRng::seed_from_u64(seed)
}

/// A model weight. Trainable weights enter the graph as candle variables; frozen ones enter
/// detached, so that no gradient is ever computed for them.
#[derive(Clone, Debug)]
pub struct Param {
    var: Var,
    trainable: bool,
    /// The frozen weight packed for the GEMM kernel ([`Param::frozen_packs`]), shared by the
    /// clones that share `var`. Built on first use while frozen; dropped by every call that
    /// could change the value or the flag ([`Param::set`], [`Param::set_trainable`],
    /// [`Param::var`]), so it never outlives the values it was packed from.
    packs: Arc<Mutex<Option<Arc<FrozenPacks>>>>,
}

impl Param {
    /// Wraps a tensor (copied into a fresh variable), frozen by default.
    pub fn new(t: &Tensor) -> Result<Self> {
        Ok(Self {
            var: Var::from_tensor(&t.detach())?,
            trainable: false,
            packs: Arc::default(),
        })
    }

    /// The tensor to use in a forward pass.
    pub fn t(&self) -> Tensor {
        if self.trainable {
            self.var.as_tensor().clone()
        } else {
            self.var.as_detached_tensor()
        }
    }

    /// The underlying variable (for optimizers and checkpoints). A caller may write through it,
    /// so the packed copy is dropped; a clone of the variable kept past this call must not be
    /// written while the weight is frozen (optimizers only update trainable weights).
    pub fn var(&self) -> &Var {
        self.drop_packs();
        &self.var
    }

    /// The shape of the weight.
    pub fn dims(&self) -> &[usize] {
        self.var.dims()
    }

    /// The number of values in the weight.
    pub fn elem_count(&self) -> usize {
        self.var.elem_count()
    }

    /// Whether the weight receives gradients.
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// Freezes or unfreezes the weight.
    pub fn set_trainable(&mut self, trainable: bool) {
        self.drop_packs();
        self.trainable = trainable;
    }

    /// Replaces the value in place (shape must match).
    pub fn set(&self, t: &Tensor) -> Result<()> {
        self.drop_packs();
        Ok(self.var.set(t)?)
    }

    /// A frozen 2-d f32 weight packed for the GEMM kernel (built once, then shared until the
    /// value may change). `None` when the weight is trainable or not an f32 matrix.
    pub fn frozen_packs(&self) -> Result<Option<Arc<FrozenPacks>>> {
        if self.trainable
            || self.var.dims().len() != 2
            || self.var.elem_count() == 0
            || self.var.dtype() != candle_core::DType::F32
        {
            return Ok(None);
        }
        let mut slot = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref() {
            return Ok(Some(p.clone()));
        }
        let p = Arc::new(FrozenPacks::pack(&self.var.as_detached_tensor())?);
        *slot = Some(p.clone());
        Ok(Some(p))
    }

    fn drop_packs(&self) {
        *self.packs.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Samples a `[rows, cols]` tensor uniformly from `[-bound, bound]`.
pub fn uniform(rows: usize, cols: usize, bound: f64, rng: &mut SeedRng) -> Result<Tensor> {
    use rand::Rng;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Ok(Tensor::from_vec(
        v,
        (rows, cols),
        &candle_core::Device::Cpu,
    )?)
}

/// Samples a `[rows, cols]` tensor from N(0, std²) (BERT's `initializer_range`).
pub fn normal(rows: usize, cols: usize, std: f64, rng: &mut SeedRng) -> Result<Tensor> {
    use rand::Rng;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            // Box-Muller from two uniforms.
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Ok(Tensor::from_vec(
        v,
        (rows, cols),
        &candle_core::Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(p: &Param, x: &Tensor) -> Vec<f32> {
        let bias = Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let y = match p.frozen_packs().unwrap() {
            Some(packs) => crate::ops::frozen_packed_linear(x, packs, &bias).unwrap(),
            None => crate::ops::linear(x, &p.t(), &bias).unwrap(),
        };
        y.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The packed copy follows every change of the value or the flag: it is never stale.
    #[test]
    fn frozen_packs_are_rebuilt_after_every_change() {
        let mut rng = seed_rng(7);
        let w1 = normal(3, 4, 1.0, &mut rng).unwrap();
        let w2 = normal(3, 4, 1.0, &mut rng).unwrap();
        let x = normal(2, 4, 1.0, &mut rng).unwrap();
        let plain = |w: &Tensor| -> Vec<f32> {
            let bias =
                Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
            crate::ops::linear(&x, w, &bias)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
        let mut p = Param::new(&w1).unwrap();
        let shared = p.clone();
        let first = p.frozen_packs().unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&first, &shared.frozen_packs().unwrap().unwrap()),
            "one copy per weight"
        );
        assert!(close(&forward(&p, &x), &plain(&w1)));
        // Set through the param, or through a clone sharing its variable.
        shared.set(&w2).unwrap();
        assert!(close(&forward(&p, &x), &plain(&w2)));
        // Written through the variable: asking for it drops the packed copy.
        p.var().set(&w1).unwrap();
        assert!(close(&forward(&p, &x), &plain(&w1)));
        // Trainable weights are never packed; freezing again packs the current value.
        p.set_trainable(true);
        assert!(p.frozen_packs().unwrap().is_none());
        p.var().set(&w2).unwrap();
        p.set_trainable(false);
        assert!(close(&forward(&p, &x), &plain(&w2)));
    }
}
