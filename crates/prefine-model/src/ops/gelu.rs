//! Exact (erf) GELU with its backward, vectorised (see `fast_math`).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32};
use prefine_kernels::fast_math::{gelu_backward_into, gelu_into_uninit};

struct Gelu;

const CHUNK: usize = 16 * 1024;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "prefine-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu")?;
        let n = x.len();
        let mut y: Vec<f32> = Vec::with_capacity(n);
        y.spare_capacity_mut()[..n]
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| gelu_into_uninit(yc, xc));
        // SAFETY: the chunks of the first n elements were each written by `gelu_into_uninit`.
        unsafe { y.set_len(n) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(x, "gelu.backward", |xv| {
            with_f32(dy, "gelu.backward", |g| {
                let n = xv.len();
                let mut dx: Vec<f32> = Vec::with_capacity(n);
                dx.spare_capacity_mut()[..n]
                    .par_chunks_mut(CHUNK)
                    .zip(xv.par_chunks(CHUNK))
                    .zip(g.par_chunks(CHUNK))
                    .for_each(|((d, xc), gc)| gelu_backward_into(d, xc, gc));
                // SAFETY: `gelu_backward_into` wrote every element of the n-element chunks.
                unsafe { dx.set_len(n) };
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `x Φ(x)` (HF `"gelu"`), element-wise.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}
