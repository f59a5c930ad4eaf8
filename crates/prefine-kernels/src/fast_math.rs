//! Vectorised element-wise math over slices (GELU and its gradient, masked softmax numerators,
//! sums, dot products), on the selected [`Isa`]: AVX-512 here, AVX2+FMA and NEON in
//! [`crate::arch`], the scalar functions of [`crate::math`] elsewhere. The GELU kernels give the
//! bits of [`gelu`] on every family; `exp` is within its accuracy (not always its last bit).

use crate::cpu::Isa;
pub use crate::math::{erf, exp, gelu, gelu_grad};
#[cfg(target_arch = "x86_64")]
use crate::math::{GELU_LIMIT, GELU_STEP, GELU_TAIL, LN2_HI, LN2_LO, LOG2E};

/// [`gelu_interval`] on 16 lanes (the same operations, so the same bits).
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gelu_interval_avx512(
    a: std::arch::x86_64::__m512,
) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    let s = _mm512_min_ps(
        _mm512_mul_ps(a, _mm512_set1_ps(1.0 / GELU_STEP)),
        _mm512_set1_ps(15.0),
    );
    let i = _mm512_cvttps_epi32(s);
    let u = _mm512_sub_ps(
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(-GELU_STEP), a),
        _mm512_set1_ps(0.5 * GELU_STEP),
    );
    (i, u)
}

/// [`gelu`] on 16 lanes.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn gelu_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        use std::arch::x86_64::*;
        let a = _mm512_abs_ps(x);
        let (i, u) = gelu_interval_avx512(a);
        let coef = |d: usize| _mm512_permutexvar_ps(i, _mm512_loadu_ps(GELU_TAIL[d].as_ptr()));
        let mut p = coef(7);
        for d in (0..7).rev() {
            p = _mm512_fmadd_ps(p, u, coef(d));
        }
        let tail = _mm512_maskz_mov_ps(
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(GELU_LIMIT)),
            p,
        );
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        let phi = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.0), tail), negative, tail);
        _mm512_mul_ps(x, phi)
    }
}

/// [`gelu_grad`] on 16 lanes.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gelu_grad_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        use std::arch::x86_64::*;
        let a = _mm512_abs_ps(x);
        let (i, u) = gelu_interval_avx512(a);
        let coef = |d: usize| _mm512_permutexvar_ps(i, _mm512_loadu_ps(GELU_TAIL[d].as_ptr()));
        let mut p = coef(7);
        let mut dp = _mm512_setzero_ps();
        for d in (0..7).rev() {
            dp = _mm512_fmadd_ps(dp, u, p);
            p = _mm512_fmadd_ps(p, u, coef(d));
        }
        let inside = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(GELU_LIMIT));
        let tail = _mm512_maskz_mov_ps(inside, p);
        let density = _mm512_maskz_mov_ps(inside, _mm512_sub_ps(_mm512_setzero_ps(), dp));
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        let cdf = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.0), tail), negative, tail);
        _mm512_fmadd_ps(x, density, cdf)
    }
}

/// `dst[j] = dy[j] · gelu'(x[j])`: the GELU backward pass over a chunk, vectorised where the
/// CPU allows (same bits as the scalar path). Every element is written, so `dst` may be
/// uninitialised.
pub fn gelu_backward_into(dst: &mut [std::mem::MaybeUninit<f32>], x: &[f32], dy: &[f32]) {
    assert!(
        x.len() == dst.len() && dy.len() == dst.len(),
        "gelu_backward_into: lengths differ"
    );
    match crate::cpu::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is selected; the lengths are equal (checked above).
        Isa::Avx512 | Isa::Avx512Bf16 => return unsafe { gelu_backward_avx512(dst, x, dy) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are selected.
        Isa::Avx2Fma { .. } => return unsafe { gelu_backward_avx2(dst, x, dy) },
        _ => {}
    }
    for ((o, &xv), &g) in dst.iter_mut().zip(x).zip(dy) {
        o.write(g * gelu_grad(xv));
    }
}

