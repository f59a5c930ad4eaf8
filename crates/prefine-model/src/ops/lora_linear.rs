//! `y = x Wᵀ + b + s · (x Aᵀ) Bᵀ` as one op for a frozen base layer with a LoRA pair: one graph
//! node instead of five (base linear, two low-rank products, scale, add), so candle's backward
//! allocates and accumulates one input gradient instead of several. The frozen `W` and `b` live
//! in the op; `x`, `A` and `B` are its inputs. The rank-r intermediate `x Aᵀ` is recomputed in the
//! backward pass (it costs 2·m·r·in flops).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::autocast::{matmul_precision, MatmulPrecision};
use super::kernels::{gemm, gemm_new, linear_new, MatRef};
use super::{f32_slice, with_f32};

struct FrozenLoraLinear {
    /// `[out, in]`, contiguous.
    weight: Tensor,
    /// `[out]`.
    bias: Tensor,
    scale: f32,
    /// The precision of every product (forward and backward).
    precision: MatmulPrecision,
}

impl FrozenLoraLinear {
    fn dims(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1])
    }
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
        // h = s · x Aᵀ  [m, r]
        let mut h = gemm_new(
            m,
            r,
            inp,
            MatRef::row_major(x, inp).at(p),
            MatRef::transposed(a, inp).at(p),
        );
        h.iter_mut().for_each(|v| *v *= self.scale);
        let y = with_f32(&self.weight, "lora_linear", |w| {
            with_f32(&self.bias, "lora_linear", |bias| {
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
                            let mut dh = gemm_new(
                                m,
                                r,
                                out,
                                MatRef::row_major(g, out).at(p),
                                MatRef::row_major(bv, r).at(p),
                            );
                            dh.iter_mut().for_each(|v| *v *= s);
                            let db = b.track_op().then(|| {
                                super::linear::count_weight_grad();
                                // dB = s · dyᵀ (x Aᵀ)  [out, r]
                                let mut h = gemm_new(
                                    m,
                                    r,
                                    inp,
                                    MatRef::row_major(xv, inp).at(p),
                                    MatRef::transposed(av, inp).at(p),
                                );
                                h.iter_mut().for_each(|v| *v *= s);
                                gemm_new(
                                    out,
                                    r,
                                    m,
                                    MatRef::transposed(g, out).at(p),
                                    MatRef::row_major(&h, r).at(p),
                                )
                            });
                            // dA = dhᵀ x  [r, in]
                            let da = a.track_op().then(|| {
                                super::linear::count_weight_grad();
                                gemm_new(
                                    r,
                                    inp,
                                    m,
                                    MatRef::transposed(&dh, r).at(p),
                                    MatRef::row_major(xv, inp).at(p),
                                )
                            });
                            // dx = dy W + dh A  [m, in]
                            let dx = x.track_op().then(|| {
                                let mut dx = gemm_new(
                                    m,
                                    inp,
                                    out,
                                    MatRef::row_major(g, out).at(p),
                                    MatRef::row_major(w, inp).at(p),
                                );
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
    };
    x.contiguous()?.apply_op3_arc(
        &a.contiguous()?,
        &b.contiguous()?,
        std::sync::Arc::new(Box::new(op)),
    )
}
