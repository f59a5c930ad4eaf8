//! The portable f32 micro-kernel (what wasm32 and forced `PREFINE_ISA=scalar` run): plain Rust
//! over a `MR x NR` array of accumulators, which the compiler vectorises for the base target.

use crate::math::gelu;
use crate::tile::{ASource, Tile, MR, NR};

/// One `t.mr x t.nr` tile of `C (+)= A · Bpanel`.
///
/// # Safety
/// `a` holds `t.mr` rows of `kc` values (in its layout), `bp` `kc` rows of `NR` values; `t.c`
/// is valid for `t.mr` rows of `t.nr` values at stride `t.ldc`, `t.bias` null or valid for
/// `t.nr` values.
pub(crate) unsafe fn sgemm_tile(kc: usize, a: ASource, bp: *const f32, t: Tile) {
    let (ap, rs, ps) = a.strides();
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        // SAFETY: row `p < kc` of the panel holds `NR` values.
        let b = unsafe { &*(bp.add(p * NR) as *const [f32; NR]) };
        for (i, row) in acc.iter_mut().enumerate().take(t.mr) {
            // SAFETY: row `i < t.mr`, depth `p < kc` of `a`.
            let av = unsafe { *ap.add(i * rs + p * ps) };
            for (c, &bv) in row.iter_mut().zip(b) {
                *c += av * bv;
            }
        }
    }
    // SAFETY: the tile's contract is this function's.
    unsafe { store_tile(&acc, t) }
}

/// Stores `acc` into the tile: `start + acc` where `start` is the bias (or 0) when
/// overwriting, else the old value of `C`; then the GELU when `t.gelu`. The vector kernels'
/// partial stores use it too (the same operations, so the same bits as their full lanes).
///
/// # Safety
/// `t.c` is valid for `t.mr` rows of `t.nr` values at stride `t.ldc`; `t.bias` null or valid
/// for `t.nr` values; `acc` holds at least `t.mr` rows of at least `t.nr` values.
pub(crate) unsafe fn store_tile<const W: usize>(acc: &[[f32; W]], t: Tile) {
    for (i, row) in acc.iter().enumerate().take(t.mr) {
        // SAFETY: row `i < t.mr` of the tile.
        let cr = unsafe { t.c.add(i * t.ldc) };
        for (j, &v) in row.iter().enumerate().take(t.nr) {
            // SAFETY: column `j < t.nr` of row `i`, and of the bias when it is not null.
            unsafe {
                let start = if !t.overwrite {
                    *cr.add(j)
                } else if t.bias.is_null() {
                    0.0
                } else {
                    *t.bias.add(j)
                };
                let y = start + v;
                *cr.add(j) = if t.gelu { gelu(y) } else { y };
            }
        }
    }
}
