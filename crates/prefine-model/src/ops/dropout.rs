//! Dropout with a mask drawn from prefine's own seeded RNG (candle's CPU RNG cannot be seeded).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rand::Rng;

use super::{f32_slice, with_f32};

/// A drawn dropout mask: each entry is 0 or `1 / (1 - p)`.
#[derive(Debug, Clone)]
pub struct DropoutMask {
    scale: Vec<f32>,
}

impl DropoutMask {
    /// Draws a mask of `n` entries with drop probability `p`.
    pub fn draw(n: usize, p: f64, rng: &mut impl Rng) -> Self {
        let keep = (1.0 / (1.0 - p)) as f32;
        let scale = (0..n)
            .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
            .collect();
        Self { scale }
    }
}

impl CustomOp1 for DropoutMask {
    fn name(&self) -> &'static str {
        "prefine-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "dropout")?;
        if x.len() != self.scale.len() {
            candle_core::bail!(
                "dropout: mask of {} for {} elements",
                self.scale.len(),
                x.len()
            );
        }
        let y = x.iter().zip(&self.scale).map(|(a, m)| a * m).collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let v = with_f32(dy, "dropout.backward", |g| {
            g.iter()
                .zip(&self.scale)
                .map(|(a, m)| a * m)
                .collect::<Vec<f32>>()
        })?;
        Ok(Some(Tensor::from_vec(v, x.shape(), x.device())?))
    }
}

/// Inverted dropout with probability `p`, drawing the mask from `rng`. Identity when `p == 0`.
pub fn dropout(x: &Tensor, p: f64, rng: &mut impl Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = DropoutMask::draw(x.elem_count(), p, rng);
    x.contiguous()?.apply_op1(mask)
}
