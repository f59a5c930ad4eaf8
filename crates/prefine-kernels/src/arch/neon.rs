//! aarch64 NEON kernels ([`crate::cpu::Isa::Neon`]): 32 q registers of 4 lanes.
//!
//! - f32 GEMM: the 12 x 32 tile in sub-tiles of up to 6 rows x 16 columns (24 accumulators,
//!   four `B` vectors), reading the panels every family shares.
//! - int8 GEMM on activations shifted to s8 (`a - 128`, corrected by `128 Σ_p w_jp` per column,
//!   exact): `SDOT` where the core has `dotprod` (four s8 products per i32 lane), else
//!   `vmull_s8` (s8 x s8 -> i16, at most 128 · 127 in magnitude) folded into i32 by
//!   `vpadalq_s16`.
//! - GELU: the table-polynomial GELU of [`crate::math::gelu`], the table looked up per lane with
//!   `tbl` (same operations, same bits).
//! - softmax numerators: `exp` with the polynomial of [`crate::math::exp`].
//!
//! `SDOT` is emitted with `asm!`: its intrinsic (`vdotq_s32`) is not stable Rust yet.

use std::arch::aarch64::*;

use crate::math::{GELU_LIMIT, GELU_STEP, GELU_TAIL, LN2_HI, LN2_LO, LOG2E};
use crate::tile::{by_rows, ASource, Tile, MR, NR};

/// Rows per f32 sub-tile.
const ROWS: usize = 6;

/// One `t.mr x t.nr` tile of `C (+)= A · Bpanel` (see [`crate::arch::scalar::sgemm_tile`]).
///
/// # Safety
/// NEON; operands as [`crate::arch::scalar::sgemm_tile`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn sgemm_tile(kc: usize, a: ASource, bp: *const f32, t: Tile) {
    let (ap, rs, ps) = a.strides();
    let mut i0 = 0;
    while i0 < t.mr {
        let rows = (t.mr - i0).min(ROWS);
        let mut j0 = 0;
        while j0 < t.nr {
            // SAFETY: rows `i0..i0 + rows` and columns `j0..j0 + 16` (of which `nr` are stored)
            // lie inside the tile, the panel and the bias.
            unsafe {
                let sub = Tile {
                    c: t.c.add(i0 * t.ldc + j0),
                    mr: rows,
                    nr: (t.nr - j0).min(16),
                    bias: if t.bias.is_null() {
                        t.bias
                    } else {
                        t.bias.add(j0)
                    },
                    ..t
                };
                let (a0, b0) = (ap.add(i0 * rs), bp.add(j0));
                by_rows!(rows, ROWS, sub_tile(kc, a0, rs, ps, b0, sub))
            }
            j0 += 16;
        }
        i0 += ROWS;
    }
}

/// `R` rows x 16 columns (see the AVX2 kernel of the same name).
///
/// # Safety
/// NEON; `t.mr == R`, `t.nr <= 16`; the operands hold what the loops read.
#[target_feature(enable = "neon")]
unsafe fn sub_tile<const R: usize>(
    kc: usize,
    ap: *const f32,
    rs: usize,
    ps: usize,
    bp: *const f32,
    t: Tile,
) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; R];
    for p in 0..kc {
        // SAFETY: panel row `p < kc` holds `NR >= 16` values; `A`'s rows `i < R` at depth `p`.
        unsafe {
            let b = bp.add(p * NR);
            let bv = [
                vld1q_f32(b),
                vld1q_f32(b.add(4)),
                vld1q_f32(b.add(8)),
                vld1q_f32(b.add(12)),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let av = *ap.add(i * rs + p * ps);
                for (c, &w) in row.iter_mut().zip(&bv) {
                    *c = vfmaq_n_f32(*c, w, av);
                }
            }
        }
    }
    // SAFETY: the tile's contract is this function's.
    unsafe { store(&acc, t) }
}

