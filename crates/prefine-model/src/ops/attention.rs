//! Multi-head scaled dot-product attention as one op over `[batch, seq, hidden]` projections:
//! no head transposes are materialised (each head is a strided view), the key-padding mask,
//! scaling, softmax and attention-probability dropout are fused, and the backward pass reuses
//! the probabilities saved by the forward pass.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rand::Rng;
use rayon::prelude::*;

use prefine_kernels::cpu::{with_buffer, MatRef};
use prefine_kernels::fast_math::{dot as fdot, masked_exp_sum, masked_max};
use prefine_kernels::gemm::{gemm_into_strided, SharedMut};

use super::autocast::{matmul_precision, AtPrecision, MatmulPrecision};
use super::{f32_slice, with_f32};

struct Attention {
    heads: usize,
    scale: f32,
    /// `[batch, key]`, 1 for real tokens.
    key_mask: Vec<f32>,
    /// Sliding-window attention: a query sees the keys at most this far from it (both sides).
    window: Option<usize>,
    /// `[batch, heads, query, key]` inverted-dropout factors, when training with dropout.
    dropout: Option<Vec<f32>>,
    /// Whether to keep the probabilities for the backward pass.
    keep_probs: bool,
    /// The precision of the score and context products (forward and backward).
    precision: MatmulPrecision,
    probs: Mutex<Option<Vec<f32>>>,
}

fn check(l: &Layout, what: &str) -> Result<(usize, usize, usize)> {
    match l.dims() {
        [b, s, h] => Ok((*b, *s, *h)),
        d => candle_core::bail!("attention: {what} must be [batch, seq, hidden], got {d:?}"),
    }
}

