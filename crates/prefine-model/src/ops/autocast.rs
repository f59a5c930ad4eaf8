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
//! On a CPU with AVX512_BF16 the GEMMs run on its bf16 dot products (`prefine_kernels::sgemm_bf16`:
//! twice the multiply-adds per instruction); without it, the rounded operands are multiplied
//! on the f32 FMA units (the same numerics up to f32 rounding, no speed-up).

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use prefine_kernels::cpu::MatRef;

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

impl From<crate::precision::Precision> for MatmulPrecision {
    /// The matmul precision that trains at a [`crate::Precision`]: bf16 operands for `bf16`,
    /// f32 otherwise (training configs refuse `int8` before they get here).
    fn from(p: crate::precision::Precision) -> Self {
        match p {
            crate::precision::Precision::Bf16 => Self::Bf16,
            _ => Self::F32,
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

/// bf16 rounding, from the kernel crate (re-exported for the ops' users and tests).
pub use prefine_kernels::cpu::{round_bf16, round_bf16_in_place};

/// A GEMM operand multiplied in a [`MatmulPrecision`]: rounded to bf16 in `Bf16`.
pub(crate) trait AtPrecision {
    /// The same operand, multiplied in `precision`.
    fn at(self, precision: MatmulPrecision) -> Self;
}

impl AtPrecision for MatRef<'_> {
    fn at(self, precision: MatmulPrecision) -> Self {
        self.rounded_to_bf16(precision == MatmulPrecision::Bf16)
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
        prefine_kernels::cpu::for_each_isa(|| {
            let mut v = values.clone();
            round_bf16_in_place(&mut v);
            assert!(v
                .iter()
                .zip(&vector)
                .all(|(a, b)| a.to_bits() == b.to_bits() || a.is_nan()));
        });
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
