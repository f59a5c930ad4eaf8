//! Layer normalisation of one row: the statistics and the affine output, PyTorch semantics
//! (biased variance, eps inside the square root). One source loop compiled per family (AVX-512,
//! AVX2+FMA; NEON is aarch64's baseline): the 16-lane sums vectorise, and with no fused
//! multiply-adds the operations, and so the bits, are the same on every family.

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use crate::cpu::Isa;
use crate::fast_math::sum as fsum;

/// Mean and reciprocal standard deviation of one row.
#[inline(always)]
pub fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
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

/// `out = (row - mean) * rstd * g + b`, every element written; returns `(mean, rstd)`.
///
/// # Panics
/// When `g`, `b` or `out` differ from `row` in length.
pub fn layer_norm_row(
    row: &[f32],
    g: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [MaybeUninit<f32>],
) -> (f32, f32) {
    let d = row.len();
    assert!(
        g.len() == d && b.len() == d && out.len() == d,
        "layer_norm_row: lengths differ"
    );
    match crate::cpu::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F selected.
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { row_avx512(row, g, b, eps, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA selected.
        Isa::Avx2Fma { .. } => unsafe { row_avx2(row, g, b, eps, out) },
        _ => row_lanes(row, g, b, eps, out),
    }
}

#[inline(always)]
fn row_lanes(
    row: &[f32],
    g: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [MaybeUninit<f32>],
) -> (f32, f32) {
    let (mean, rstd) = row_stats(row, eps);
    for i in 0..row.len() {
        out[i].write((row[i] - mean) * rstd * g[i] + b[i]);
    }
    (mean, rstd)
}

/// [`row_lanes`] compiled for AVX-512.
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(
    row: &[f32],
    g: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [MaybeUninit<f32>],
) -> (f32, f32) {
    row_lanes(row, g, b, eps, out)
}

/// [`row_lanes`] compiled for AVX2+FMA (Rust does not contract `a * b + c` into an FMA: the
/// same bits as the other families).
///
/// # Safety
/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(
    row: &[f32],
    g: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [MaybeUninit<f32>],
) -> (f32, f32) {
    row_lanes(row, g, b, eps, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;

    /// Every family gives the same bits, equal to a plain f64 layer norm within 1e-5, on rows
    /// shorter than, equal to and longer than the 16 lanes (with a tail).
    #[test]
    fn every_family_gives_the_same_bits_and_the_right_values() {
        for d in [1usize, 5, 16, 37, 384] {
            let row: Vec<f32> = (0..d).map(|i| ((i * 37) % 23) as f32 * 0.3 - 3.0).collect();
            let g: Vec<f32> = (0..d).map(|i| 1.0 + i as f32 * 0.01).collect();
            let b: Vec<f32> = (0..d).map(|i| i as f32 * -0.02).collect();
            let run = || {
                let mut out = vec![MaybeUninit::uninit(); d];
                layer_norm_row(&row, &g, &b, 1e-12, &mut out);
                // SAFETY: `layer_norm_row` writes every element.
                out.iter()
                    // SAFETY: the function under test writes every element.
                    .map(|v| unsafe { v.assume_init() })
                    .collect::<Vec<f32>>()
            };
            let want = crate::cpu::with_isa(Isa::Scalar, run);
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                let exact =
                    (row[i] as f64 - mean) / (var + 1e-12).sqrt() * g[i] as f64 + b[i] as f64;
                assert!((want[i] as f64 - exact).abs() < 1e-5, "d={d} i={i}");
            }
            crate::cpu::for_each_isa(|| assert_eq!(run(), want, "d={d} on {}", crate::cpu::isa()));
        }
    }
}
