//! Mixed-precision matmuls for training (PyTorch's `autocast(dtype=bfloat16)` for linear layers
//! and attention): in `bf16` mode every GEMM of the linear, LoRA-linear and attention ops
//! rounds both operands to bfloat16 (round to nearest, ties to even) as it packs them, and
//! multiplies and accumulates in f32. A product of two bf16 values is exact in f32, so this is
//! what a bf16 dot-product instruction with f32 accumulation computes. Parameters (the master
//! weights), gradients, layer norms, softmax, GELU, losses and the optimizer stay f32.
//!
//! The precision is a per-thread setting read when an op is built (on the thread that runs
//! the forward pass) and kept in the op, so its backward pass multiplies in the same
//! precision. Other threads (concurrent tests, a server) are unaffected.
//!
//! On a CPU with AVX512_BF16 the GEMMs run on its bf16 dot products ([`super::sgemm_bf16`]:
//! twice the multiply-adds per instruction); without it, the rounded operands are multiplied
//! on the f32 FMA units (the same numerics up to f32 rounding, no speed-up).

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use super::bf16::{bf16_to_f32, f32_to_bf16};

/// The precision of the operands of the training GEMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// f32 operands (the default).
    #[default]
    F32,
    /// Operands rounded to bf16, f32 accumulation (mixed precision).
    Bf16,
}

impl MatmulPrecision {
    /// Parses `f32` or `bf16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            _ => None,
        }
    }

    /// `"f32"` or `"bf16"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for MatmulPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

thread_local! {
    static CURRENT: Cell<MatmulPrecision> = const { Cell::new(MatmulPrecision::F32) };
}

/// The matmul precision of ops built on this thread now.
pub fn matmul_precision() -> MatmulPrecision {
    CURRENT.with(Cell::get)
}

/// Runs `f` with ops built on this thread multiplying in `precision` (restored afterwards, also
/// when `f` panics).
pub fn with_matmul_precision<R>(precision: MatmulPrecision, f: impl FnOnce() -> R) -> R {
    struct Restore(MatmulPrecision);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(precision)));
    f()
}

/// `x` rounded to the nearest bf16 value (ties to even), as f32; NaN stays NaN.
pub fn round_bf16(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

/// Rounds every value of `x` to bf16 in place ([`round_bf16`], vectorised).
pub fn round_bf16_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        // SAFETY: AVX-512F is present.
        unsafe { round_bf16_avx512(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = round_bf16(*v));
}

/// [`round_bf16_in_place`] with AVX-512: add `0x7fff` plus the lowest kept bit, clear the low
/// half; NaN lanes are kept as they are (the add could carry them into another value).
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_bf16_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let half = _mm512_set1_epi32(0x7fff);
    let one = _mm512_set1_epi32(1);
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let round = |v: __m512| {
        let bits = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), one);
        let r = _mm512_and_si512(_mm512_add_epi32(bits, _mm512_add_epi32(half, lsb)), high);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_mask_mov_ps(_mm512_castsi512_ps(r), nan, v)
    };
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i + 16 <= n {
        _mm512_storeu_ps(p.add(i), round(_mm512_loadu_ps(p.add(i))));
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = (1u16 << (n - i)) - 1;
        let v = _mm512_maskz_loadu_ps(mask, p.add(i));
        _mm512_mask_storeu_ps(p.add(i), mask, round(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_rounding_equals_the_scalar_one() {
        let mut values: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-40,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            // Exactly halfway between two bf16 values, below and above an even one.
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x3f80_8001),
            f32::from_bits(0x3f80_7fff),
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            values.push(f32::from_bits(state as u32));
        }
        values.push(f32::NAN);
        // 1017 values: the vector loop and a masked tail.
        let mut vector = values.clone();
        round_bf16_in_place(&mut vector);
        for (i, (&x, &r)) in values.iter().zip(&vector).enumerate() {
            let s = round_bf16(x);
            if x.is_nan() {
                assert!(r.is_nan() && s.is_nan(), "value {i}: NaN lost");
            } else {
                assert_eq!(r.to_bits(), s.to_bits(), "value {i}: {x:e}");
                assert_eq!(r.to_bits() & 0xffff, 0, "value {i}: not a bf16 value");
            }
        }
        assert_eq!(
            round_bf16(f32::from_bits(0x3f80_8000)).to_bits(),
            0x3f80_0000
        );
        assert_eq!(
            round_bf16(f32::from_bits(0x3f81_8000)).to_bits(),
            0x3f82_0000
        );
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    }

    #[test]
    fn the_setting_is_scoped_to_this_thread() {
        assert_eq!(matmul_precision(), MatmulPrecision::F32);
        with_matmul_precision(MatmulPrecision::Bf16, || {
            assert_eq!(matmul_precision(), MatmulPrecision::Bf16);
            let other = std::thread::spawn(matmul_precision).join().unwrap();
            assert_eq!(other, MatmulPrecision::F32);
        });
        assert_eq!(matmul_precision(), MatmulPrecision::F32);
        let caught = std::panic::catch_unwind(|| {
            with_matmul_precision(MatmulPrecision::Bf16, || panic!("inside"))
        });
        assert!(caught.is_err());
        assert_eq!(matmul_precision(), MatmulPrecision::F32);
        assert_eq!(MatmulPrecision::parse("BF16"), Some(MatmulPrecision::Bf16));
        assert_eq!(MatmulPrecision::parse("int8"), None);
    }
}
