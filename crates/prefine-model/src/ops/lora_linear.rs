//! `y = x Wᵀ + b + s · (x Aᵀ) Bᵀ` as one op for a frozen base layer with a LoRA pair: one graph
//! node instead of five (base linear, two low-rank products, scale, add), so candle's backward
//! allocates and accumulates one input gradient instead of several. The frozen `W` and `b` live
//! in the op; `x`, `A` and `B` are its inputs.
//!
//! In f32 the op multiplies by the merged weight `W + s · B A` (`[out, in]`; forming it costs
//! 2·out·r·in flops): the forward pass and the input gradient are then one GEMM each, where the
//! unmerged form adds two rank-r products that each stream the whole `[tokens, out]` output once
//! more. In bf16 the op keeps the unmerged products, so that it rounds exactly what PyTorch's
//! autocast rounds; so does a forward pass without gradients (evaluation, serving), whose
//! outputs then equal the packed inference path's bit for bit. The rank-r intermediate `x Aᵀ`
//! is recomputed in the backward pass.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use prefine_kernels::cpu::MatRef;
use prefine_kernels::gemm::{gemm, gemm_new, linear_new, transpose};
use prefine_kernels::skinny::{few_times_rows, rows_times_few};

use super::autocast::{matmul_precision, AtPrecision, MatmulPrecision};
use super::{f32_slice, with_f32};

struct FrozenLoraLinear {
    /// `[out, in]`, contiguous.
    weight: Tensor,
    /// `[out]`.
    bias: Tensor,
    scale: f32,
    /// The precision of every product (forward and backward).
    precision: MatmulPrecision,
    /// Whether f32 products go through the merged weight: when a gradient will be taken. A
    /// forward pass without gradients (evaluation, serving) keeps the unmerged products, which
    /// give the same bits as the packed inference path's LoRA deltas.
    merge: bool,
    /// `W + s · B A` (f32 only), formed by the forward pass and reused by the backward pass.
    merged: OnceLock<Vec<f32>>,
}

impl FrozenLoraLinear {
    fn dims(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1])
    }

    /// `W + s · B A` for `a: [r, in]`, `b: [out, r]`.
    fn merge(&self, w: &[f32], a: &[f32], b: &[f32], r: usize) -> Vec<f32> {
        let (out, inp) = self.dims();
        let mut merged = w.to_vec();
        let sb: Vec<f32> = b.iter().map(|v| v * self.scale).collect();
        gemm(
            out,
            inp,
            r,
            &mut merged,
            true,
            MatRef::row_major(&sb, r),
            MatRef::row_major(a, inp),
        );
        merged
    }
}

/// `x · (s · w)ᵀ` (`[m, r]`) for `x: [m, k]`, `w: [r, k]`: LoRA's rank-r side (`s · x Aᵀ`, or
/// `s · dy B` with `w = Bᵀ`).
#[allow(clippy::too_many_arguments)]
fn rank_side(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    r: usize,
    s: f32,
    p: MatmulPrecision,
) -> Vec<f32> {
    if p == MatmulPrecision::F32 {
        let sw: Vec<f32> = w.iter().map(|v| v * s).collect();
        return rows_times_few(x, m, k, &sw, r);
    }
    let mut h = gemm_new(
        m,
        r,
        k,
        MatRef::row_major(x, k).at(p),
        MatRef::transposed(w, k).at(p),
    );
    h.iter_mut().for_each(|v| *v *= s);
    h
}

/// `uᵀ v` (`[r, n]`) for `u: [m, r]`, `v: [m, n]`: a LoRA factor's gradient.
fn rank_grad(u: &[f32], r: usize, v: &[f32], m: usize, n: usize, p: MatmulPrecision) -> Vec<f32> {
    if p == MatmulPrecision::F32 {
        return few_times_rows(u, r, v, m, n);
    }
    gemm_new(
        r,
        n,
        m,
        MatRef::transposed(u, r).at(p),
        MatRef::row_major(v, n).at(p),
    )
}

