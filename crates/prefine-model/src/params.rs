//! [`Param`]: one named weight with a trainable flag, and the seeded RNG used for
//! initialisation and dropout.

use candle_core::{Tensor, Var};
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
}

impl Param {
    /// Wraps a tensor (copied into a fresh variable), frozen by default.
    pub fn new(t: &Tensor) -> Result<Self> {
        Ok(Self {
            var: Var::from_tensor(&t.detach())?,
            trainable: false,
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

    /// The underlying variable (for optimizers).
    pub fn var(&self) -> &Var {
        &self.var
    }

    /// Whether the weight receives gradients.
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// Freezes or unfreezes the weight.
    pub fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
    }

    /// Replaces the value in place (shape must match).
    pub fn set(&self, t: &Tensor) -> Result<()> {
        Ok(self.var.set(t)?)
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
