//! WebAssembly SIMD128 kernels ([`crate::cpu::Isa::Simd128`]): 4-lane `v128` vectors, which
//! the browser's compiler maps onto SSE/AVX (x86) or NEON (ARM) registers, 16 of them on the
//! engines in use. WebAssembly has no fused multiply-add outside the relaxed-SIMD proposal, so
//! every kernel multiplies and adds separately:
//!
//! - f32 GEMM: the 12 x 32 tile in sub-tiles of up to 6 rows x 8 columns (12 accumulators, two
//!   `B` vectors, one `A` broadcast: 15 registers), the same operations in the same order as
//!   [`crate::arch::scalar::sgemm_tile`], so the same bits.
//! - int8 GEMM: `i32x4.dot_i16x8_s` on the u8 activations widened to i16 (0..=255, exact) and
//!   the s8 weights widened to i16: each lane adds two products of one column, a final pairwise
//!   add folds a column's two lanes. Exact i32, the same integers as every other family.
//! - GELU: the table-polynomial GELU of [`crate::math::gelu`], the table looked up per lane with
//!   four `i8x16.swizzle`s (out-of-range indices give 0, so the four 16-byte quarters of a
//!   64-byte table row are or-ed together); multiply and add unfused (within an ulp of it), and
//!   every value (a row's tail, a tile's partial columns) goes through the vector code, so a
//!   fused GELU and a separate one give the same bits.
//! - softmax numerators: `exp` with the polynomial of [`crate::math::exp`] (unfused).
//! - the int8 row quantiser: min/max and round-half-to-even in 4 lanes (the scalar codes;
//!   `f32::min`/`max` would be calls to `fminf`/`fmaxf` here).
//!
//! Layer norm needs no kernel here: `norm`'s 16-lane loops are vectorised to SIMD128 by the
//! compiler (SIMD128 is enabled for the whole wasm32 build, see `.cargo/config.toml`).

use std::arch::wasm32::*;

use crate::math::{GELU_LIMIT, GELU_STEP, GELU_TAIL, LN2_HI, LN2_LO, LOG2E};
use crate::tile::{by_rows, ASource, Tile, MR, NR};

/// Rows per f32 sub-tile.
const ROWS: usize = 6;
/// Columns per f32 sub-tile (two vectors).
const COLS: usize = 8;

