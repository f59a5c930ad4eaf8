//! `y = x · Wᵀ + b` as one op whose backward computes only the gradients that are tracked.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use prefine_kernels::cpu::MatRef;
use prefine_kernels::gemm::{column_sums, gemm_new, linear_new, transpose};
use prefine_kernels::packed_f32::{packed_linear, PackedF32Matrix};

use super::autocast::{matmul_precision, AtPrecision, MatmulPrecision};
use super::{f32_slice, with_f32};

static WEIGHT_GRADS: AtomicUsize = AtomicUsize::new(0);

/// Records one weight-gradient GEMM (for ops outside this module).
pub(crate) fn count_weight_grad() {
    WEIGHT_GRADS.fetch_add(1, Ordering::Relaxed);
}

/// How many weight-gradient GEMMs the linear op has run since the process started. Tests use it
/// to prove that frozen weights get no gradient computed.
pub fn weight_grad_count() -> usize {
    WEIGHT_GRADS.load(Ordering::Relaxed)
}

/// `y = x · Wᵀ + b`, multiplying in the precision of the thread that built it.
struct Linear(MatmulPrecision);

fn dims(x: &Layout, w: &Layout) -> Result<(usize, usize, usize, Shape)> {
    let wd = w.dims();
    if wd.len() != 2 {
        candle_core::bail!("linear: weight must be 2-d, got {:?}", wd);
    }
    let (out, inp) = (wd[0], wd[1]);
    let xd = x.dims();
    if xd.last() != Some(&inp) {
        candle_core::bail!("linear: input {:?} does not end with in_features {inp}", xd);
    }
    let m = x.shape().elem_count() / inp.max(1);
    let mut od = xd.to_vec();
    *od.last_mut().expect("non-empty dims") = out;
    Ok((m, out, inp, Shape::from(od)))
}

#[allow(clippy::too_many_arguments)]
fn forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    out: usize,
    inp: usize,
    p: MatmulPrecision,
) -> Vec<f32> {
    let Some(b) = b else {
        return gemm_new(
            m,
            out,
            inp,
            MatRef::row_major(x, inp).at(p),
            MatRef::transposed(w, inp).at(p),
        );
    };
    // The bias is added in the GEMM's first store (no separate pass).
    linear_new(
        m,
        out,
        inp,
        MatRef::row_major(x, inp).at(p),
        MatRef::transposed(w, inp).at(p),
        b,
        false,
    )
}

/// Gradients of x, w and b for `y = x Wᵀ + b`, each only when `need_*` is set.
fn backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    need: (bool, bool, bool),
    p: MatmulPrecision,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (out, inp) = w.dims2()?;
    let m = dy.elem_count() / out;
    let dy = dy.contiguous()?;
    let dev = x.device();
    let dx = if need.0 {
        let v = with_f32(&dy, "linear.backward", |g| {
            with_f32(w, "linear.backward", |wv| {
                gemm_new(
                    m,
                    inp,
                    out,
                    MatRef::row_major(g, out).at(p),
                    MatRef::row_major(wv, inp).at(p),
                )
            })
        })??;
        Some(Tensor::from_vec(v, x.shape(), dev)?)
    } else {
        None
    };
    let dw = if need.1 {
        WEIGHT_GRADS.fetch_add(1, Ordering::Relaxed);
        let v = with_f32(&dy, "linear.backward", |g| {
            with_f32(x, "linear.backward", |xv| {
                gemm_new(
                    out,
                    inp,
                    m,
                    MatRef::transposed(g, out).at(p),
                    MatRef::row_major(xv, inp).at(p),
                )
            })
        })??;
        Some(Tensor::from_vec(v, (out, inp), dev)?)
    } else {
        None
    };
    let db = if need.2 {
        let v = with_f32(&dy, "linear.backward", |g| column_sums(g, out))?;
        Some(Tensor::from_vec(v, out, dev)?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "prefine-linear"
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
        let (m, out, inp, shape) = dims(l1, l2)?;
        let x = f32_slice(s1, l1, "linear")?;
        let w = f32_slice(s2, l2, "linear")?;
        let b = f32_slice(s3, l3, "linear")?;
        if b.len() != out {
            candle_core::bail!("linear: bias has {} elements, expected {out}", b.len());
        }
        Ok((
            CpuStorage::F32(forward(x, w, Some(b), m, out, inp, self.0)),
            shape,
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        backward(x, w, dy, (x.track_op(), w.track_op(), b.track_op()), self.0)
    }
}

/// `y = x · Wᵀ`, multiplying in the precision of the thread that built it.
struct LinearNoBias(MatmulPrecision);

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "prefine-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, out, inp, shape) = dims(l1, l2)?;
        let x = f32_slice(s1, l1, "linear")?;
        let w = f32_slice(s2, l2, "linear")?;
        Ok((
            CpuStorage::F32(forward(x, w, None, m, out, inp, self.0)),
            shape,
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(x, w, dy, (x.track_op(), w.track_op(), false), self.0)?;
        Ok((dx, dw))
    }
}

/// `x · Wᵀ + b` for `x: [..., in]`, `w: [out, in]`, `b: [out]` (PyTorch `nn.Linear`).
/// Gradients flow only to inputs that track them.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3_arc(
        &w.contiguous()?,
        &b.contiguous()?,
        std::sync::Arc::new(Box::new(Linear(matmul_precision()))),
    )
}