/// [`gelu_backward_into`]'s scalar loop compiled for AVX2+FMA (the same operations: the same
/// bits).
///
/// # Safety
/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_backward_avx2(dst: &mut [std::mem::MaybeUninit<f32>], x: &[f32], dy: &[f32]) {
    for ((o, &xv), &g) in dst.iter_mut().zip(x).zip(dy) {
        o.write(g * gelu_grad(xv));
    }
}

/// [`gelu_backward_into`] with AVX-512 (a `target_feature` function, so that the intrinsics
/// inline: called from a plain function, each one is an out-of-line call).
///
/// # Safety
/// AVX-512F; `dst`, `x` and `dy` have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_backward_avx512(dst: &mut [std::mem::MaybeUninit<f32>], x: &[f32], dy: &[f32]) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        use std::arch::x86_64::*;
        let n = dst.len();
        let (d, xp, gp) = (dst.as_mut_ptr().cast::<f32>(), x.as_ptr(), dy.as_ptr());
        let mut j = 0;
        while j + 16 <= n {
            let g = _mm512_mul_ps(
                _mm512_loadu_ps(gp.add(j)),
                gelu_grad_avx512(_mm512_loadu_ps(xp.add(j))),
            );
            _mm512_storeu_ps(d.add(j), g);
            j += 16;
        }
        if j < n {
            let m: __mmask16 = (1u16 << (n - j)) - 1;
            let g = _mm512_mul_ps(
                _mm512_maskz_loadu_ps(m, gp.add(j)),
                gelu_grad_avx512(_mm512_maskz_loadu_ps(m, xp.add(j))),
            );
            _mm512_mask_storeu_ps(d.add(j), m, g);
        }
    }
}

/// Exact GELU in place over `x`, vectorised where the CPU allows (the activation of a linear
/// layer fused into its output pass).
pub fn gelu_in_place(x: &mut [f32]) {
    gelu_in_place_on(crate::cpu::isa(), x);
}

/// [`gelu_in_place`] on `isa` (which must run on this CPU: callers pass the family they read
/// from [`crate::cpu::isa`]).
pub(crate) fn gelu_in_place_on(isa: Isa, x: &mut [f32]) {
    let (dst, src, n) = (x.as_mut_ptr(), x.as_ptr(), x.len());
    // SAFETY: `src` and `dst` are the same `n` values of `x`; every row kernel allows that.
    unsafe { gelu_row(isa, dst, src, n) }
}

/// `dst[j] = gelu(src[j])` for `j < n` on `isa` (`dst` may be `src`).
///
/// # Safety
/// `isa` runs on this CPU; `src` valid for `n` reads and `dst` for `n` writes.
unsafe fn gelu_row(isa: Isa, dst: *mut f32, src: *const f32, n: usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F selected; the pointers are this function's.
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { gelu_row_avx512(dst, src, n) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA selected; the pointers are this function's.
        Isa::Avx2Fma { .. } => unsafe { crate::arch::avx2::gelu_row(dst, src, n) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON selected; the pointers are this function's.
        Isa::Neon { .. } => unsafe { crate::arch::neon::gelu_row(dst, src, n) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        // SAFETY: SIMD128 selected; the pointers are this function's.
        Isa::Simd128 => unsafe { crate::arch::wasm::gelu_row(dst, src, n) },
        _ => {
            for j in 0..n {
                // SAFETY: `j < n`; each value is read before its own slot is written.
                unsafe { *dst.add(j) = gelu(*src.add(j)) };
            }
        }
    }
}

/// `dst[j] = gelu(src[j])` for `j < n`, 16 lanes at a time (masked tail); `dst` may be `src`.
///
/// # Safety
/// AVX-512F; `src` valid for `n` reads and `dst` for `n` writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_row_avx512(dst: *mut f32, src: *const f32, n: usize) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        use std::arch::x86_64::*;
        let mut j = 0;
        while j + 16 <= n {
            _mm512_storeu_ps(dst.add(j), gelu_avx512(_mm512_loadu_ps(src.add(j))));
            j += 16;
        }
        if j < n {
            let m: __mmask16 = ((1u32 << (n - j)) - 1) as u16;
            let v = gelu_avx512(_mm512_maskz_loadu_ps(m, src.add(j)));
            _mm512_mask_storeu_ps(dst.add(j), m, v);
        }
    }
}