/// One `t.mr x t.nr` tile of `C (+)= A · Bpanel` (see [`crate::arch::scalar::sgemm_tile`]).
///
/// # Safety
/// SIMD128; operands as [`crate::arch::scalar::sgemm_tile`].
#[target_feature(enable = "simd128")]
pub(crate) unsafe fn sgemm_tile(kc: usize, a: ASource, bp: *const f32, t: Tile) {
    let (ap, rs, ps) = a.strides();
    let mut i0 = 0;
    while i0 < t.mr {
        let rows = (t.mr - i0).min(ROWS);
        let mut j0 = 0;
        while j0 < t.nr {
            // SAFETY: rows `i0..i0 + rows` and columns `j0..j0 + COLS` (of which `nr` are
            // stored) lie inside the tile, the panel and the bias.
            unsafe {
                let sub = Tile {
                    c: t.c.add(i0 * t.ldc + j0),
                    mr: rows,
                    nr: (t.nr - j0).min(COLS),
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
            j0 += COLS;
        }
        i0 += ROWS;
    }
}

/// `R` rows x 8 columns.
///
/// # Safety
/// SIMD128; `t.mr == R`, `t.nr <= 8`; the operands hold what the loops read.
#[inline]
#[target_feature(enable = "simd128")]
unsafe fn sub_tile<const R: usize>(
    kc: usize,
    ap: *const f32,
    rs: usize,
    ps: usize,
    bp: *const f32,
    t: Tile,
) {
    let mut acc = [[f32x4_splat(0.0); 2]; R];
    for p in 0..kc {
        // SAFETY: panel row `p < kc` holds `NR >= 8` values; `A`'s rows `i < R` at depth `p`.
        unsafe {
            let b = bp.add(p * NR);
            let bv = [
                v128_load(b as *const v128),
                v128_load(b.add(4) as *const v128),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let av = v128_load32_splat(ap.add(i * rs + p * ps) as *const u32);
                row[0] = f32x4_add(row[0], f32x4_mul(av, bv[0]));
                row[1] = f32x4_add(row[1], f32x4_mul(av, bv[1]));
            }
        }
    }
    // SAFETY: the tile's contract is this function's.
    unsafe { store(&acc, t) }
}

/// Stores `R` rows of two 4-lane halves: full halves with vector code, a partial one through
/// the scalar store (the same operations: the same bits).
///
/// # Safety
/// SIMD128; `t` as [`crate::arch::scalar::store_tile`] with `t.mr <= R`, `t.nr <= 8`.
#[target_feature(enable = "simd128")]
unsafe fn store<const R: usize>(acc: &[[v128; 2]; R], t: Tile) {
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
                    v128_store(lanes.as_mut_ptr() as *mut v128, v);
                    let part = Tile {
                        c,
                        mr: 1,
                        nr: t.nr - j,
                        bias,
                        gelu: false,
                        ..t
                    };
                    crate::arch::scalar::store_tile(&[lanes], part);
                    if t.gelu {
                        // The vector GELU on the partial lanes too: the same bits as
                        // `gelu_row` gives the same values.
                        gelu_row(c, c, t.nr - j);
                    }
                    continue;
                }
                let start = if !t.overwrite {
                    v128_load(c as *const v128)
                } else if bias.is_null() {
                    f32x4_splat(0.0)
                } else {
                    v128_load(bias as *const v128)
                };
                let y = f32x4_add(start, v);
                v128_store(c as *mut v128, if t.gelu { gelu(y) } else { y });
            }
        }
    }
}

/// Int8 rows per sub-tile (x 8 columns: 4·QROWS accumulators, four weight vectors).
const QROWS: usize = 3;

thread_local! {
    /// The tile's activations widened to i16 and repeated (see [`qgemm_tile`]).
    static WIDENED: crate::cpu::ScratchI16 = const { std::cell::RefCell::new(Vec::new()) };
}

/// The i32 products of one `MR x NR` tile: `acc[i][j] = Σ_p a[i][p] · w[j][p]` for rows
/// `i < mr` (rows past `mr` are left as they are).
///
/// The rows' four bytes per group are widened once per tile to i16 and repeated twice
/// (`a0 a1 a2 a3 a0 a1 a2 a3`), the operand every column pair's `dot_i16x8` takes; then each
/// sub-tile of [`QROWS`] rows x 8 columns runs through the groups.
///
/// # Safety
/// SIMD128; `a` holds `mr` rows of `4 * kq` bytes at stride `lda`, `panel` `kq * NR * 4`
/// bytes.
#[target_feature(enable = "simd128")]
pub(crate) unsafe fn qgemm_tile(
    kq: usize,
    a: *const u8,
    lda: usize,
    mr: usize,
    panel: *const i8,
    acc: &mut [[i32; NR]; MR],
) {
    crate::cpu::with_buffer(&WIDENED, mr * kq * 8, |wide| {
        for i in 0..mr {
            for q in 0..kq {
                // SAFETY: 4 bytes of row `i < mr` at group `q < kq`; 8 i16 at `(i kq + q) 8`.
                unsafe {
                    let g = v128_load32_splat(a.add(i * lda + 4 * q) as *const u32);
                    v128_store(
                        wide.as_mut_ptr().add((i * kq + q) * 8) as *mut v128,
                        u16x8_extend_low_u8x16(g),
                    );
                }
            }
        }
        let mut i0 = 0;
        while i0 < mr {
            let rows = (mr - i0).min(QROWS);
            // SAFETY: rows `i0..i0 + rows` of the widened activations; the panel as this
            // function requires.
            unsafe {
                let w0 = wide.as_ptr().add(i0 * kq * 8);
                let out = &mut acc[i0..i0 + rows];
                match rows {
                    1 => q_dot::<1>(kq, w0, panel, out),
                    2 => q_dot::<2>(kq, w0, panel, out),
                    _ => q_dot::<QROWS>(kq, w0, panel, out),
                }
            }
            i0 += QROWS;
        }
    });
}

