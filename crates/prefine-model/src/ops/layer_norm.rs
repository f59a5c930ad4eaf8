//! Layer normalisation over the last dimension, PyTorch semantics (biased variance, eps inside
//! the square root), with its full backward; and the post-LN block's `LayerNorm(x + residual)`
//! as one op (one graph node instead of an add and a norm).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32};
#[cfg(target_arch = "x86_64")]
use prefine_kernels::cpu::Isa;
use prefine_kernels::norm::{layer_norm_row, row_stats};

/// Rows per parallel task.
const ROWS: usize = 16;

/// `y = (x - mean) * rstd * g + b` row by row.
fn forward_rows(x: &[f32], g: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    forward_rows_sum(x, None, g, b, eps)
}

/// Layer norm of `x + residual` (or of `x`) row by row: the sum lives one row at a time, and
/// the output is written once, never zero-filled first.
fn forward_rows_sum(
    x: &[f32],
    residual: Option<&[f32]>,
    g: &[f32],
    b: &[f32],
    eps: f32,
) -> Vec<f32> {
    let d = g.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "layer_norm: rows of {d}"
    );
    let n = x.len();
    if let Some(r) = residual {
        assert_eq!(r.len(), n, "add_layer_norm: operands differ in length");
    }
    let mut y: Vec<f32> = Vec::with_capacity(n);
    y.spare_capacity_mut()[..n]
        .par_chunks_mut(d * ROWS)
        .enumerate()
        .for_each(|(t, yc)| {
            let mut sum = vec![0f32; d];
            for (r, yr) in yc.chunks_exact_mut(d).enumerate() {
                let at = (t * ROWS + r) * d;
                let xr = &x[at..at + d];
                let row = match residual {
                    Some(res) => {
                        for ((s, a), c) in sum.iter_mut().zip(xr).zip(&res[at..at + d]) {
                            *s = a + c;
                        }
                        &sum[..]
                    }
                    None => xr,
                };
                layer_norm_row(row, g, b, eps, yr);
            }
        });
    // SAFETY: the chunks cover the first n elements exactly (n is a multiple of d), and every
    // row of every chunk was written above.
    unsafe { y.set_len(n) };
    y
}

/// Gradients `(dx, dgamma, dbeta)` of layer norm at input `x` (plus `residual`, when given: the
/// sum is formed one row at a time, never materialised) for output gradient `gy`
/// (`dgamma`/`dbeta` are empty unless `need_params`).
fn backward_rows(
    x: &[f32],
    residual: Option<&[f32]>,
    g: &[f32],
    gy: &[f32],
    eps: f32,
    need_params: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = g.len();
    if let Some(r) = residual {
        assert_eq!(
            r.len(),
            x.len(),
            "add_layer_norm: operands differ in length"
        );
    }
    // Every element of dx is written below (one row at a time): no zero fill.
    let mut dx: Vec<f32> = Vec::with_capacity(x.len());
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(d * ROWS)
        .enumerate()
        .map(|(t, dxc)| {
            let at = t * ROWS * d;
            let rows = at..at + dxc.len();
            let mut params = need_params.then(|| (vec![0f32; d], vec![0f32; d]));
            let chunk = BackwardChunk {
                x: &x[rows.clone()],
                residual: residual.map(|r| &r[rows.clone()]),
                g,
                gy: &gy[rows],
                eps,
            };
            match prefine_kernels::cpu::isa() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the selected kernel family has AVX-512F.
                Isa::Avx512 | Isa::Avx512Bf16 => unsafe { chunk.run_avx512(dxc, params.as_mut()) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the selected kernel family has AVX2 and FMA.
                Isa::Avx2Fma { .. } => unsafe { chunk.run_avx2(dxc, params.as_mut()) },
                _ => chunk.run(dxc, params.as_mut()),
            }
            params.unwrap_or_default()
        })
        .collect();
    // SAFETY: the chunks above cover the first x.len() elements, each row written in full.
    unsafe { dx.set_len(x.len()) };
    let mut dg = Vec::new();
    let mut db = Vec::new();
    if need_params {
        dg = vec![0f32; d];
        db = vec![0f32; d];
        for (pg, pb) in partials {
            for i in 0..d {
                dg[i] += pg[i];
                db[i] += pb[i];
            }
        }
    }
    (dx, dg, db)
}

/// A block of rows of the layer-norm backward pass.
struct BackwardChunk<'a> {
    x: &'a [f32],
    residual: Option<&'a [f32]>,
    g: &'a [f32],
    gy: &'a [f32],
    eps: f32,
}

