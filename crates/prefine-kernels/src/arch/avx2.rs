//! x86-64 AVX2+FMA kernels ([`crate::cpu::Isa::Avx2Fma`]): 16 ymm registers of 8 lanes.
//!
//! - f32 GEMM: the 12 x 32 tile in sub-tiles of up to 6 rows x 16 columns (12 accumulators,
//!   two `B` vectors and one broadcast: 15 registers), reading the panels every family shares.
//! - int8 GEMM: with AVX-VNNI, `vpdpbusd` on ymm straight from the packed panels (sub-tiles of
//!   6 rows x 16 columns); without it, u8 activations (widened once per tile) and s8 weights
//!   widened to i16, pairs multiplied and added by `vpmaddwd` into i32 (exact: `vpmaddubsw`
//!   would saturate), sub-tiles of 6 rows x 8 columns.
//! - GELU: the table-polynomial GELU of [`crate::math::gelu`] with the table permuted per lane
//!   (`vpermps` on each half of the 16 intervals), the same operations: the same bits.
//! - softmax numerators: `exp` with the polynomial of [`crate::math::exp`].

use std::arch::x86_64::*;

use crate::math::{GELU_LIMIT, GELU_STEP, GELU_TAIL, LN2_HI, LN2_LO, LOG2E};
use crate::tile::{by_rows, ASource, Tile, MR, NR};

/// Rows per f32 sub-tile.
const ROWS: usize = 6;

/// One `t.mr x t.nr` tile of `C (+)= A · Bpanel` (see [`crate::arch::scalar::sgemm_tile`]).
///
/// # Safety
/// AVX2 and FMA; operands as [`crate::arch::scalar::sgemm_tile`].
#[target_feature(enable = "avx2,fma")]
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

/// `R` rows x 16 columns: element `(i, p)` of `A` at `ap[i * rs + p * ps]`, row `p` of the
/// 16 `B` columns at `bp[p * NR..]`.
///
/// # Safety
/// AVX2+FMA; `t.mr == R`, `t.nr <= 16`; the operands hold what the loops read.
#[target_feature(enable = "avx2,fma")]
unsafe fn sub_tile<const R: usize>(
    kc: usize,
    ap: *const f32,
    rs: usize,
    ps: usize,
    bp: *const f32,
    t: Tile,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..kc {
        // SAFETY: panel row `p < kc` holds `NR >= 16` values; `A`'s rows `i < R` at depth `p`.
        unsafe {
            let b0 = _mm256_loadu_ps(bp.add(p * NR));
            let b1 = _mm256_loadu_ps(bp.add(p * NR + 8));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*ap.add(i * rs + p * ps));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
    }
    // SAFETY: the tile's contract is this function's.
    unsafe { store(&acc, t) }
}

/// Stores `R` rows of two 8-lane halves: full halves with vector code, a partial one through
/// the scalar store (the same operations: the same bits).
///
/// # Safety
/// AVX2+FMA; `t` as [`crate::arch::scalar::store_tile`] with `t.mr <= R`, `t.nr <= 16`.
#[target_feature(enable = "avx2,fma")]
unsafe fn store<const R: usize>(acc: &[[__m256; 2]; R], t: Tile) {
    for (i, row) in acc.iter().enumerate().take(t.mr) {
        for (h, &v) in row.iter().enumerate() {
            let j = 8 * h;
            if j >= t.nr {
                break;
            }
            // SAFETY: row `i < t.mr`, columns `j..j + 8` (or the `t.nr - j` left) of the tile
            // and of the bias.
            unsafe {
                let c = t.c.add(i * t.ldc + j);
                let bias = if t.bias.is_null() {
                    t.bias
                } else {
                    t.bias.add(j)
                };
                if t.nr - j < 8 {
                    let mut lanes = [0f32; 8];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
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
                    _mm256_loadu_ps(c)
                } else if bias.is_null() {
                    _mm256_setzero_ps()
                } else {
                    _mm256_loadu_ps(bias)
                };
                let y = _mm256_add_ps(start, v);
                _mm256_storeu_ps(c, if t.gelu { gelu(y) } else { y });
            }
        }
    }
}

