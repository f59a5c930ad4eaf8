//! Branch-free `exp` and `erf` that the compiler vectorises (AVX2/FMA chosen at run time), for
//! the element-wise parts of attention softmax and GELU. libm's scalar `expf`/`erff` were ~20% of
//! a training step in `perf`.
//!
//! Accuracy: `exp` within 3e-7 relative on [-87, 88] (Cephes polynomial after range reduction), `erf`
//! within 1.2e-7 absolute (Numerical Recipes' Chebyshev fit of erfc); GELU within 2.5e-7 relative
//! on |x| < 5 (6e-7 on the tiny tail to -6) through a table of per-interval polynomials (no division, no `exp`; an AVX-512
//! version permutes the table and gives the same bits); all checked in tests.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x`, saturating below -87.3 (to ~1e-38) and above 88.3 (to ~2e38).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r on [-ln2/2, ln2/2].
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 5e-1);
    let p = p.mul_add(r * r, r) + 1.0;
    // SAFETY: after the clamp, n is an integer in [-126, 127], so the conversion is exact (a
    // plain `as` would add NaN/saturation handling that blocks vectorisation).
    let n_int: i32 = unsafe { n.to_int_unchecked() };
    let bits = ((n_int + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `erf(x)`.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (0.5f32).mul_add(z, 1.0);
    let poly = t.mul_add(0.170_872_77, -0.822_152_23);
    let poly = t.mul_add(poly, 1.488_515_9);
    let poly = t.mul_add(poly, -1.135_204);
    let poly = t.mul_add(poly, 0.278_868_07);
    let poly = t.mul_add(poly, -0.186_288_06);
    let poly = t.mul_add(poly, 0.096_784_18);
    let poly = t.mul_add(poly, 0.374_091_96);
    let poly = t.mul_add(poly, 1.000_023_7);
    let poly = t.mul_add(poly, -1.265_512_2);
    let erfc = t * exp(-z * z + poly);
    let r = 1.0 - erfc;
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// Width of the intervals of [`GELU_TAIL`]'s polynomials.
const GELU_STEP: f32 = 0.375;
/// Beyond this `|x|`, `Φ(-|x|) < 1e-9` is taken as 0 (GELU then is `x` or `-0`, within 6e-9).
const GELU_LIMIT: f32 = 16.0 * GELU_STEP;

/// `Φ(-a) = erfc(a / √2) / 2` for `a` in `[0, 6)`: 16 intervals of width 0.375, a degree-7
/// polynomial each in `u = a - centre`, coefficient `d` of interval `i` at `[d][i]` (one 16-lane
/// table per degree, for a vector permute). Fitted by relative least squares on Chebyshev nodes;
/// with them GELU is within 3.8e-7 absolute of the exact one (half an ulp at 6), 2.5e-7 relative
/// on `|x| < 5` and 6e-7 on the tail to -6 (the `erf` path above: 4.5e-7 and 1.1e-5).
#[rustfmt::skip]
#[allow(clippy::approx_constant)]
const GELU_TAIL: [[f32; 16]; 8] = [
    [0.42563432, 0.2868877, 0.1742507, 0.09467574, 0.045753624, 0.01958008, 0.007394607, 0.0024579011, 7.175423e-04, 1.8366995e-04, 4.1167466e-05, 8.070944e-06, 1.3828135e-06, 2.0689703e-07, 2.7016673e-08, 3.077334e-09],
    [-0.3919909, -0.3405676, -0.2570739, -0.16859318, -0.0960615, -0.04755389, -0.020452674, -0.007642606, -0.0024811907, -6.99852e-04, -1.7150611e-04, -3.651576e-05, -6.7547367e-06, -1.0855852e-06, -1.515817e-07, -1.8388954e-08],
    [0.036749143, 0.095784634, 0.120503396, 0.11063928, 0.08105189, 0.049039952, 0.024926696, 0.010747414, 0.0039543975, 0.0012466114, 3.376527e-04, 7.873714e-05, 1.583143e-05, 2.747893e-06, 4.121142e-07, 5.3443202e-08],
    [0.06303499, 0.03880164, 0.0051883375, -0.020305814, -0.029581431, -0.025789313, -0.016844163, -0.008801936, -0.0037880177, -0.0013637095, -4.1458447e-04, -1.0709831e-04, -2.3610619e-05, -4.4560616e-06, -7.2167086e-07, -1.0047615e-07],
    [-0.009079341, -0.021420052, -0.021299658, -0.011777187, -0.0010292622, 0.005124151, 0.006109984, 0.0043976963, 0.0023595537, 0.0010067947, 3.5182675e-04, 1.0233737e-04, 2.5027472e-05, 5.180779e-06, 9.1208074e-07, 1.3704235e-07],
    [-0.009114377, -0.0034099987, 0.0032155728, 0.0061370227, 0.00478409, 0.0017544627, -4.518888e-04, -0.0011532089, -9.358882e-04, -5.12761e-04, -2.1489695e-04, -7.222397e-05, -1.9934003e-05, -4.581834e-06, -8.850125e-07, -1.445609e-07],
    [0.0014825425, 0.0031512985, 0.0023257635, 2.3482983e-04, -0.0011953794, -0.0012798653, -6.321088e-04, -4.9124526e-05, 1.8052757e-04, 1.697529e-04, 9.433004e-05, 3.851882e-05, 1.2368737e-05, 3.2229004e-06, 6.935879e-07, 1.2465823e-07],
    [0.0010343492, 1.4410318e-04, -6.9348403e-04, -7.6538714e-04, -2.7201007e-04, 1.711167e-04, 2.7101688e-04, 1.5299775e-04, 2.7045768e-05, -2.5629583e-05, -2.7012533e-05, -1.4691889e-05, -5.679775e-06, -1.6995344e-06, -4.085999e-07, -8.055831e-08],
];

/// The [`GELU_TAIL`] interval of `a = |x|` and the offset `u` from its centre.
#[inline(always)]
fn gelu_interval(a: f32) -> (usize, f32) {
    let i = (a * (1.0 / GELU_STEP)).min(15.0) as usize;
    (i, (i as f32).mul_add(-GELU_STEP, a) - 0.5 * GELU_STEP)
}

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

/// Exact (erf) GELU, `x Φ(x)`, through [`GELU_TAIL`]: no division, no `exp`. The AVX-512 path
/// ([`gelu_avx512`]) performs the same operations in the same order, so both give the same bits.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let a = x.abs();
    let (i, u) = gelu_interval(a);
    let mut p = GELU_TAIL[7][i];
    for d in (0..7).rev() {
        p = p.mul_add(u, GELU_TAIL[d][i]);
    }
    let tail = if a >= GELU_LIMIT { 0.0 } else { p };
    x * if x < 0.0 { tail } else { 1.0 - tail }
}

/// [`gelu`] on 16 lanes.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn gelu_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
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

/// Derivative of the exact GELU, `Φ(x) + x φ(x)`, through [`GELU_TAIL`]: the polynomial of
/// `Φ(-|x|)` and its derivative `-φ(x)` in one Horner pass (no division, no `exp`). The
/// AVX-512 path ([`gelu_grad_avx512`]) performs the same operations in the same order.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let a = x.abs();
    let (i, u) = gelu_interval(a);
    let mut p = GELU_TAIL[7][i];
    let mut dp = 0.0f32;
    for d in (0..7).rev() {
        dp = dp.mul_add(u, p);
        p = p.mul_add(u, GELU_TAIL[d][i]);
    }
    let (tail, density) = if a >= GELU_LIMIT {
        (0.0, 0.0)
    } else {
        (p, -dp)
    };
    let cdf = if x < 0.0 { tail } else { 1.0 - tail };
    x.mul_add(density, cdf)
}