/// `R` rows, 8 columns at a time: the 32 bytes of a group hold the eight columns' four
/// weights; widened to four i16x8 vectors (column pairs), each dotted with a row's widened
/// activations; a final pairwise add folds each column's two lanes.
///
/// # Safety
/// SIMD128; `wide` holds `R` rows of `kq * 8` i16; the panel `kq * NR * 4` bytes;
/// `out.len() == R`.
#[inline]
#[target_feature(enable = "simd128")]
unsafe fn q_dot<const R: usize>(
    kq: usize,
    wide: *const i16,
    panel: *const i8,
    out: &mut [[i32; NR]],
) {
    for blk in 0..NR / 8 {
        let mut acc = [[i32x4_splat(0); 4]; R];
        for q in 0..kq {
            // SAFETY: group `q < kq` of the panel (128 bytes: this block's 32 at `32 blk`) and
            // of each row `i < R`.
            unsafe {
                let wq = panel.add(q * NR * 4 + blk * 32);
                let (b0, b1) = (
                    v128_load(wq as *const v128),
                    v128_load(wq.add(16) as *const v128),
                );
                let w = [
                    i16x8_extend_low_i8x16(b0),
                    i16x8_extend_high_i8x16(b0),
                    i16x8_extend_low_i8x16(b1),
                    i16x8_extend_high_i8x16(b1),
                ];
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = v128_load(wide.add((i * kq + q) * 8) as *const v128);
                    for (c, &wc) in row.iter_mut().zip(&w) {
                        *c = i32x4_add(*c, i32x4_dot_i16x8(av, wc));
                    }
                }
            }
        }
        for (o, row) in out.iter_mut().zip(&acc) {
            for h in 0..2 {
                // [c0 c0 c1 c1], [c2 c2 c3 c3] -> [c0 c1 c2 c3].
                let (x, y) = (row[2 * h], row[2 * h + 1]);
                let even = i32x4_shuffle::<0, 2, 4, 6>(x, y);
                let odd = i32x4_shuffle::<1, 3, 5, 7>(x, y);
                // SAFETY: columns `8 blk + 4 h..+ 4` of an `NR`-wide row.
                unsafe {
                    v128_store(
                        o.as_mut_ptr().add(8 * blk + 4 * h) as *mut v128,
                        i32x4_add(even, odd),
                    )
                };
            }
        }
    }
}