/// Int8 rows per sub-tile and columns per block.
const QROWS: usize = 6;

thread_local! {
    /// The tile's activations widened to i16 (see [`qgemm_tile`]).
    static WIDENED: crate::cpu::ScratchI16 = const { std::cell::RefCell::new(Vec::new()) };
}

/// The i32 products of one `MR x NR` tile: `acc[i][j] = Σ_p a[i][p] · w[j][p]` for rows
/// `i < mr` (rows past `mr` are left as they are).
///
/// The rows' four bytes per group are widened to i16 once per tile (not once per 8-column
/// block: four times fewer widenings), so that each row and group costs the sub-tile one
/// 64-bit broadcast load.
///
/// # Safety
/// AVX2; `a` holds `mr` rows of `4 * kq` bytes at stride `lda`, `panel` `kq * NR * 4` bytes.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn qgemm_tile(
    kq: usize,
    a: *const u8,
    lda: usize,
    mr: usize,
    panel: *const i8,
    acc: &mut [[i32; NR]; MR],
) {
    crate::cpu::with_buffer(&WIDENED, mr * kq * 4, |wide| {
        for i in 0..mr {
            let (src, dst) = (
                a.wrapping_add(i * lda),
                wide[i * kq * 4..(i + 1) * kq * 4].as_mut_ptr(),
            );
            let mut q = 0;
            while q + 4 <= kq {
                // SAFETY: 16 bytes of row `i < mr` from group `q` (`q + 4 <= kq`) and 16 i16
                // of its widened copy.
                unsafe {
                    let bytes = _mm_loadu_si128(src.add(4 * q) as *const __m128i);
                    let w = _mm256_cvtepu8_epi16(bytes);
                    _mm256_storeu_si256(dst.add(4 * q) as *mut __m256i, w);
                }
                q += 4;
            }
            for q in q..kq {
                for b in 0..4 {
                    // SAFETY: byte `b` of group `q < kq` of row `i < mr`.
                    unsafe { *dst.add(4 * q + b) = *src.add(4 * q + b) as i16 };
                }
            }
        }
        let mut i0 = 0;
        while i0 < mr {
            let rows = (mr - i0).min(QROWS);
            for blk in 0..NR / 8 {
                // SAFETY: rows `i0..i0 + rows` of the widened activations, columns
                // `8 blk..8 blk + 8` of the panel.
                unsafe {
                    let a0 = wide.as_ptr().add(i0 * kq * 4);
                    let out = &mut acc[i0..i0 + rows];
                    by_rows!(rows, QROWS, q_sub(kq, a0, panel, blk, out))
                }
            }
            i0 += QROWS;
        }
    });
}

/// `R` rows x the 8 columns of block `blk`: two accumulators per row, each holding 4 columns
/// x 2 partial sums (`vpmaddwd` adds pairs of the 4 products of a group), folded at the end.
///
/// # Safety
/// AVX2; `wide` holds `R` rows of `kq * 4` i16; the panel as [`qgemm_tile`];
/// `out.len() == R`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q_sub<const R: usize>(
    kq: usize,
    wide: *const i16,
    panel: *const i8,
    blk: usize,
    out: &mut [[i32; NR]],
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for q in 0..kq {
        // SAFETY: group `q < kq` of the panel (128 bytes) and of each row `i < R` (4 i16).
        unsafe {
            let wq = panel.add(q * NR * 4 + blk * 32);
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wq as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wq.add(16) as *const __m128i));
            for (i, row) in acc.iter_mut().enumerate() {
                let four = (wide.add((i * kq + q) * 4) as *const i64).read_unaligned();
                let av = _mm256_set1_epi64x(four);
                row[0] = _mm256_add_epi32(row[0], _mm256_madd_epi16(av, w0));
                row[1] = _mm256_add_epi32(row[1], _mm256_madd_epi16(av, w1));
            }
        }
    }
    for (o, row) in out.iter_mut().zip(&acc) {
        // [c0 c1 c4 c5 | c2 c3 c6 c7] -> c0..c7.
        let folded = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(row[0], row[1]));
        // SAFETY: columns `8 blk..8 blk + 8` of an `NR`-wide row.
        unsafe { _mm256_storeu_si256(o.as_mut_ptr().add(blk * 8) as *mut __m256i, folded) };
    }
}