/// `x · Wᵀ` for `x: [..., in]`, `w: [out, in]`.
pub fn linear_no_bias(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, LinearNoBias(matmul_precision()))
}

/// A frozen linear weight `W[out, in]` packed once in the two layouts training multiplies it
/// in: `Wᵀ` for the forward pass `x · Wᵀ`, and `W` for the input gradient `dy · W`. Training
/// with a frozen base (LoRA, linear probes) otherwise repacks every frozen weight twice per step.
pub struct FrozenPacks {
    forward: PackedF32Matrix,
    backward: PackedF32Matrix,
    /// `[in]` zeros: the input gradient has no bias.
    zeros: Vec<f32>,
}

impl std::fmt::Debug for FrozenPacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenPacks")
            .field("dims", &self.dims())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl FrozenPacks {
    /// Packs a row-major `w[out, in]`.
    pub fn pack(w: &Tensor) -> Result<Self> {
        let (out, inp) = w.dims2()?;
        with_f32(w, "FrozenPacks", |wv| {
            let wt = transpose(wv, out, inp);
            Self {
                forward: PackedF32Matrix::from_f32(wv, out, inp),
                backward: PackedF32Matrix::from_f32(&wt, inp, out),
                zeros: vec![0.0; inp],
            }
        })
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        self.forward.dims()
    }

    /// Bytes held by both layouts.
    pub fn bytes(&self) -> usize {
        self.forward.bytes() + self.backward.bytes()
    }
}

/// `y = x · Wᵀ + b` for a frozen, prepacked `W` and a frozen `b`: only `x` gets a gradient.
struct FrozenPackedLinear {
    packs: std::sync::Arc<FrozenPacks>,
    bias: Tensor,
}

impl candle_core::CustomOp1 for FrozenPackedLinear {
    fn name(&self) -> &'static str {
        "prefine-frozen-packed-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, inp) = self.packs.dims();
        let x = f32_slice(s, l, "frozen_packed_linear")?;
        if l.dims().last() != Some(&inp) {
            candle_core::bail!(
                "frozen_packed_linear: input {:?} does not end with in_features {inp}",
                l.dims()
            );
        }
        let m = x.len() / inp.max(1);
        let y = with_f32(&self.bias, "frozen_packed_linear", |b| {
            packed_linear(x, m, &self.packs.forward, b, false)
        })?;
        let mut od = l.dims().to_vec();
        *od.last_mut().expect("non-empty dims") = out;
        Ok((CpuStorage::F32(y), Shape::from(od)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (out, _) = self.packs.dims();
        let m = dy.elem_count() / out.max(1);
        let dy = dy.contiguous()?;
        let dx = with_f32(&dy, "frozen_packed_linear.backward", |g| {
            packed_linear(g, m, &self.packs.backward, &self.packs.zeros, false)
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `x · Wᵀ + b` with `W` frozen and prepacked ([`FrozenPacks`]) and `b` frozen: the forward
/// pass and the input gradient multiply the packed panels directly. f32 products only (the
/// caller falls back to [`linear`] under bf16 autocast).
pub fn frozen_packed_linear(
    x: &Tensor,
    packs: std::sync::Arc<FrozenPacks>,
    bias: &Tensor,
) -> Result<Tensor> {
    let (out, _) = packs.dims();
    if bias.elem_count() != out {
        candle_core::bail!(
            "frozen_packed_linear: bias has {} elements, expected {out}",
            bias.elem_count()
        );
    }
    x.contiguous()?.apply_op1(FrozenPackedLinear {
        packs,
        bias: bias.detach().contiguous()?,
    })
}