/// [`crate::math::gelu`] on 4 lanes (the same operations in the same order, multiply and add
/// unfused).
#[inline]
#[target_feature(enable = "simd128")]
fn gelu(x: v128) -> v128 {
    let a = f32x4_abs(x);
    // `pmin(a, b)` is `b < a ? b : a`: 15 for NaN, like `f32::min`.
    let s = f32x4_pmin(
        f32x4_splat(15.0),
        f32x4_mul(a, f32x4_splat(1.0 / GELU_STEP)),
    );
    let i = u32x4_trunc_sat_f32x4(s);
    let u = f32x4_sub(
        f32x4_add(
            f32x4_mul(f32x4_convert_u32x4(i), f32x4_splat(-GELU_STEP)),
            a,
        ),
        f32x4_splat(0.5 * GELU_STEP),
    );
    // Byte indices of the 4 bytes of entry `i` in a 64-byte table row.
    let idx = i32x4_add(
        i32x4_mul(i, i32x4_splat(0x0404_0404)),
        i32x4_splat(0x0302_0100),
    );
    let coef = |d: usize| {
        let t = GELU_TAIL[d].as_ptr() as *const v128;
        let mut r = i32x4_splat(0);
        for k in 0..4 {
            // SAFETY: a row of the table is 16 f32 values = four 16-byte quarters.
            let quarter = unsafe { v128_load(t.add(k)) };
            let local = i8x16_sub(idx, i8x16_splat(16 * k as i8));
            // Indices outside 0..16 (other quarters, wrapped below 0) select 0.
            r = v128_or(r, i8x16_swizzle(quarter, local));
        }
        r
    };
    let mut p = coef(7);
    for d in (0..7).rev() {
        p = f32x4_add(f32x4_mul(p, u), coef(d));
    }
    let inside = f32x4_lt(a, f32x4_splat(GELU_LIMIT));
    let tail = v128_and(inside, p);
    let negative = f32x4_lt(x, f32x4_splat(0.0));
    let phi = v128_bitselect(tail, f32x4_sub(f32x4_splat(1.0), tail), negative);
    f32x4_mul(x, phi)
}

/// `dst[j] = gelu(src[j])` for `j < n`; `dst` may be `src`.
///
/// # Safety
/// SIMD128; `src` valid for `n` reads, `dst` for `n` writes.
#[target_feature(enable = "simd128")]
pub(crate) unsafe fn gelu_row(dst: *mut f32, src: *const f32, n: usize) {
    let mut j = 0;
    while j + 4 <= n {
        // SAFETY: `j + 4 <= n`.
        unsafe {
            v128_store(
                dst.add(j) as *mut v128,
                gelu(v128_load(src.add(j) as *const v128)),
            )
        };
        j += 4;
    }
    if j < n {
        // The tail through the vector code as well (padded), so that every value gets the same
        // bits whatever its position.
        let mut lanes = [0f32; 4];
        // SAFETY: `n - j < 4` values are left in `src` and `dst`.
        unsafe {
            std::ptr::copy_nonoverlapping(src.add(j), lanes.as_mut_ptr(), n - j);
            let y = gelu(v128_load(lanes.as_ptr() as *const v128));
            v128_store(lanes.as_mut_ptr() as *mut v128, y);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), dst.add(j), n - j);
        }
    }
}

/// [`crate::math::exp`]'s polynomial on 4 lanes (round-to-nearest-even reduction, unfused).
#[inline]
#[target_feature(enable = "simd128")]
fn exp(x: v128) -> v128 {
    let x = f32x4_pmin(f32x4_pmax(x, f32x4_splat(-87.3)), f32x4_splat(88.3));
    let n = f32x4_nearest(f32x4_mul(x, f32x4_splat(LOG2E)));
    let r = f32x4_sub(x, f32x4_mul(n, f32x4_splat(LN2_HI)));
    let r = f32x4_sub(r, f32x4_mul(n, f32x4_splat(LN2_LO)));
    let mut p = f32x4_splat(1.987_569_1e-4);
    for c in crate::math::EXP_POLY {
        p = f32x4_add(f32x4_mul(p, r), f32x4_splat(c));
    }
    let p = f32x4_add(
        f32x4_add(f32x4_mul(p, f32x4_mul(r, r)), r),
        f32x4_splat(1.0),
    );
    // 2^n for n in [-126, 127] (after the clamp): the exponent field alone.
    let bits = i32x4_shl(i32x4_add(i32x4_trunc_sat_f32x4(n), i32x4_splat(127)), 23);
    f32x4_mul(p, bits)
}