/// Stores `R` rows of four 4-lane quarters: full quarters with vector code, a partial one
/// through the scalar store (the same operations: the same bits).
///
/// # Safety
/// NEON; `t` as [`crate::arch::scalar::store_tile`] with `t.mr <= R`, `t.nr <= 16`.
#[target_feature(enable = "neon")]
unsafe fn store<const R: usize>(acc: &[[float32x4_t; 4]; R], t: Tile) {
    for (i, row) in acc.iter().enumerate().take(t.mr) {
        for (h, &v) in row.iter().enumerate() {
            let j = 4 * h;
            if j >= t.nr {
                break;
            }
            // SAFETY: row `i < t.mr`, columns `j..j + 4` (or the `t.nr - j` left) of the tile
            // and of the bias.
            unsafe {
                let c = t.c.add(i * t.ldc + j);
                let bias = if t.bias.is_null() {
                    t.bias
                } else {
                    t.bias.add(j)
                };
                if t.nr - j < 4 {
                    let mut lanes = [0f32; 4];
                    vst1q_f32(lanes.as_mut_ptr(), v);
                    let part = Tile {
                        c,
                        mr: 1,
                        nr: t.nr - j,
                        bias,
                        ..t
                    };
                    crate::arch::scalar::store_tile(&[lanes], part);
                    continue;
                }
                let start = if !t.overwrite {
                    vld1q_f32(c)
                } else if bias.is_null() {
                    vdupq_n_f32(0.0)
                } else {
                    vld1q_f32(bias)
                };
                let y = vaddq_f32(start, v);
                vst1q_f32(c, if t.gelu { gelu(y) } else { y });
            }
        }
    }
}

/// Int8 rows per sub-tile.
const QROWS: usize = 4;

/// The i32 products of one `MR x NR` tile: `acc[i][j] = Σ_p a[i][p] · w[j][p]` for rows
/// `i < mr` (rows past `mr` are left as they are); `sums[j] = Σ_p w[j][p]`.
///
/// # Safety
/// NEON, and SDOT when `dotprod`; `a` holds `mr` rows of `4 * kq` bytes at stride `lda`,
/// `panel` `kq * NR * 4` bytes, `sums` `NR` values.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn qgemm_tile(
    dotprod: bool,
    kq: usize,
    a: *const u8,
    lda: usize,
    mr: usize,
    panel: *const i8,
    sums: &[i32],
    acc: &mut [[i32; NR]; MR],
) {
    let mut i0 = 0;
    while i0 < mr {
        let rows = (mr - i0).min(QROWS);
        // SAFETY: rows `i0..i0 + rows` of `a`; the panel and sums as this function requires;
        // SDOT only when the caller says the core has it.
        unsafe {
            let a0 = a.add(i0 * lda);
            let out = &mut acc[i0..i0 + rows];
            match (dotprod, rows) {
                (true, 1) => q_sdot::<1>(kq, a0, lda, panel, sums, out),
                (true, 2) => q_sdot::<2>(kq, a0, lda, panel, sums, out),
                (true, 3) => q_sdot::<3>(kq, a0, lda, panel, sums, out),
                (true, _) => q_sdot::<QROWS>(kq, a0, lda, panel, sums, out),
                (false, 1) => q_widen::<1>(kq, a0, lda, panel, sums, out),
                (false, 2) => q_widen::<2>(kq, a0, lda, panel, sums, out),
                (false, 3) => q_widen::<3>(kq, a0, lda, panel, sums, out),
                (false, _) => q_widen::<QROWS>(kq, a0, lda, panel, sums, out),
            }
        }
        i0 += QROWS;
    }
}

/// The 4 bytes of group `q` of a row, shifted from u8 to s8 (`a - 128`), as one 32-bit lane.
///
/// # Safety
/// `row` holds `4 * q + 4` bytes.
#[inline(always)]
unsafe fn shifted_group(row: *const u8, q: usize) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { (row.add(4 * q) as *const u32).read_unaligned() ^ 0x8080_8080 }
}