impl BackwardChunk<'_> {
    /// [`Self::run`] compiled for AVX-512 (the lane loops below vectorise 16 wide).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(
        &self,
        dx: &mut [std::mem::MaybeUninit<f32>],
        params: Option<&mut (Vec<f32>, Vec<f32>)>,
    ) {
        self.run(dx, params)
    }

    /// [`Self::run`] compiled for AVX2+FMA (the same operations: the same bits).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(
        &self,
        dx: &mut [std::mem::MaybeUninit<f32>],
        params: Option<&mut (Vec<f32>, Vec<f32>)>,
    ) {
        self.run(dx, params)
    }

    /// Writes `dx` for every row and adds each row's `dgamma`/`dbeta` terms into `params`. The
    /// row sums are kept in 16 lanes (a vectorisable loop, where one running sum is a serial
    /// chain of dependent adds).
    #[inline(always)]
    fn run(
        &self,
        dx: &mut [std::mem::MaybeUninit<f32>],
        mut params: Option<&mut (Vec<f32>, Vec<f32>)>,
    ) {
        const L: usize = 16;
        let d = self.g.len();
        let full = d / L * L;
        let mut sum = vec![0f32; d];
        for (r, dxr) in dx.chunks_exact_mut(d).enumerate() {
            let span = r * d..(r + 1) * d;
            let xr = &self.x[span.clone()];
            let row: &[f32] = match self.residual {
                Some(res) => {
                    for ((s, a), c) in sum.iter_mut().zip(xr).zip(&res[span.clone()]) {
                        *s = a + c;
                    }
                    &sum
                }
                None => xr,
            };
            let gr = &self.gy[span];
            let (mean, rstd) = row_stats(row, self.eps);
            let mut a = [0f32; L];
            let mut b = [0f32; L];
            for c in (0..full).step_by(L) {
                for l in 0..L {
                    let i = c + l;
                    let xhat = (row[i] - mean) * rstd;
                    let dxhat = gr[i] * self.g[i];
                    a[l] += dxhat;
                    b[l] += dxhat * xhat;
                }
            }
            let (mut sum_dxhat, mut sum_dxhat_xhat) =
                (a.iter().sum::<f32>(), b.iter().sum::<f32>());
            for i in full..d {
                let xhat = (row[i] - mean) * rstd;
                let dxhat = gr[i] * self.g[i];
                sum_dxhat += dxhat;
                sum_dxhat_xhat += dxhat * xhat;
            }
            if let Some((dg, db)) = params.as_deref_mut() {
                for i in 0..d {
                    let xhat = (row[i] - mean) * rstd;
                    dg[i] += gr[i] * xhat;
                    db[i] += gr[i];
                }
            }
            let inv_d = 1.0 / d as f32;
            let (m1, m2) = (sum_dxhat * inv_d, sum_dxhat_xhat * inv_d);
            for i in 0..d {
                let xhat = (row[i] - mean) * rstd;
                dxr[i].write(rstd * (gr[i] * self.g[i] - m1 - xhat * m2));
            }
        }
    }
}

struct LayerNorm {
    eps: f32,
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
        Ok((
            CpuStorage::F32(forward_rows(x, g, b, self.eps)),
            l1.shape().clone(),
        ))
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
        let (dx, dg, db) = with_f32(x, "layer_norm.backward", |xv| {
            with_f32(gamma, "layer_norm.backward", |g| {
                with_f32(dy, "layer_norm.backward", |gy| {
                    backward_rows(xv, None, g, gy, self.eps, need_params)
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

/// `LayerNorm(x + residual)` with `gamma`/`beta` packed as a `[2, d]` tensor.
struct AddLayerNorm {
    eps: f32,
}

impl CustomOp3 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "prefine-add-layer-norm"
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
        let x = f32_slice(s1, l1, "add_layer_norm")?;
        let r = f32_slice(s2, l2, "add_layer_norm")?;
        let gb = f32_slice(s3, l3, "add_layer_norm")?;
        let d = *l1.dims().last().unwrap_or(&0);
        if l1.dims() != l2.dims() || gb.len() != 2 * d || d == 0 {
            candle_core::bail!(
                "add_layer_norm: shapes {:?} + {:?} with params {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        Ok((
            CpuStorage::F32(forward_rows_sum(x, Some(r), &gb[..d], &gb[d..], self.eps)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gb.elem_count() / 2;
        let need_params = gb.track_op();
        let (dsum, dg, db) = with_f32(x, "add_layer_norm.backward", |xv| {
            with_f32(r, "add_layer_norm.backward", |rv| {
                with_f32(gb, "add_layer_norm.backward", |gbv| {
                    with_f32(dy, "add_layer_norm.backward", |gy| {
                        backward_rows(xv, Some(rv), &gbv[..d], gy, self.eps, need_params)
                    })
                })
            })
        })????;
        let dev = x.device();
        let dsum = Tensor::from_vec(dsum, x.shape(), dev)?;
        let dgb = if need_params {
            let mut v = dg;
            v.extend(db);
            Some(Tensor::from_vec(v, (2, d), dev)?)
        } else {
            None
        };
        Ok((
            x.track_op().then(|| dsum.clone()),
            r.track_op().then_some(dsum),
            dgb,
        ))
    }
}

/// `LayerNorm(x + residual)` (the post-LN residual block), one op.
pub fn add_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    x.contiguous()?.apply_op3_arc(
        &residual.contiguous()?,
        &gb,
        std::sync::Arc::new(Box::new(AddLayerNorm { eps: eps as f32 })),
    )
}
