//! The scalar reference math: branch-free `exp` and `erf`, and the exact GELU through a table of
//! per-interval polynomials. Every vector kernel ([`crate::fast_math`], [`crate::arch`]) performs
//! these operations (the GELU ones in the same order, so with the same bits), and the tests
//! compare each of them with the functions here. Used for
//! the element-wise parts of attention softmax and GELU. libm's scalar `expf`/`erff` were ~20% of
//! a training step in `perf`.
//!
//! Accuracy: `exp` within 3e-7 relative on [-87, 88] (Cephes polynomial after range reduction), `erf`
//! within 1.2e-7 absolute (Numerical Recipes' Chebyshev fit of erfc); GELU within 2.5e-7 relative
//! on |x| < 5 (6e-7 on the tiny tail to -6) through a table of per-interval polynomials (no division, no `exp`; an AVX-512
//! version permutes the table and gives the same bits); all checked in tests.

pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// The Horner coefficients of `e^r` on `[-ln2/2, ln2/2]` after the leading `1.987_569_1e-4`
/// (every vector `exp` uses this table).
pub(crate) const EXP_POLY: [f32; 5] = [
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];

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
pub(crate) const GELU_STEP: f32 = 0.375;
/// Beyond this `|x|`, `Φ(-|x|) < 1e-9` is taken as 0 (GELU then is `x` or `-0`, within 6e-9).
pub(crate) const GELU_LIMIT: f32 = 16.0 * GELU_STEP;

/// `Φ(-a) = erfc(a / √2) / 2` for `a` in `[0, 6)`: 16 intervals of width 0.375, a degree-7
/// polynomial each in `u = a - centre`, coefficient `d` of interval `i` at `[d][i]` (one 16-lane
/// table per degree, for a vector permute). Fitted by relative least squares on Chebyshev nodes;
/// with them GELU is within 3.8e-7 absolute of the exact one (half an ulp at 6), 2.5e-7 relative
/// on `|x| < 5` and 6e-7 on the tail to -6 (the `erf` path above: 4.5e-7 and 1.1e-5).
#[rustfmt::skip]
#[allow(clippy::approx_constant)]
pub(crate) const GELU_TAIL: [[f32; 16]; 8] = [
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
pub(crate) fn gelu_interval(a: f32) -> (usize, f32) {
    let i = (a * (1.0 / GELU_STEP)).min(15.0) as usize;
    (i, (i as f32).mul_add(-GELU_STEP, a) - 0.5 * GELU_STEP)
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