/// `acc += Σ` of the four s8 products in each 32-bit lane of `a · b` (`SDOT`).
///
/// # Safety
/// The core has the dot-product extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: SDOT is available (this function's contract); it reads and writes registers only.
    unsafe {
        std::arch::asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// Adds `128 Σ_p w_jp` (the shift of the activations back) and stores 16 columns of a row.
///
/// # Safety
/// NEON; `sums` and `out` hold `h0 + 16` values.
#[target_feature(enable = "neon")]
unsafe fn store_shifted(acc: &[int32x4_t; 4], sums: &[i32], h0: usize, out: &mut [i32; NR]) {
    for (g, &v) in acc.iter().enumerate() {
        // SAFETY: columns `h0 + 4g..h0 + 4g + 4 <= NR` of `sums` and `out`.
        unsafe {
            let s = vshlq_n_s32::<7>(vld1q_s32(sums.as_ptr().add(h0 + 4 * g)));
            vst1q_s32(out.as_mut_ptr().add(h0 + 4 * g), vaddq_s32(v, s));
        }
    }
}

/// `R` rows on SDOT, the 32 columns in two halves of 16 (4 accumulators per row).
///
/// # Safety
/// NEON+dotprod; as [`qgemm_tile`], `out.len() == R`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn q_sdot<const R: usize>(
    kq: usize,
    a: *const u8,
    lda: usize,
    panel: *const i8,
    sums: &[i32],
    out: &mut [[i32; NR]],
) {
    for h in 0..2 {
        let mut acc = [[vdupq_n_s32(0); 4]; R];
        for q in 0..kq {
            // SAFETY: group `q < kq` of the panel (128 bytes) and of each row `i < R`.
            unsafe {
                let wq = panel.add(q * NR * 4 + h * 64);
                let b = [
                    vld1q_s8(wq),
                    vld1q_s8(wq.add(16)),
                    vld1q_s8(wq.add(32)),
                    vld1q_s8(wq.add(48)),
                ];
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = vreinterpretq_s8_u32(vdupq_n_u32(shifted_group(a.add(i * lda), q)));
                    for (c, &w) in row.iter_mut().zip(&b) {
                        *c = sdot(*c, av, w);
                    }
                }
            }
        }
        for (o, row) in out.iter_mut().zip(&acc) {
            // SAFETY: 16 columns at `16 h` of `NR`-wide rows and sums.
            unsafe { store_shifted(row, sums, 16 * h, o) };
        }
    }
}

/// `R` rows with widening multiplies, 8 columns at a time: per 4 columns, `vmull_s8` gives the
/// 16 products of two columns' groups and `vpadalq_s16` adds their pairs into i32; a final
/// pairwise add folds each column's two partial sums.
///
/// # Safety
/// NEON; as [`qgemm_tile`], `out.len() == R`.
#[target_feature(enable = "neon")]
unsafe fn q_widen<const R: usize>(
    kq: usize,
    a: *const u8,
    lda: usize,
    panel: *const i8,
    sums: &[i32],
    out: &mut [[i32; NR]],
) {
    for blk in 0..NR / 8 {
        let mut acc = [[vdupq_n_s32(0); 4]; R];
        for q in 0..kq {
            // SAFETY: group `q < kq` of the panel (128 bytes) and of each row `i < R`.
            unsafe {
                let wq = panel.add(q * NR * 4 + blk * 32);
                let (b0, b1) = (vld1q_s8(wq), vld1q_s8(wq.add(16)));
                let halves = [
                    vget_low_s8(b0),
                    vget_high_s8(b0),
                    vget_low_s8(b1),
                    vget_high_s8(b1),
                ];
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = vreinterpret_s8_u32(vdup_n_u32(shifted_group(a.add(i * lda), q)));
                    for (c, &w) in row.iter_mut().zip(&halves) {
                        *c = vpadalq_s16(*c, vmull_s8(av, w));
                    }
                }
            }
        }
        for (o, row) in out.iter_mut().zip(&acc) {
            // [c0 c0 c1 c1] + [c2 c2 c3 c3] pairwise -> [c0 c1 c2 c3].
            let lo = vpaddq_s32(row[0], row[1]);
            let hi = vpaddq_s32(row[2], row[3]);
            // SAFETY: columns `8 blk..8 blk + 8` of `NR`-wide rows and sums.
            unsafe {
                let s0 = vshlq_n_s32::<7>(vld1q_s32(sums.as_ptr().add(8 * blk)));
                let s1 = vshlq_n_s32::<7>(vld1q_s32(sums.as_ptr().add(8 * blk + 4)));
                vst1q_s32(o.as_mut_ptr().add(8 * blk), vaddq_s32(lo, s0));
                vst1q_s32(o.as_mut_ptr().add(8 * blk + 4), vaddq_s32(hi, s1));
            }
        }
    }
}