/// [`qgemm_tile`] with AVX-VNNI: `vpdpbusd` on ymm multiplies the four u8 activations of a
/// group, broadcast to every lane, with the four s8 weights of 8 columns and adds the products
/// into i32 lanes without saturation: 32 multiply-adds per instruction, the same integers as
/// every other family. Sub-tiles of 6 rows x 16 columns (12 accumulators, two weight vectors,
/// one broadcast: 15 registers), the panel's 4-byte groups read as they are packed.
///
/// # Safety
/// AVX2 and AVX-VNNI; operands as [`qgemm_tile`].
#[target_feature(enable = "avx2,fma,avxvnni")]
pub(crate) unsafe fn qgemm_tile_vnni(
    kq: usize,
    a: *const u8,
    lda: usize,
    mr: usize,
    panel: *const i8,
    acc: &mut [[i32; NR]; MR],
) {
    let mut i0 = 0;
    while i0 < mr {
        let rows = (mr - i0).min(QROWS);
        for half in 0..NR / 16 {
            // SAFETY: rows `i0..i0 + rows` of `a`, columns `16 half..16 half + 16` of the
            // panel.
            unsafe {
                let a0 = a.add(i0 * lda);
                let out = &mut acc[i0..i0 + rows];
                by_rows!(rows, QROWS, vnni_sub(kq, a0, lda, panel, half, out))
            }
        }
        i0 += QROWS;
    }
}

/// `R` rows x the 16 columns of `half` (two ymm of 8 columns each).
///
/// # Safety
/// AVX2 and AVX-VNNI; as [`qgemm_tile_vnni`], `out.len() == R`.
#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn vnni_sub<const R: usize>(
    kq: usize,
    a: *const u8,
    lda: usize,
    panel: *const i8,
    half: usize,
    out: &mut [[i32; NR]],
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for q in 0..kq {
        // SAFETY: group `q < kq` of the panel (its 64 bytes of this half at `64 half`) and the
        // four bytes of each row `i < R` at group `q`.
        unsafe {
            let wq = panel.add(q * NR * 4 + half * 64);
            let w0 = _mm256_loadu_si256(wq as *const __m256i);
            let w1 = _mm256_loadu_si256(wq.add(32) as *const __m256i);
            for (i, row) in acc.iter_mut().enumerate() {
                let four = (a.add(i * lda + 4 * q) as *const i32).read_unaligned();
                let av = _mm256_set1_epi32(four);
                row[0] = _mm256_dpbusd_avx_epi32(row[0], av, w0);
                row[1] = _mm256_dpbusd_avx_epi32(row[1], av, w1);
            }
        }
    }
    for (o, row) in out.iter_mut().zip(&acc) {
        // SAFETY: columns `16 half..16 half + 16` of an `NR`-wide row.
        unsafe {
            _mm256_storeu_si256(o.as_mut_ptr().add(16 * half) as *mut __m256i, row[0]);
            _mm256_storeu_si256(o.as_mut_ptr().add(16 * half + 8) as *mut __m256i, row[1]);
        }
    }
}

