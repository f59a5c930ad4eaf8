//! bf16 weights for inference, stored as bfloat16 (round to nearest, ties to even).
//!
//! On a CPU with AVX512_BF16 the weight is kept as bf16 pairs in the dot-product kernel's panel
//! layout ([`crate::sgemm_bf16::PairedB`]) and the activations are rounded to bf16 as they are
//! packed (what PyTorch's bf16 autocast multiplies): the products run on the bf16 units with
//! f32 accumulation. Without it, the bits are kept in the f32 kernel's panel layout and widened
//! (one vector pass into a per-thread scratch, reused across calls) to multiply f32 activations
//! on the f32 units: half the bytes of f32 weights, no faster arithmetic. Without AVX-512 they
//! are kept transposed (`Wᵀ`, `[in, out]`) for the portable GEMM.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::cpu::with_buffer;
pub use crate::cpu::{bf16_to_f32, f32_to_bf16};
use crate::sgemm::{PackedB, PanelsRef};

/// How a [`Bf16Matrix`] holds its bits.
#[derive(Clone)]
enum Bf16Layout {
    /// bf16 pairs for the AVX512_BF16 dot-product kernel.
    #[cfg(target_arch = "x86_64")]
    Pairs(crate::sgemm_bf16::PairedB),
    /// The f32 GEMM's panel layout ([`PackedB`]): widening gives the kernel's operand
    /// directly, with no packing per call.
    Panels,
}

/// A weight `W: [out, in]` stored as bf16.
#[derive(Clone)]
pub struct Bf16Matrix {
    out: usize,
    inp: usize,
    layout: Bf16Layout,
    bits: Vec<u16>,
}

impl std::fmt::Debug for Bf16Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Matrix {{ out: {}, in: {} }}", self.out, self.inp)
    }
}

impl Bf16Matrix {
    /// Rounds a row-major `[out, in]` f32 weight to bf16.
    pub fn from_f32(w: &[f32], out: usize, inp: usize) -> Self {
        assert_eq!(w.len(), out * inp, "Bf16Matrix::from_f32: not out x in");
        let bits: Vec<u16> = w.iter().map(|&v| f32_to_bf16(v)).collect();
        Self::from_bits(&bits, out, inp)
    }

    /// From row-major `[out, in]` bf16 bits (as stored in a checkpoint).
    pub fn from_bits(w: &[u16], out: usize, inp: usize) -> Self {
        assert_eq!(w.len(), out * inp, "Bf16Matrix::from_bits: not out x in");
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::isa().avx512_bf16() {
            // The widened values are exact, so pairing (which rounds) keeps every bit.
            let wide: Vec<f32> = w.iter().map(|&b| bf16_to_f32(b)).collect();
            return Self {
                out,
                inp,
                layout: Bf16Layout::Pairs(crate::sgemm_bf16::PairedB::pack(&wide, out, inp)),
                bits: Vec::new(),
            };
        }
        // Every value (and the zero padding) is exactly representable in bf16, so packing the
        // widened weight and narrowing it again loses nothing.
        let wide: Vec<f32> = w.iter().map(|&b| bf16_to_f32(b)).collect();
        let packed = PackedB::pack(&wide, out, inp);
        let bits = packed.data().iter().map(|&v| f32_to_bf16(v)).collect();
        Self {
            out,
            inp,
            layout: Bf16Layout::Panels,
            bits,
        }
    }

    /// The row-major `[out, in]` bf16 bits.
    pub fn to_bits(&self) -> Vec<u16> {
        let (out, inp) = (self.out, self.inp);
        match &self.layout {
            #[cfg(target_arch = "x86_64")]
            Bf16Layout::Pairs(p) => p.to_bits(),
            Bf16Layout::Panels => {
                let wide: Vec<f32> = self.bits.iter().map(|&b| bf16_to_f32(b)).collect();
                PanelsRef::new(out, inp, &wide)
                    .unpack()
                    .into_iter()
                    .map(f32_to_bf16)
                    .collect()
            }
        }
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.layout {
            #[cfg(target_arch = "x86_64")]
            Bf16Layout::Pairs(p) => p.bytes(),
            _ => 2 * self.bits.len(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_avx512(src: &[u16], dst: &mut [f32]) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
            let w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_castsi512_ps(w));
            i += 16;
        }
        for j in i..n {
            dst[j] = bf16_to_f32(src[j]);
        }
    }
}