/// [`crate::math::gelu`] on 4 lanes (the same operations in the same order; `fminnm` keeps
/// Rust's `f32::min` on NaN).
#[target_feature(enable = "neon")]
fn gelu(x: float32x4_t) -> float32x4_t {
    let a = vabsq_f32(x);
    let s = vminnmq_f32(vmulq_n_f32(a, 1.0 / GELU_STEP), vdupq_n_f32(15.0));
    let i = vcvtq_u32_f32(s);
    let u = vsubq_f32(
        vfmaq_f32(a, vcvtq_f32_u32(i), vdupq_n_f32(-GELU_STEP)),
        vdupq_n_f32(0.5 * GELU_STEP),
    );
    // Byte indices of the 4 bytes of entry `i` in a 64-byte table row.
    let idx = vreinterpretq_u8_u32(vaddq_u32(
        vmulq_n_u32(i, 0x0404_0404),
        vdupq_n_u32(0x0302_0100),
    ));
    let coef = |d: usize| {
        let t = GELU_TAIL[d].as_ptr() as *const u8;
        // SAFETY: a row of the table is 16 f32 values = 64 bytes.
        let table = unsafe {
            uint8x16x4_t(
                vld1q_u8(t),
                vld1q_u8(t.add(16)),
                vld1q_u8(t.add(32)),
                vld1q_u8(t.add(48)),
            )
        };
        vreinterpretq_f32_u8(vqtbl4q_u8(table, idx))
    };
    let mut p = coef(7);
    for d in (0..7).rev() {
        p = vfmaq_f32(coef(d), p, u);
    }
    let inside = vcltq_f32(a, vdupq_n_f32(GELU_LIMIT));
    let tail = vbslq_f32(inside, p, vdupq_n_f32(0.0));
    let negative = vcltq_f32(x, vdupq_n_f32(0.0));
    let phi = vbslq_f32(negative, tail, vsubq_f32(vdupq_n_f32(1.0), tail));
    vmulq_f32(x, phi)
}

/// `dst[j] = gelu(src[j])` for `j < n`; `dst` may be `src`.
///
/// # Safety
/// NEON; `src` valid for `n` reads, `dst` for `n` writes.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gelu_row(dst: *mut f32, src: *const f32, n: usize) {
    let mut j = 0;
    while j + 4 <= n {
        // SAFETY: `j + 4 <= n`.
        unsafe { vst1q_f32(dst.add(j), gelu(vld1q_f32(src.add(j)))) };
        j += 4;
    }
    for j in j..n {
        // SAFETY: `j < n`.
        unsafe { *dst.add(j) = crate::math::gelu(*src.add(j)) };
    }
}

/// [`crate::math::exp`]'s polynomial on 4 lanes (round-to-nearest-even reduction).
#[target_feature(enable = "neon")]
fn exp(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3)), vdupq_n_f32(88.3));
    let n = vrndnq_f32(vmulq_n_f32(x, LOG2E));
    let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    for c in crate::math::EXP_POLY {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let p = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0));
    // 2^n for n in [-126, 127] (after the clamp): the exponent field alone.
    let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(p, vreinterpretq_f32_s32(bits))
}

/// [`crate::fast_math::masked_exp_sum`] on 4 lanes.
///
/// # Safety
/// NEON; `row` and `mask` have the same length.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn masked_exp_sum(row: &mut [f32], mask: &[f32], scale: f32, max: f32) -> f32 {
    let n = row.len().min(mask.len());
    let (vmax, half, floor) = (vdupq_n_f32(max), vdupq_n_f32(0.5), vdupq_n_f32(-100.0));
    let mut acc = vdupq_n_f32(0.0);
    let mut j = 0;
    while j + 4 <= n {
        // SAFETY: `j + 4 <= n` for both slices.
        unsafe {
            let x = vld1q_f32(row.as_ptr().add(j));
            let m = vld1q_f32(mask.as_ptr().add(j));
            let keep = vcgtq_f32(m, half);
            let z = vbslq_f32(keep, vsubq_f32(vmulq_n_f32(x, scale), vmax), floor);
            let e = vmulq_f32(exp(z), m);
            vst1q_f32(row.as_mut_ptr().add(j), e);
            acc = vaddq_f32(acc, e);
        }
        j += 4;
    }
    let mut total = vaddvq_f32(acc);
    for (x, &m) in row[j..n].iter_mut().zip(&mask[j..n]) {
        let z = if m > 0.5 { *x * scale - max } else { -100.0 };
        *x = crate::math::exp(z) * m;
        total += *x;
    }
    total
}