/// [`crate::fast_math::masked_exp_sum`] on 4 lanes.
///
/// # Safety
/// SIMD128; `row` and `mask` have the same length.
#[target_feature(enable = "simd128")]
pub(crate) unsafe fn masked_exp_sum(row: &mut [f32], mask: &[f32], scale: f32, max: f32) -> f32 {
    let n = row.len().min(mask.len());
    let (vmax, vscale, half, floor) = (
        f32x4_splat(max),
        f32x4_splat(scale),
        f32x4_splat(0.5),
        f32x4_splat(-100.0),
    );
    let mut acc = f32x4_splat(0.0);
    let mut j = 0;
    while j + 4 <= n {
        // SAFETY: `j + 4 <= n` for both slices.
        unsafe {
            let x = v128_load(row.as_ptr().add(j) as *const v128);
            let m = v128_load(mask.as_ptr().add(j) as *const v128);
            let keep = f32x4_gt(m, half);
            let z = v128_bitselect(f32x4_sub(f32x4_mul(x, vscale), vmax), floor, keep);
            let e = f32x4_mul(exp(z), m);
            v128_store(row.as_mut_ptr().add(j) as *mut v128, e);
            acc = f32x4_add(acc, e);
        }
        j += 4;
    }
    let mut total = f32x4_extract_lane::<0>(acc)
        + f32x4_extract_lane::<1>(acc)
        + f32x4_extract_lane::<2>(acc)
        + f32x4_extract_lane::<3>(acc);
    for (x, &m) in row[j..n].iter_mut().zip(&mask[j..n]) {
        let z = if m > 0.5 { *x * scale - max } else { -100.0 };
        *x = crate::math::exp(z) * m;
        total += *x;
    }
    total
}

/// The minimum and maximum of `x` (`(inf, -inf)` when empty; NaN-free input).
#[target_feature(enable = "simd128")]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (f32x4_splat(f32::INFINITY), f32x4_splat(f32::NEG_INFINITY));
    let chunks = x.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        // SAFETY: a chunk holds 4 values.
        let v = unsafe { v128_load(c.as_ptr() as *const v128) };
        lo = f32x4_pmin(lo, v);
        hi = f32x4_pmax(hi, v);
    }
    let mut l = [0f32; 4];
    let mut h = [0f32; 4];
    // SAFETY: 4 values each.
    unsafe {
        v128_store(l.as_mut_ptr() as *mut v128, lo);
        v128_store(h.as_mut_ptr() as *mut v128, hi);
    }
    let pick = |a: f32, b: f32, less: bool| if (b < a) == less { b } else { a };
    let lo = l
        .into_iter()
        .chain(rest.iter().copied())
        .fold(f32::INFINITY, |a, b| pick(a, b, true));
    let hi = h
        .into_iter()
        .chain(rest.iter().copied())
        .fold(f32::NEG_INFINITY, |a, b| pick(a, b, false));
    (lo, hi)
}

/// `out[p] = clamp(round_ties_even(x[p] * inv) + zero, 0, 255)`: the scalar quantiser's codes.
#[target_feature(enable = "simd128")]
pub(crate) fn quantize_row(x: &[f32], inv: f32, zero: i32, out: &mut [u8]) {
    let n = x.len().min(out.len());
    let (vinv, vzero) = (f32x4_splat(inv), i32x4_splat(zero));
    let mut p = 0;
    while p + 16 <= n {
        // SAFETY: `p + 16 <= n` values of `x` and bytes of `out`.
        unsafe {
            let q = |o: usize| {
                let v = v128_load(x.as_ptr().add(p + o) as *const v128);
                i32x4_add(
                    i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(v, vinv))),
                    vzero,
                )
            };
            // Saturating narrows: i32 -> i16 -> u8 clamps to 0..=255.
            let lo = i16x8_narrow_i32x4(q(0), q(4));
            let hi = i16x8_narrow_i32x4(q(8), q(12));
            v128_store(
                out.as_mut_ptr().add(p) as *mut v128,
                u8x16_narrow_i16x8(lo, hi),
            );
        }
        p += 16;
    }
    for (d, &v) in out[p..n].iter_mut().zip(&x[p..n]) {
        let q = (v * inv).round_ties_even() as i32 + zero;
        *d = q.clamp(0, 255) as u8;
    }
}