fn widen_chunk(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa().avx512() {
        // SAFETY: AVX-512F selected.
        unsafe { widen_avx512(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_to_f32(s);
    }
}

/// Widens bf16 bits to f32 (in parallel for large buffers).
pub fn widen(src: &[u16], dst: &mut [f32]) {
    const CHUNK: usize = 1 << 15;
    if src.len() >= 2 * CHUNK {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| widen_chunk(s, d));
    } else {
        widen_chunk(src, dst);
    }
}

thread_local! {
    /// The widened weight of the layer being computed on this thread.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `y[m, out] = x[m, in] · Wᵀ + bias` with `W` in bf16: on AVX512_BF16 with `x` rounded to bf16
/// too, on the bf16 dot products; otherwise the bits are widened into a per-thread f32 scratch
/// (already in the kernel's panel layout on AVX-512) and multiplied in f32. With `gelu`,
/// `GELU(x · Wᵀ + bias)`.
pub fn bf16_linear(x: &[f32], m: usize, w: &Bf16Matrix, bias: &[f32], gelu: bool) -> Vec<f32> {
    let (n, k) = (w.out, w.inp);
    assert!(x.len() >= m * k, "bf16_linear: x is shorter than m x in");
    assert_eq!(bias.len(), n, "bf16_linear: one bias per output");
    #[cfg(target_arch = "x86_64")]
    if let Bf16Layout::Pairs(p) = &w.layout {
        return crate::sgemm_bf16::linear_paired(m, x, p, bias, gelu);
    }
    // A thread waiting inside the GEMM's parallel loop may run another layer's call (rayon
    // work stealing): `with_buffer` then gives that call a buffer of its own.
    with_buffer(&SCRATCH, w.bits.len(), |wide| {
        widen(&w.bits, wide);
        crate::sgemm::gemm_panels_bias(m, x, PanelsRef::new(n, k, wide), bias, gelu)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(-2.0), 0xC000);
        // Exactly half-way between 0x3F80 and 0x3F81: ties to the even 0x3F80.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        // Half-way between 0x3F81 and 0x3F82: ties to the even 0x3F82.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        // Just above / below half-way.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_7FFF)), 0x3F80);
        // Carry into the exponent.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3FFF_FFFF)), 0x4000);
        // Overflow to infinity, infinities and NaN kept.
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7F80);
        assert_eq!(f32_to_bf16(f32::NEG_INFINITY), 0xFF80);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        // Subnormals and signed zero.
        assert_eq!(f32_to_bf16(-0.0), 0x8000);
        assert_eq!(f32_to_bf16(f32::from_bits(0x0000_8000)), 0x0000);
        assert_eq!(f32_to_bf16(f32::from_bits(0x0001_8000)), 0x0002);
        // Relative error at most half an ulp, 2^-8, for normal numbers (8 significant bits).
        let mut s = 1u32;
        for _ in 0..10_000 {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            let x = f32::from_bits((s & 0x3FFF_FFFF) | 0x0080_0000);
            let y = bf16_to_f32(f32_to_bf16(x));
            assert!(((y - x) / x).abs() <= 1.0 / 256.0, "{x} -> {y}");
        }
    }

    #[test]
    fn widening_is_exact_and_matches_scalar() {
        let src: Vec<u16> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 16) as u16)
            .collect();
        let mut dst = vec![0f32; src.len()];
        widen(&src, &mut dst);
        for (s, d) in src.iter().zip(&dst) {
            assert_eq!(d.to_bits(), bf16_to_f32(*s).to_bits());
        }
    }

    /// The product equals that of the rounded weight (and, on the bf16 dot-product kernel, of
    /// the rounded activations), on shapes with partial panels, an odd depth and several `KC`
    /// and `NC` blocks; the bits round-trip.
    #[test]
    fn linear_equals_f32_product_of_rounded_weights() {
        let native = crate::cpu::isa().avx512_bf16();
        for (m, n, k) in [(5, 37, 19), (3, 2100, 801)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i as u64 * 7919) % 201) as f32 / 100.0 - 1.0)
                .collect();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i as u64 * 104729) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1).collect();
            let b = Bf16Matrix::from_f32(&w, n, k);
            let rounded: Vec<u16> = w.iter().map(|&v| f32_to_bf16(v)).collect();
            assert_eq!(b.to_bits(), rounded, "row-major bits");
            assert_eq!(
                Bf16Matrix::from_bits(&rounded, n, k).to_bits(),
                rounded,
                "bits round trip"
            );
            let y = bf16_linear(&x, m, &b, &bias, false);
            let xr = |v: f32| {
                if native {
                    bf16_to_f32(f32_to_bf16(v))
                } else {
                    v
                }
            };
            for i in 0..m {
                for j in 0..n {
                    let r: f64 = (0..k)
                        .map(|p| xr(x[i * k + p]) as f64 * bf16_to_f32(rounded[j * k + p]) as f64)
                        .sum::<f64>()
                        + bias[j] as f64;
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - r).abs() < 2e-5 * (1.0 + r.abs()),
                        "{m}x{n}x{k}: {got} vs {r}"
                    );
                }
            }
        }
    }
}