/// [`crate::math::gelu`] on 8 lanes (the same operations in the same order).
#[target_feature(enable = "avx2,fma")]
fn gelu(x: __m256) -> __m256 {
    let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
    let s = _mm256_min_ps(
        _mm256_mul_ps(a, _mm256_set1_ps(1.0 / GELU_STEP)),
        _mm256_set1_ps(15.0),
    );
    let i = _mm256_cvttps_epi32(s);
    let u = _mm256_sub_ps(
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(-GELU_STEP), a),
        _mm256_set1_ps(0.5 * GELU_STEP),
    );
    let high = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(7)));
    let coef = |d: usize| {
        // SAFETY: each row of the table holds 16 values: two loads of 8.
        let (lo, hi) = unsafe {
            (
                _mm256_loadu_ps(GELU_TAIL[d].as_ptr()),
                _mm256_loadu_ps(GELU_TAIL[d].as_ptr().add(8)),
            )
        };
        _mm256_blendv_ps(
            _mm256_permutevar8x32_ps(lo, i),
            _mm256_permutevar8x32_ps(hi, i),
            high,
        )
    };
    let mut p = coef(7);
    for d in (0..7).rev() {
        p = _mm256_fmadd_ps(p, u, coef(d));
    }
    let inside = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(GELU_LIMIT));
    let tail = _mm256_and_ps(p, inside);
    let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
    let phi = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0), tail), tail, negative);
    _mm256_mul_ps(x, phi)
}

/// `dst[j] = gelu(src[j])` for `j < n`; `dst` may be `src`.
///
/// # Safety
/// AVX2+FMA; `src` valid for `n` reads, `dst` for `n` writes.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gelu_row(dst: *mut f32, src: *const f32, n: usize) {
    let mut j = 0;
    while j + 8 <= n {
        // SAFETY: `j + 8 <= n`.
        unsafe { _mm256_storeu_ps(dst.add(j), gelu(_mm256_loadu_ps(src.add(j)))) };
        j += 8;
    }
    for j in j..n {
        // SAFETY: `j < n`.
        unsafe { *dst.add(j) = crate::math::gelu(*src.add(j)) };
    }
}

/// [`crate::math::exp`]'s polynomial on 8 lanes (round-to-nearest-even reduction).
#[target_feature(enable = "avx2,fma")]
fn exp(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.3),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(LOG2E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in crate::math::EXP_POLY {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    // 2^n for n in [-126, 127] (after the clamp): the exponent field alone.
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

/// [`crate::fast_math::masked_exp_sum`] on 8 lanes.
///
/// # Safety
/// AVX2+FMA; `row` and `mask` have the same length.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn masked_exp_sum(row: &mut [f32], mask: &[f32], scale: f32, max: f32) -> f32 {
    let n = row.len().min(mask.len());
    let (vscale, vmax, half) = (
        _mm256_set1_ps(scale),
        _mm256_set1_ps(max),
        _mm256_set1_ps(0.5),
    );
    let floor = _mm256_set1_ps(-100.0);
    let mut acc = _mm256_setzero_ps();
    let mut j = 0;
    while j + 8 <= n {
        // SAFETY: `j + 8 <= n` for both slices.
        unsafe {
            let x = _mm256_loadu_ps(row.as_ptr().add(j));
            let m = _mm256_loadu_ps(mask.as_ptr().add(j));
            let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(m, half);
            let z = _mm256_blendv_ps(floor, _mm256_fmsub_ps(x, vscale, vmax), keep);
            let e = _mm256_mul_ps(exp(z), m);
            _mm256_storeu_ps(row.as_mut_ptr().add(j), e);
            acc = _mm256_add_ps(acc, e);
        }
        j += 8;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: 8 values into an array of 8.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    let mut total: f32 = lanes.iter().sum();
    for (x, &m) in row[j..n].iter_mut().zip(&mask[j..n]) {
        let z = if m > 0.5 { *x * scale - max } else { -100.0 };
        *x = crate::math::exp(z) * m;
        total += *x;
    }
    total
}
