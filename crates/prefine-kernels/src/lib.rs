//! `prefine-kernels`: the candle-free CPU kernels of prefine. f32, bf16 and int8 GEMMs with
//! weights packed once, the vector math of the fused ops (GELU, softmax numerators, layer norm),
//! and bf16/int8 packing, on one of several kernel families chosen in one place:
//! [`cpu::isa`] (AVX-512 with VNNI/BF16, AVX2+FMA, NEON with or without `dotprod`, scalar;
//! `PREFINE_ISA` forces a lower one).
//!
//! Module layering (no cycles; `tests/module_cycles.rs` checks every crate):
//! - leaves: [`cpu`] (dispatch, operands, scratch, bf16 rounding), [`math`] (scalar reference
//!   functions), [`tile`] (the register tile every GEMM kernel fills);
//! - `arch` (kernels per family below AVX-512) on the leaves;
//! - [`fast_math`], [`norm`], [`sgemm`], [`qgemm`], `sgemm_bf16` on those;
//! - [`gemm`] (the front-end the ops call), [`skinny`], [`bf16`], [`packed_f32`] on top.
//!
//! ```
//! use prefine_kernels::{cpu::MatRef, gemm::gemm_new};
//! let (a, b) = ([1.0f32, 2.0, 3.0, 4.0], [1.0f32, 0.0, 0.0, 1.0]);
//! let c = gemm_new(2, 2, 2, MatRef::row_major(&a, 2), MatRef::row_major(&b, 2));
//! assert_eq!(c, a);
//! println!("kernels: {}", prefine_kernels::cpu::isa());
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub(crate) mod arch;
pub mod bf16;
pub mod cpu;
pub mod fast_math;
pub mod gemm;
pub mod math;
pub mod norm;
pub mod packed_f32;
pub mod qgemm;
pub mod sgemm;
#[cfg(target_arch = "x86_64")]
pub mod sgemm_bf16;
pub mod skinny;
pub mod tile;