/// [`gelu_grad`] on 16 lanes.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gelu_grad_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
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

/// `dst[j] = dy[j] · gelu'(x[j])`: the GELU backward pass over a chunk, vectorised where the
/// CPU allows (same bits as the scalar path). Every element is written, so `dst` may be
/// uninitialised.
pub fn gelu_backward_into(dst: &mut [std::mem::MaybeUninit<f32>], x: &[f32], dy: &[f32]) {
    assert!(
        x.len() == dst.len() && dy.len() == dst.len(),
        "gelu_backward_into: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        // SAFETY: AVX-512F is present; the lengths are equal (checked above).
        unsafe { gelu_backward_avx512(dst, x, dy) };
        return;
    }
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

/// Exact GELU in place over `x`, vectorised where the CPU allows (the activation of a linear
/// layer fused into its output pass).
pub fn gelu_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected above; source and destination are the same `x`.
        unsafe { gelu_row_avx512(x.as_mut_ptr(), x.as_ptr(), x.len()) };
        return;
    }
    x.iter_mut().for_each(|v| *v = gelu(*v));
}

/// `dst[j] = gelu(src[j])` for `j < n`, 16 lanes at a time (masked tail); `dst` may be `src`.
///
/// # Safety
/// AVX-512F; `src` valid for `n` reads and `dst` for `n` writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_row_avx512(dst: *mut f32, src: *const f32, n: usize) {
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

/// Exact GELU in place over an `mr x nr` tile at row stride `ldc`, for GEMM kernels (AVX-512
/// code: the tile was just written and is still in L1).
///
/// # Safety
/// AVX-512F must be available; `c` must be valid for `mr` rows of `nr` elements at stride
/// `ldc`, accessed by no one else during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gelu_tile_avx512(c: *mut f32, ldc: usize, mr: usize, nr: usize) {
    for i in 0..mr {
        let row = c.add(i * ldc);
        gelu_row_avx512(row, row, nr);
    }
}

/// `dst[j] = gelu(src[j])` into uninitialised storage (every element is written), 16 lanes at a
/// time where the CPU has AVX-512F.
pub fn gelu_into_uninit(dst: &mut [std::mem::MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "gelu_into_uninit: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected above; both slices hold `src.len()` elements.
        unsafe { gelu_row_avx512(dst.as_mut_ptr().cast::<f32>(), src.as_ptr(), src.len()) };
        return;
    }
    map_into_uninit(dst, src, gelu);
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
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected above.
            unsafe { map_into_uninit_avx512(dst, src, f) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected above.
            unsafe { map_into_uninit_avx2(dst, src, f) };
            return;
        }
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
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected above.
            unsafe { zip_map_into_avx512(dst, a, b, f) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected above.
            unsafe { zip_map_into_avx2(dst, a, b, f) };
            return;
        }
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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected above; both slices have `row.len()` elements.
        return unsafe { masked_exp_sum_avx512(row, mask, scale, max) };
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
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ] {
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
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected above.
            return unsafe { masked_max_avx512(v, mask) };
        }
    }
    masked_max_lanes(v, mask)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn masked_max_avx512(v: &[f32], mask: &[f32]) -> f32 {
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
    }

    #[test]
    fn vector_gelu_equals_the_scalar_one_bit_for_bit_and_is_accurate() {
        let mut xs: Vec<f32> = (-80_000..80_000).map(|i| i as f32 * 1e-4).collect();
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
            assert_eq!(y.to_bits(), gelu(*x).to_bits(), "gelu({x})");
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
        assert!(tile
            .iter()
            .zip(&xs)
            .all(|(t, x)| t.to_bits() == gelu(*x).to_bits()));
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