impl Attention {
    /// Softmax of one head's scores in place, masked and scaled.
    fn softmax_rows(&self, scores: &mut [f32], key_mask: &[f32], s: usize) {
        let scale = self.scale;
        // max(x · scale) = max(x) · scale for scale > 0 (rounding is monotone).
        debug_assert!(scale > 0.0, "attention scale must be positive");
        // With a window, row i masks the keys farther than `w` from i as well.
        let mut windowed = match self.window {
            Some(_) => vec![0f32; s],
            None => Vec::new(),
        };
        for (i, row) in scores.chunks_exact_mut(s).enumerate() {
            let mask = match self.window {
                Some(w) => {
                    let (lo, hi) = (i.saturating_sub(w), (i + w + 1).min(s));
                    windowed.fill(0.0);
                    windowed[lo..hi].copy_from_slice(&key_mask[lo..hi]);
                    &windowed[..]
                }
                None => key_mask,
            };
            let max = masked_max(row, mask) * scale;
            if max == f32::NEG_INFINITY {
                row.fill(1.0 / s as f32);
                continue;
            }
            let inv = 1.0 / masked_exp_sum(row, mask, scale, max);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

thread_local! {
    /// Per-thread scratch for one head's `[seq, seq]` scores at inference, and for one head's
    /// score gradient in the backward pass.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst = a · b` for one head: an `[s, dh]` product (inner dimension `s`) written, in overwrite
/// mode, into that head's column block of a `[batch, seq, hidden]` output (row stride `h`).
///
/// # Safety
/// `dst` must be valid for `s` rows of `dh` elements at stride `h`, written by no other task.
unsafe fn head_block_gemm(s: usize, dh: usize, h: usize, dst: *mut f32, a: MatRef, b: MatRef) {
    gemm_into_strided(s, dh, s, dst, h as isize, false, a, b)
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "prefine-attention"
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
        let (b, s, h) = check(l1, "query")?;
        if check(l2, "key")? != (b, s, h) || check(l3, "value")? != (b, s, h) {
            candle_core::bail!("attention: query, key and value shapes differ");
        }
        if h % self.heads != 0 || self.key_mask.len() != b * s {
            candle_core::bail!("attention: bad head count or mask size");
        }
        let (q, k, v) = (
            f32_slice(s1, l1, "attention")?,
            f32_slice(s2, l2, "attention")?,
            f32_slice(s3, l3, "attention")?,
        );
        let nh = self.heads;
        let dh = h / nh;
        let prec = self.precision;
        // Every element of `ctx` is written by exactly one (batch, head) task's GEMM (in
        // overwrite mode), so it is never zero-filled first.
        let n = b * s * h;
        let mut ctx: Vec<f32> = Vec::with_capacity(n);
        // Probabilities are kept only when a backward pass will need them; like `ctx`, each
        // [s, s] block is written by its head's score GEMM (overwrite mode), never zero-filled.
        let mut probs: Vec<f32> = if self.keep_probs {
            Vec::with_capacity(b * nh * s * s)
        } else {
            Vec::new()
        };
        let out = SharedMut(ctx.as_mut_ptr());
        let probs_ptr = SharedMut(probs.as_mut_ptr());
        // `scores` points at this task's own [s, s] block (of `probs` or of a scratch buffer).
        let head = |bh: usize, scores: *mut f32| {
            let (bi, hi) = (bh / nh, bh % nh);
            let base = bi * s * h + hi * dh;
            let qm = MatRef::strided(&q[base..], h as isize, 1).at(prec);
            let kt = MatRef::strided(&k[base..], 1, h as isize).at(prec);
            // SAFETY: `scores` is valid for s x s elements owned by this task; the GEMM writes
            // every one of them before the slice below reads them.
            let p = unsafe {
                gemm_into_strided(s, s, dh, scores, s as isize, false, qm, kt);
                std::slice::from_raw_parts_mut(scores, s * s)
            };
            self.softmax_rows(p, &self.key_mask[bi * s..(bi + 1) * s], s);
            let dropped;
            let pv: &[f32] = match &self.dropout {
                Some(d) => {
                    dropped = p
                        .iter()
                        .zip(&d[bh * s * s..(bh + 1) * s * s])
                        .map(|(a, m)| a * m)
                        .collect::<Vec<_>>();
                    &dropped
                }
                None => p,
            };
            let vm = MatRef::strided(&v[base..], h as isize, 1).at(prec);
            // SAFETY: each (batch, head) task writes its own column block of `ctx`.
            unsafe {
                head_block_gemm(
                    s,
                    dh,
                    h,
                    out.get().add(base),
                    MatRef::row_major(pv, s).at(prec),
                    vm,
                )
            };
        };
        (0..b * nh).into_par_iter().for_each(|bh| {
            if self.keep_probs {
                // SAFETY: each task owns the [s, s] block `bh` of `probs` (within capacity).
                head(bh, unsafe { probs_ptr.get().add(bh * s * s) });
                return;
            }
            // Inference: the scores live in this thread's reused scratch (the GEMM overwrites
            // it); a nested call on a busy thread gets a buffer of its own.
            with_buffer(&SCORES, s * s, |p| head(bh, p.as_mut_ptr()));
        });
        // SAFETY: the (batch, head) blocks written above cover all n elements of `ctx` (and,
        // when kept, all b * nh * s * s elements of `probs`).
        unsafe { ctx.set_len(n) };
        if self.keep_probs {
            // SAFETY: the (batch, head) tasks above wrote every [s, s] block of `probs`.
            unsafe { probs.set_len(b * nh * s * s) };
            *self.probs.lock().expect("not poisoned") = Some(probs);
        }
        Ok((CpuStorage::F32(ctx), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        dctx: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, s, h) = q.dims3()?;
        let nh = self.heads;
        let dh = h / nh;
        let probs = self.probs.lock().expect("not poisoned").take();
        let Some(probs) = probs else {
            candle_core::bail!(
                "attention: backward without saved probabilities (forward ran without gradients)"
            )
        };
        // Every element of dq, dk and dv is written by exactly one (batch, head) task's GEMM
        // (overwrite mode), as `ctx` in the forward pass: no zero fill.
        let n = b * s * h;
        let (mut dq, mut dk, mut dv): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (pq, pk, pv) = (
            SharedMut(dq.as_mut_ptr()),
            SharedMut(dk.as_mut_ptr()),
            SharedMut(dv.as_mut_ptr()),
        );
        let scale = self.scale;
        let prec = self.precision;
        with_f32(q, "attention.backward", |qv| {
            with_f32(k, "attention.backward", |kv| {
                with_f32(v, "attention.backward", |vv| {
                    with_f32(dctx, "attention.backward", |g| {
                        (0..b * nh).into_par_iter().for_each(|bh| {
                            let (bi, hi) = (bh / nh, bh % nh);
                            let base = bi * s * h + hi * dh;
                            let p = &probs[bh * s * s..(bh + 1) * s * s];
                            let drop = self
                                .dropout
                                .as_ref()
                                .map(|d| &d[bh * s * s..(bh + 1) * s * s]);
                            let gm = MatRef::strided(&g[base..], h as isize, 1).at(prec);
                            // dP = dctx · Vᵀ, in this thread's reused scratch (overwritten).
                            with_buffer(&SCORES, s * s, |dp| {
                                let vt = MatRef::strided(&vv[base..], 1, h as isize).at(prec);
                                // SAFETY: `dp` is this task's s x s buffer.
                                unsafe {
                                    gemm_into_strided(
                                        s,
                                        s,
                                        dh,
                                        dp.as_mut_ptr(),
                                        s as isize,
                                        false,
                                        gm,
                                        vt,
                                    )
                                };
                                // dV = (P∘M)ᵀ · dctx
                                let dropped: Vec<f32>;
                                let pm: &[f32] = match drop {
                                    Some(d) => {
                                        dropped = p.iter().zip(d).map(|(a, m)| a * m).collect();
                                        &dropped
                                    }
                                    None => p,
                                };
                                // SAFETY: each task writes its own column block of dq, dk, dv.
                                unsafe {
                                    head_block_gemm(
                                        s,
                                        dh,
                                        h,
                                        pv.get().add(base),
                                        MatRef::transposed(pm, s).at(prec),
                                        gm,
                                    )
                                };
                                if let Some(d) = drop {
                                    dp.iter_mut().zip(d).for_each(|(x, m)| *x *= m);
                                }
                                // dS = scale · P ∘ (dP − rowsum(dP ∘ P))
                                for (dr, pr) in dp.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                                    let dot = fdot(dr, pr);
                                    dr.iter_mut()
                                        .zip(pr)
                                        .for_each(|(x, pp)| *x = scale * pp * (*x - dot));
                                }
                                let km = MatRef::strided(&kv[base..], h as isize, 1).at(prec);
                                let qm = MatRef::strided(&qv[base..], h as isize, 1).at(prec);
                                // SAFETY: each task writes its own column block of dq and dk.
                                unsafe {
                                    // dQ = dS · K ; dK = dSᵀ · Q
                                    head_block_gemm(
                                        s,
                                        dh,
                                        h,
                                        pq.get().add(base),
                                        MatRef::row_major(dp, s).at(prec),
                                        km,
                                    );
                                    head_block_gemm(
                                        s,
                                        dh,
                                        h,
                                        pk.get().add(base),
                                        MatRef::transposed(dp, s).at(prec),
                                        qm,
                                    );
                                }
                            });
                        });
                    })
                })
            })
        })????;
        // SAFETY: the (batch, head) column blocks written above cover all n elements of each.
        unsafe {
            dq.set_len(n);
            dk.set_len(n);
            dv.set_len(n);
        }
        let dev = q.device();
        let mk = |t: &Tensor, d: Vec<f32>| -> Result<Option<Tensor>> {
            Ok(if t.track_op() {
                Some(Tensor::from_vec(d, (b, s, h), dev)?)
            } else {
                None
            })
        };
        Ok((mk(q, dq)?, mk(k, dk)?, mk(v, dv)?))
    }
}

/// `softmax(scale · Q Kᵀ + mask) V` for every head, with `q`, `k`, `v` as `[batch, seq, hidden]`
/// (heads are contiguous blocks of `hidden`, as in BERT) and `key_mask` `[batch, seq]` (1 = real
/// token). With `dropout = Some((p, rng))`, attention probabilities are dropped (training).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Tensor,
    heads: usize,
    scale: f64,
    dropout: Option<(f64, &mut dyn rand::RngCore)>,
) -> Result<Tensor> {
    windowed_attention(q, k, v, key_mask, None, heads, scale, dropout)
}

/// [`attention`] where, with `window = Some(w)`, query `i` sees only the keys `j` with
/// `|i - j| <= w` (bidirectional sliding-window attention, as in ModernBERT's local layers).
/// The backward pass needs nothing more: the masked probabilities are exact zeros.
#[allow(clippy::too_many_arguments)]
pub fn windowed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Tensor,
    window: Option<usize>,
    heads: usize,
    scale: f64,
    dropout: Option<(f64, &mut dyn rand::RngCore)>,
) -> Result<Tensor> {
    let (b, s, _) = q.dims3()?;
    let mask: Vec<f32> = key_mask
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let dropout = match dropout {
        Some((p, rng)) if p > 0.0 => {
            let keep = (1.0 / (1.0 - p)) as f32;
            let n = b * heads * s * s;
            Some(
                (0..n)
                    .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
                    .collect(),
            )
        }
        _ => None,
    };
    let op = Attention {
        heads,
        scale: scale as f32,
        key_mask: mask,
        window,
        dropout,
        keep_probs: q.track_op() || k.track_op() || v.track_op(),
        precision: matmul_precision(),
        probs: Mutex::new(None),
    };
    q.contiguous()?.apply_op3_arc(
        &k.contiguous()?,
        &v.contiguous()?,
        std::sync::Arc::new(Box::new(op)),
    )
}
