//! Kernels per instruction set, one file per [`crate::cpu::Isa`] family below AVX-512 (`avx2`,
//! `neon`, `wasm` for SIMD128, `scalar`) (whose
//! kernels live beside their drivers in `sgemm`, `qgemm` and `fast_math`). Each file provides
//! the same entry points, which the drivers call through one `match` on the family:
//! - `sgemm_tile`: one `MR x NR` f32 register tile ([`crate::tile`]);
//! - `qgemm_tile`: one `MR x NR` tile of int8 products, exact i32 (not in `scalar`, whose tile
//!   is `qgemm::tile_scalar`);
//! - `gelu_row` and `masked_exp_sum` (not in `scalar`: `fast_math` has those loops).
//!
//! Modules here import only the leaves `cpu`, `math` and `tile`.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub(crate) mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) mod wasm;