impl CustomOp3 for FrozenLoraLinear {
    fn name(&self) -> &'static str {
        "prefine-frozen-lora-linear"
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
        let (out, inp) = self.dims();
        let x = f32_slice(s1, l1, "lora_linear")?;
        let a = f32_slice(s2, l2, "lora_linear")?;
        let b = f32_slice(s3, l3, "lora_linear")?;
        let r = l2.dims()[0];
        if l2.dims() != [r, inp] || l3.dims() != [out, r] || l1.dims().last() != Some(&inp) {
            candle_core::bail!(
                "lora_linear: shapes x {:?}, A {:?}, B {:?} do not fit [{out}, {inp}]",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let m = x.len() / inp;
        let p = self.precision;
        let y = with_f32(&self.weight, "lora_linear", |w| {
            with_f32(&self.bias, "lora_linear", |bias| {
                if p == MatmulPrecision::F32 && self.merge {
                    let merged = self.merged.get_or_init(|| self.merge(w, a, b, r));
                    return linear_new(
                        m,
                        out,
                        inp,
                        MatRef::row_major(x, inp),
                        MatRef::transposed(merged, inp),
                        bias,
                        false,
                    );
                }
                // Unmerged: x Wᵀ + b, then += (s · x Aᵀ) Bᵀ through the blocked GEMM (in bf16,
                // each product rounded as autocast does).
                let mut h = gemm_new(
                    m,
                    r,
                    inp,
                    MatRef::row_major(x, inp).at(p),
                    MatRef::transposed(a, inp).at(p),
                );
                h.iter_mut().for_each(|v| *v *= self.scale);
                let mut y = linear_new(
                    m,
                    out,
                    inp,
                    MatRef::row_major(x, inp).at(p),
                    MatRef::transposed(w, inp).at(p),
                    bias,
                    false,
                );
                gemm(
                    m,
                    out,
                    r,
                    &mut y,
                    true,
                    MatRef::row_major(&h, r).at(p),
                    MatRef::transposed(b, r).at(p),
                );
                y
            })
        })??;
        let mut od = l1.dims().to_vec();
        *od.last_mut().expect("non-empty") = out;
        Ok((CpuStorage::F32(y), Shape::from(od)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, inp) = self.dims();
        let r = a.dims()[0];
        let m = x.elem_count() / inp;
        let s = self.scale;
        let p = self.precision;
        let dy = dy.contiguous()?;
        let (dx, da, db) = with_f32(x, "lora_linear.backward", |xv| {
            with_f32(a, "lora_linear.backward", |av| {
                with_f32(b, "lora_linear.backward", |bv| {
                    with_f32(&dy, "lora_linear.backward", |g| {
                        with_f32(&self.weight, "lora_linear.backward", |w| {
                            // dh = s · dy B  [m, r]
                            let bt = transpose(bv, out, r);
                            let dh = a.track_op().then(|| rank_side(g, m, out, &bt, r, s, p));
                            // dB = dyᵀ (s · x Aᵀ)  [out, r], formed as its transpose
                            // (s · x Aᵀ)ᵀ dy [r, out]: r rows stream dy once.
                            let db = b.track_op().then(|| {
                                super::linear::count_weight_grad();
                                let h = rank_side(xv, m, inp, av, r, s, p);
                                transpose(&rank_grad(&h, r, g, m, out, p), r, out)
                            });
                            // dA = dhᵀ x  [r, in]
                            let da = dh.as_ref().map(|dh| {
                                super::linear::count_weight_grad();
                                rank_grad(dh, r, xv, m, inp, p)
                            });
                            // dx = dy (W + s · B A)  [m, in]
                            let dx = x.track_op().then(|| {
                                if p == MatmulPrecision::F32 {
                                    let merged =
                                        self.merged.get_or_init(|| self.merge(w, av, bv, r));
                                    return gemm_new(
                                        m,
                                        inp,
                                        out,
                                        MatRef::row_major(g, out),
                                        MatRef::row_major(merged, inp),
                                    );
                                }
                                let mut dx = gemm_new(
                                    m,
                                    inp,
                                    out,
                                    MatRef::row_major(g, out).at(p),
                                    MatRef::row_major(w, inp).at(p),
                                );
                                let dh = match &dh {
                                    Some(dh) => std::borrow::Cow::Borrowed(dh),
                                    None => {
                                        std::borrow::Cow::Owned(rank_side(g, m, out, &bt, r, s, p))
                                    }
                                };
                                gemm(
                                    m,
                                    inp,
                                    r,
                                    &mut dx,
                                    true,
                                    MatRef::row_major(&dh, r).at(p),
                                    MatRef::row_major(av, inp).at(p),
                                );
                                dx
                            });
                            (dx, da, db)
                        })
                    })
                })
            })
        })?????;
        let dev = x.device();
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.shape(), dev))
                .transpose()?,
            da.map(|v| Tensor::from_vec(v, (r, inp), dev)).transpose()?,
            db.map(|v| Tensor::from_vec(v, (out, r), dev)).transpose()?,
        ))
    }
}

/// `x Wᵀ + b + scale · (x Aᵀ) Bᵀ` with `weight`/`bias` frozen (no gradient) and `a: [r, in]`,
/// `b: [out, r]` as differentiable inputs.
pub fn frozen_lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let op = FrozenLoraLinear {
        weight: weight.detach().contiguous()?,
        bias: bias.detach().contiguous()?,
        scale: scale as f32,
        precision: matmul_precision(),
        merge: x.track_op() || a.track_op() || b.track_op(),
        merged: OnceLock::new(),
    };
    x.contiguous()?.apply_op3_arc(
        &a.contiguous()?,
        &b.contiguous()?,
        std::sync::Arc::new(Box::new(op)),
    )
}