/// Exact GELU in place over an `mr x nr` tile at row stride `ldc`, for GEMM kernels (AVX-512
/// code: the tile was just written and is still in L1).
///
/// # Safety
/// AVX-512F must be available; `c` must be valid for `mr` rows of `nr` elements at stride
/// `ldc`, accessed by no one else during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gelu_tile_avx512(c: *mut f32, ldc: usize, mr: usize, nr: usize) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        for i in 0..mr {
            let row = c.add(i * ldc);
            gelu_row_avx512(row, row, nr);
        }
    }
}

/// `dst[j] = gelu(src[j])` into uninitialised storage (every element is written), 16 lanes at a
/// time where the CPU has AVX-512F.
pub fn gelu_into_uninit(dst: &mut [std::mem::MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "gelu_into_uninit: lengths differ");
    // SAFETY: both slices hold `src.len()` elements; the kernels write every one of `dst`.
    unsafe {
        gelu_row(
            crate::cpu::isa(),
            dst.as_mut_ptr().cast::<f32>(),
            src.as_ptr(),
            src.len(),
        )
    };
}

/// Applies `f` element-wise from `src` into the uninitialised `dst` (every element of `dst` is
/// written; `dst` and `src` have the same length), compiled for AVX-512 or AVX2+FMA when the
/// CPU has it.
pub fn map_into_uninit(
    dst: &mut [std::mem::MaybeUninit<f32>],
    src: &[f32],
    f: impl Fn(f32) -> f32 + Copy,
) {
    assert_eq!(dst.len(), src.len(), "map_into_uninit: lengths differ");
    match crate::cpu::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F selected.
        Isa::Avx512 | Isa::Avx512Bf16 => return unsafe { map_into_uninit_avx512(dst, src, f) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA selected.
        Isa::Avx2Fma { .. } => return unsafe { map_into_uninit_avx2(dst, src, f) },
        _ => {}
    }
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(f(*s));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_into_uninit_avx2(
    dst: &mut [std::mem::MaybeUninit<f32>],
    src: &[f32],
    f: impl Fn(f32) -> f32 + Copy,
) {
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(f(*s));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map_into_uninit_avx512(
    dst: &mut [std::mem::MaybeUninit<f32>],
    src: &[f32],
    f: impl Fn(f32) -> f32 + Copy,
) {
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(f(*s));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn zip_map_into_avx512(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(*x, *y);
    }
}

/// `dst[i] = f(a[i], b[i])`, compiled for AVX2+FMA when available.
#[inline(always)]
pub fn zip_map_into(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Copy) {
    match crate::cpu::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F selected.
        Isa::Avx512 | Isa::Avx512Bf16 => return unsafe { zip_map_into_avx512(dst, a, b, f) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA selected.
        Isa::Avx2Fma { .. } => return unsafe { zip_map_into_avx2(dst, a, b, f) },
        _ => {}
    }
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(*x, *y);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn zip_map_into_avx2(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(*x, *y);
    }
}

/// Softmax numerators of one masked row in place, returning their sum: `row[j] =
/// exp(row[j] * scale - max) * mask[j]` where `mask[j] > 0.5`, else `exp(-100) * mask[j]` (so
/// a padded key gets exactly 0 for a 0 mask). One pass, AVX-512 when the CPU has it (range
/// reduction with round-to-nearest-even, `scalef` for the power of two: within the accuracy of
/// [`exp`], not always its last bit).
pub fn masked_exp_sum(row: &mut [f32], mask: &[f32], scale: f32, max: f32) -> f32 {
    assert_eq!(row.len(), mask.len(), "masked_exp_sum: lengths differ");
    match crate::cpu::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F selected; both slices have `row.len()` elements.
        Isa::Avx512 | Isa::Avx512Bf16 => {
            // SAFETY: the selected family runs on this CPU (`cpu::isa`), and the operands meet the callee's contract (this function's).
            return unsafe { masked_exp_sum_avx512(row, mask, scale, max) };
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA selected; both slices have `row.len()` elements.
        Isa::Avx2Fma { .. } => {
            // SAFETY: AVX2 and FMA selected; both slices have `row.len()` elements.
            return unsafe { crate::arch::avx2::masked_exp_sum(row, mask, scale, max) };
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON selected; both slices have `row.len()` elements.
        Isa::Neon { .. } => {
            // SAFETY: the selected family runs on this CPU (`cpu::isa`), and the operands meet the callee's contract (this function's).
            return unsafe { crate::arch::neon::masked_exp_sum(row, mask, scale, max) };
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        // SAFETY: SIMD128 selected; both slices have `row.len()` elements.
        Isa::Simd128 => {
            // SAFETY: the selected family runs on this CPU (`cpu::isa`), and the operands meet the callee's contract (this function's).
            return unsafe { crate::arch::wasm::masked_exp_sum(row, mask, scale, max) };
        }
        _ => {}
    }
    let mut total = 0.0;
    for (x, &m) in row.iter_mut().zip(mask) {
        let z = if m > 0.5 { *x * scale - max } else { -100.0 };
        *x = exp(z) * m;
        total += *x;
    }
    total
}

/// `exp` on 16 lanes (the polynomial of [`exp`]; round-to-nearest-even reduction and `scalef`).
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.3)),
        _mm512_set1_ps(88.3),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in crate::math::EXP_POLY {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    _mm512_scalef_ps(p, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn masked_exp_sum_avx512(row: &mut [f32], mask: &[f32], scale: f32, max: f32) -> f32 {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        use std::arch::x86_64::*;
        let (vscale, vmax, half) = (
            _mm512_set1_ps(scale),
            _mm512_set1_ps(max),
            _mm512_set1_ps(0.5),
        );
        let floor = _mm512_set1_ps(-100.0);
        let mut acc = _mm512_setzero_ps();
        let n = row.len();
        let mut j = 0;
        while j < n {
            let lanes: __mmask16 = if n - j >= 16 {
                0xFFFF
            } else {
                ((1u32 << (n - j)) - 1) as u16
            };
            let x = _mm512_maskz_loadu_ps(lanes, row.as_ptr().add(j));
            let m = _mm512_maskz_loadu_ps(lanes, mask.as_ptr().add(j));
            let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, half);
            let z = _mm512_mask_blend_ps(keep, floor, _mm512_fmsub_ps(x, vscale, vmax));
            let e = _mm512_mul_ps(exp_avx512(z), m);
            _mm512_mask_storeu_ps(row.as_mut_ptr().add(j), lanes, e);
            acc = _mm512_add_ps(acc, e);
            j += 16;
        }
        _mm512_reduce_add_ps(acc)
    }
}

/// Sum with 16 independent lanes (vectorisable; f32 addition order differs from a sequential
/// sum by rounding only).
#[inline(always)]
pub fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// The largest `v[i]` whose `mask[i] > 0.5` (`-inf` when there is none; NaN values are
/// skipped, as `f32::max` does), with 16 lanes and no branches (vectorised, AVX-512 when
/// available).
#[inline(always)]
pub fn masked_max(v: &[f32], mask: &[f32]) -> f32 {
    match crate::cpu::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F selected.
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { masked_max_avx512(v, mask) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA selected.
        Isa::Avx2Fma { .. } => unsafe { masked_max_avx2(v, mask) },
        _ => masked_max_lanes(v, mask),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn masked_max_avx512(v: &[f32], mask: &[f32]) -> f32 {
    masked_max_lanes(v, mask)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn masked_max_avx2(v: &[f32], mask: &[f32]) -> f32 {
    masked_max_lanes(v, mask)
}

#[inline(always)]
fn masked_max_lanes(v: &[f32], mask: &[f32]) -> f32 {
    let n = v.len().min(mask.len());
    let (v, mask) = (&v[..n], &mask[..n]);
    let pick = |acc: f32, x: f32, m: f32| {
        let y = if m > 0.5 { x } else { f32::NEG_INFINITY };
        if y > acc {
            y
        } else {
            acc
        }
    };
    let mut acc = [f32::NEG_INFINITY; 16];
    let (cv, cm) = (v.chunks_exact(16), mask.chunks_exact(16));
    let (rv, rm) = (cv.remainder(), cm.remainder());
    for (x, m) in cv.zip(cm) {
        for i in 0..16 {
            acc[i] = pick(acc[i], x[i], m[i]);
        }
    }
    let mut best = acc.iter().fold(f32::NEG_INFINITY, |a, &b| pick(a, b, 1.0));
    for (x, m) in rv.iter().zip(rm) {
        best = pick(best, *x, *m);
    }
    best
}

/// Dot product with 16 lanes.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_max_matches_a_scalar_scan() {
        crate::cpu::for_each_isa(|| {
            for n in [0usize, 1, 15, 16, 17, 40, 128] {
                let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
                for pattern in [0usize, 1, 3, 7] {
                    let mask: Vec<f32> = (0..n)
                        .map(|i| {
                            if pattern == 0 || i % pattern != 0 {
                                1.0
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let want = v
                        .iter()
                        .zip(&mask)
                        .filter(|(_, m)| **m > 0.5)
                        .fold(f32::NEG_INFINITY, |a, (x, _)| a.max(*x));
                    assert_eq!(masked_max(&v, &mask), want, "n={n} pattern={pattern}");
                }
            }
            let mut with_nan = vec![1.0f32; 20];
            with_nan[3] = f32::NAN;
            with_nan[18] = 5.0;
            assert_eq!(masked_max(&with_nan, &[1.0; 20]), 5.0);
            assert_eq!(masked_max(&[3.0, 9.0], &[0.0, 0.0]), f32::NEG_INFINITY);
        });
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.01;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn masked_exp_sum_matches_the_scalar_definition() {
        crate::cpu::for_each_isa(|| {
            for n in [1usize, 15, 16, 17, 64, 128, 131] {
                let row: Vec<f32> = (0..n)
                    .map(|j| ((j * 37 % 23) as f32 - 11.0) * 0.9)
                    .collect();
                let mask: Vec<f32> = (0..n).map(|j| if j % 5 == 3 { 0.0 } else { 1.0 }).collect();
                let (scale, max) = (0.3f32, 2.97f32);
                let mut got = row.clone();
                let sum = masked_exp_sum(&mut got, &mask, scale, max);
                let mut want_sum = 0f64;
                for j in 0..n {
                    let z = row[j] as f64 * scale as f64 - max as f64;
                    let want = if mask[j] > 0.5 { z.exp() } else { 0.0 };
                    want_sum += want;
                    // exp's own 3e-7, plus the f32 rounding of its argument (half an ulp of z).
                    let bound = (3e-7 + 6e-8 * z.abs()) * want;
                    assert!(
                        (got[j] as f64 - want).abs() <= bound,
                        "n={n} j={j}: {} vs {want}",
                        got[j]
                    );
                    if mask[j] == 0.0 {
                        assert_eq!(got[j], 0.0);
                    }
                }
                assert!(
                    (sum as f64 - want_sum).abs() <= 1e-6 * want_sum,
                    "n={n}: {sum} vs {want_sum}"
                );
            }
        });
    }

    #[test]
    fn vector_gelu_equals_the_scalar_one_bit_for_bit_and_is_accurate() {
        crate::cpu::for_each_isa(|| {
            // A coarser grid under emulation (aarch64 tests run in qemu).
            let step = if cfg!(target_arch = "x86_64") { 1 } else { 7 };
            let mut xs: Vec<f32> = (-80_000..80_000)
                .step_by(step)
                .map(|i| i as f32 * 1e-4)
                .collect();
            xs.extend([
                0.0,
                -0.0,
                5.999_999,
                6.0,
                -6.0,
                7.5,
                -7.5,
                1e4,
                -1e4,
                f32::MAX,
                f32::MIN,
            ]);
            xs.extend([f32::INFINITY, f32::NEG_INFINITY, 1e-30, -1e-30]);
            let mut vec_out = vec![std::mem::MaybeUninit::uninit(); xs.len()];
            gelu_into_uninit(&mut vec_out, &xs);
            for (x, y) in xs.iter().zip(&vec_out) {
                // SAFETY: gelu_into_uninit writes every element.
                let y = unsafe { y.assume_init() };
                assert_same_gelu(y, *x);
                let exact = 0.5 * *x as f64 * (1.0 + libm_erf(*x as f64 / 2f64.sqrt()));
                if x.abs() < 6.0 && exact.abs() > 1e-30 {
                    // The deep negative tail (|GELU| < 1.5e-6 past -5) is fitted less tightly.
                    let bound = if x.abs() < 5.0 { 2.5e-7 } else { 6e-7 };
                    let rel = ((y as f64 - exact) / exact).abs();
                    assert!(
                        rel < bound,
                        "gelu({x}) = {y}, exact {exact}, relative error {rel}"
                    );
                }
            }
            let mut tile = xs.clone();
            gelu_in_place(&mut tile);
            for (t, x) in tile.iter().zip(&xs) {
                assert_same_gelu(*t, *x);
            }
        });
    }

    /// `y` is [`gelu`]`(x)` bit for bit, except on SIMD128, which multiplies and adds unfused
    /// (WebAssembly has no fused multiply-add): there within 1e-6 relative (or 1e-12).
    fn assert_same_gelu(y: f32, x: f32) {
        let want = gelu(x);
        if crate::cpu::isa() == crate::cpu::Isa::Simd128 {
            let tol = (want.abs() * 1e-6).max(1e-12);
            assert!(
                (y - want).abs() <= tol || y.to_bits() == want.to_bits(),
                "gelu({x}) = {y}, scalar {want}"
            );
        } else {
            assert_eq!(y.to_bits(), want.to_bits(), "gelu({x})");
        }
    }

    /// erf in f64 (series below 3, continued fraction above), for reference values.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut sum = x;
            let mut term = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let z = x.abs();
            let mut f = z;
            for k in (1..60).rev() {
                f = z + (k as f64 / 2.0) / f;
            }
            let erfc = (-z * z).exp() / (f * std::f64::consts::PI.sqrt());
            (1.0 - erfc) * x.signum()
        }
    }

    #[test]
    fn gelu_backward_is_accurate_and_the_vector_path_gives_the_scalar_bits() {
        crate::cpu::for_each_isa(|| {
            let mut xs: Vec<f32> = (-70_000..70_000).map(|i| i as f32 * 1e-4).collect();
            xs.extend([
                0.0, -0.0, 5.999_999, 6.0, -6.0, 7.5, -7.5, 1e4, -1e4, 1e-30, -1e-30,
            ]);
            let dy: Vec<f32> = (0..xs.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
            let mut out = vec![std::mem::MaybeUninit::new(f32::NAN); xs.len()];
            gelu_backward_into(&mut out, &xs, &dy);
            // SAFETY: every element was initialised (to NaN, then overwritten).
            let out: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
            let inv_sqrt_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
            for ((&x, &g), &o) in xs.iter().zip(&dy).zip(&out) {
                let d = gelu_grad(x);
                assert_eq!(
                    o.to_bits(),
                    (g * d).to_bits(),
                    "gelu'({x}) vector vs scalar"
                );
                let xf = x as f64;
                let exact = 0.5 * (1.0 + libm_erf(xf / 2f64.sqrt()))
                    + xf * inv_sqrt_2pi * (-0.5 * xf * xf).exp();
                assert!(
                    (d as f64 - exact).abs() < 1e-6,
                    "gelu'({x}) = {d}, exact {exact}"
                );
            }
        });
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        let erf64 = libm_erf;
        let mut x = -6.0f32;
        while x < 6.0 {
            let e = (erf(x) as f64 - erf64(x as f64)).abs();
            assert!(e < 3e-7, "erf({x}) error {e}");
            let g = 0.5 * x as f64 * (1.0 + erf64(x as f64 / 2f64.sqrt()));
            assert!((gelu(x) as f64 - g).abs() < 1e-6, "gelu({x})");
            let h = 1e-3f64;
            let gp = |x: f64| 0.5 * x * (1.0 + erf64(x / 2f64.sqrt()));
            let num = (gp(x as f64 + h) - gp(x as f64 - h)) / (2.0 * h);
            assert!((gelu_grad(x) as f64 - num).abs() < 1e-5, "gelu'({x})");
            x += 0.003;
        }
    }
}
