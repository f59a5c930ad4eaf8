//! Attention softmax with scaling and a key-padding mask fused in, with its backward.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32};
use prefine_kernels::fast_math::{exp, zip_map_into};

struct MaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "prefine-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "masked_softmax")?;
        let mask = f32_slice(s2, l2, "masked_softmax")?;
        let dims = l1.dims();
        if dims.len() != 4 {
            candle_core::bail!("masked_softmax: expected [batch, heads, query, key], got {dims:?}");
        }
        let (b, h, q, k) = (dims[0], dims[1], dims[2], dims[3]);
        if l2.dims() != [b, k] {
            candle_core::bail!(
                "masked_softmax: mask {:?} does not match [{b}, {k}]",
                l2.dims()
            );
        }
        let rows_per_batch = h * q;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .enumerate()
            .for_each(|(r, (yr, xr))| {
                let mr = &mask[(r / rows_per_batch) * k..(r / rows_per_batch + 1) * k];
                let mut max = f32::NEG_INFINITY;
                for j in 0..k {
                    if mr[j] > 0.5 {
                        max = max.max(xr[j] * self.scale);
                    }
                }
                if max == f32::NEG_INFINITY {
                    // Every key is padding: HF's additive mask gives a uniform distribution.
                    yr.fill(1.0 / k as f32);
                    return;
                }
                let scale = self.scale;
                zip_map_into(yr, xr, mr, |x, m| {
                    let z = if m > 0.5 { x * scale - max } else { -100.0 };
                    exp(z) * m
                });
                let sum: f32 = yr.iter().sum();
                let inv = 1.0 / sum;
                yr.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() {
            return Ok((None, None));
        }
        let k = *x.dims().last().unwrap_or(&1);
        let scale = self.scale;
        let dx = with_f32(res, "masked_softmax.backward", |y| {
            with_f32(dy, "masked_softmax.backward", |g| {
                let mut dx = vec![0f32; y.len()];
                dx.par_chunks_mut(k)
                    .zip(y.par_chunks(k))
                    .zip(g.par_chunks(k))
                    .for_each(|((dr, yr), gr)| {
                        let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                        for j in 0..k {
                            dr[j] = scale * yr[j] * (gr[j] - dot);
                        }
                    });
                dx
            })
        })??;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), None))
    }
}

/// `softmax(scale * scores + mask_bias)` over the last dimension, where `scores` is
/// `[batch, heads, query, key]` and `key_mask` is `[batch, key]` with 1 for real tokens and 0 for
/// padding (padding keys get probability 0). The mask receives no gradient.
pub fn masked_softmax(scores: &Tensor, key_mask: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op2(
        &key_mask.contiguous()?,
        MaskedSoftmax {
            scale: scale as f32,
        },
    )
}
