//! Layer normalisation over the last dimension, PyTorch semantics (biased variance, eps inside
//! the square root), with its full backward.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::sum as fsum;
use super::{f32_slice, with_f32};

struct LayerNorm {
    eps: f32,
}

/// Mean and reciprocal standard deviation of one row.
#[inline]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = fsum(row) / n;
    let mut acc = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let var =
        (acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "prefine-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer_norm")?;
        let g = f32_slice(s2, l2, "layer_norm")?;
        let b = f32_slice(s3, l3, "layer_norm")?;
        let d = *l1.dims().last().unwrap_or(&0);
        if g.len() != d || b.len() != d || d == 0 {
            candle_core::bail!(
                "layer_norm: weight/bias of {}/{} for last dim {d}",
                g.len(),
                b.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * 16)
            .zip(x.par_chunks(d * 16))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_exact_mut(d).zip(xc.chunks_exact(d)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    for i in 0..d {
                        yr[i] = (xr[i] - mean) * rstd * g[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gamma.elem_count();
        let need_params = gamma.track_op() || beta.track_op();
        let eps = self.eps;
        let (dx, dg, db) = with_f32(x, "layer_norm.backward", |xv| {
            with_f32(gamma, "layer_norm.backward", |g| {
                with_f32(dy, "layer_norm.backward", |gy| {
                    let mut dx = vec![0f32; xv.len()];
                    let rows_per_chunk = 16;
                    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
                        .par_chunks_mut(d * rows_per_chunk)
                        .zip(xv.par_chunks(d * rows_per_chunk))
                        .zip(gy.par_chunks(d * rows_per_chunk))
                        .map(|((dxc, xc), gc)| {
                            let mut dg = if need_params {
                                vec![0f32; d]
                            } else {
                                Vec::new()
                            };
                            let mut db = if need_params {
                                vec![0f32; d]
                            } else {
                                Vec::new()
                            };
                            for ((dxr, xr), gr) in dxc
                                .chunks_exact_mut(d)
                                .zip(xc.chunks_exact(d))
                                .zip(gc.chunks_exact(d))
                            {
                                let (mean, rstd) = row_stats(xr, eps);
                                let mut sum_dxhat = 0f32;
                                let mut sum_dxhat_xhat = 0f32;
                                for i in 0..d {
                                    let xhat = (xr[i] - mean) * rstd;
                                    let dxhat = gr[i] * g[i];
                                    sum_dxhat += dxhat;
                                    sum_dxhat_xhat += dxhat * xhat;
                                    if need_params {
                                        dg[i] += gr[i] * xhat;
                                        db[i] += gr[i];
                                    }
                                }
                                let inv_d = 1.0 / d as f32;
                                let (m1, m2) = (sum_dxhat * inv_d, sum_dxhat_xhat * inv_d);
                                for i in 0..d {
                                    let xhat = (xr[i] - mean) * rstd;
                                    dxr[i] = rstd * (gr[i] * g[i] - m1 - xhat * m2);
                                }
                            }
                            (dg, db)
                        })
                        .collect();
                    let mut dg = vec![0f32; d];
                    let mut db = vec![0f32; d];
                    if need_params {
                        for (pg, pb) in partials {
                            for i in 0..d {
                                dg[i] += pg[i];
                                db[i] += pb[i];
                            }
                        }
                    }
                    (dx, dg, db)
                })
            })
        })???;
        let dev = x.device();
        let dx = if x.track_op() {
            Some(Tensor::from_vec(dx, x.shape(), dev)?)
        } else {
            None
        };
        let dg = if gamma.track_op() {
            Some(Tensor::from_vec(dg, d, dev)?)
        } else {
            None
        };
        let db = if beta.track_op() {
            Some(Tensor::from_vec(db, d, dev)?)
        } else {
            None
        };
        Ok((dx, dg, db))
    }
}

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over the last dimension (PyTorch `nn.LayerNorm`).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3_arc(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        std::sync::Arc::new(Box::new(LayerNorm { eps: eps as f32 })),
    )
}
