//! int8 GEMM for inference: `y = x · Wᵀ + b` with `W` quantised per output channel (symmetric
//! int8, `scale = max|w_row| / 127`) and `x` quantised per row at run time.
//!
//! Activations are quantised asymmetrically to **u8 with a zero point** per row:
//! `x ≈ s_x (q - z)` with `s_x = (max(x, 0) - min(x, 0)) / 255`. Two reasons:
//! - AVX512_VNNI's `vpdpbusd` multiplies *unsigned* bytes by *signed* bytes, so u8 activations
//!   are the operand it wants (s8 activations would need a +128 shift and the same correction);
//! - half of the backbone's linear inputs are skewed: the input of `output.dense` is a GELU
//!   output (>= -0.17), where a symmetric s8 code would leave almost half of its 256 values
//!   unused. The asymmetric range spends all 256 codes on `[min, max]`.
//!
//! The zero point costs one integer correction per output: with `Σ_p w_jp` precomputed per
//! weight row at packing time, `Σ_p (q_ip - z_i) w_jp = acc_ij - z_i Σ_p w_jp`, and
//! `y_ij = (s_x,i · s_w,j) · (acc_ij - z_i Σ_p w_jp) + b_j` (one fused multiply-add).
//!
//! Accumulation is exact in i32 on every kernel family, so all of them give bit-identical
//! outputs (tested): AVX-512 VNNI's `vpdpbusd` adds four u8·s8 products (each |·| <= 255·127)
//! to a 32-bit lane without saturation, so even `k = 65536` stays below 2³¹; AVX2 widens both
//! operands to i16 and multiplies pairs with `vpmaddwd` (exact; `vpmaddubsw` would saturate
//! pairs to i16 and is therefore not used); NEON runs `SDOT` where the core has it, widening
//! `vmull_s8` / `vpadalq_s16` otherwise, on activations shifted to s8 (`a - 128`) and corrected
//! with `128 Σ_p w_jp`; the portable scalar path computes the same integers. The f32 epilogue is
//! the same fused multiply-add everywhere.
//!
//! Weights are packed once ([`PackedI8::pack`]) into 32-column panels of 4-byte groups: for
//! each group of four `k` values, the 32 columns' four bytes lie next to each other, which is
//! one `vpdpbusd` operand per 16 columns.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::cpu::Isa;
pub(crate) use crate::tile::{MR, NR};

/// How many 4-byte groups of a panel the VNNI kernel prefetches ahead (64 x 128 bytes).
#[cfg(target_arch = "x86_64")]
const PREFETCH_Q: usize = 64;
/// Rows per parallel task (a multiple of `MR`).
const MC: usize = 96;

/// Per-output-channel symmetric int8 quantisation of a row-major `[n, k]` weight matrix:
/// `(q, scales)` with `w_jp ≈ scales[j] · q[j * k + p]`, `q` in `[-127, 127]` (round half to
/// even). An all-zero row gets scale 0.
pub fn quantize_weight_rows(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; n * k];
    let mut scales = vec![0f32; n];
    for j in 0..n {
        let row = &w[j * k..(j + 1) * k];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 || !amax.is_finite() {
            continue;
        }
        let scale = amax / 127.0;
        scales[j] = scale;
        let inv = 1.0 / scale;
        for (d, &v) in q[j * k..(j + 1) * k].iter_mut().zip(row) {
            *d = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
    (q, scales)
}

/// An int8 weight matrix `[n, k]` packed for the kernel, with its per-row scales and sums.
#[derive(Clone)]
pub struct PackedI8 {
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of 4, divided by 4.
    kq: usize,
    /// `ceil(n / NR)` panels of `kq · NR · 4` bytes (zero-padded).
    panels: Vec<i8>,
    /// `Σ_p w_jp` per row, padded to a whole panel with zeros.
    row_sums: Vec<i32>,
    /// Scale per row, padded with zeros.
    scales: Vec<f32>,
}

impl std::fmt::Debug for PackedI8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedI8 {{ n: {}, k: {} }}", self.n, self.k)
    }
}

impl PackedI8 {
    /// Packs a row-major `[n, k]` int8 matrix `q` with per-row `scales`.
    pub fn pack(q: &[i8], scales: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(q.len(), n * k, "PackedI8::pack: q is not n x k");
        assert_eq!(scales.len(), n, "PackedI8::pack: one scale per row");
        let kq = k.div_ceil(4);
        let npanels = n.div_ceil(NR);
        let stride = kq * NR * 4;
        let mut panels = vec![0i8; npanels * stride];
        let mut row_sums = vec![0i32; npanels * NR];
        let mut sc = vec![0f32; npanels * NR];
        for j in 0..n {
            let (jp, jj) = (j / NR, j % NR);
            let row = &q[j * k..(j + 1) * k];
            for (p, &v) in row.iter().enumerate() {
                panels[jp * stride + (p / 4) * NR * 4 + jj * 4 + p % 4] = v;
            }
            row_sums[j] = row.iter().map(|&v| v as i32).sum();
            sc[j] = scales[j];
        }
        Self {
            n,
            k,
            kq,
            panels,
            row_sums,
            scales: sc,
        }
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The row-major `[n, k]` int8 values and the scales (the inverse of [`PackedI8::pack`]).
    pub fn unpack(&self) -> (Vec<i8>, Vec<f32>) {
        let stride = self.kq * NR * 4;
        let mut q = vec![0i8; self.n * self.k];
        for j in 0..self.n {
            let (jp, jj) = (j / NR, j % NR);
            for p in 0..self.k {
                q[j * self.k + p] = self.panels[jp * stride + (p / 4) * NR * 4 + jj * 4 + p % 4];
            }
        }
        (q, self.scales[..self.n].to_vec())
    }

    /// Bytes held (packed weights, sums, scales).
    pub fn bytes(&self) -> usize {
        self.panels.len() + 4 * (self.row_sums.len() + self.scales.len())
    }
}

/// Activations of `m` rows quantised to u8: row `i` is `a[i * lda..][..k]` (`lda` = `k`
/// rounded up to a multiple of 4; padding bytes are 0), `x_ip ≈ scale[i] (a_ip - zero[i])`.
pub struct QuantizedRows {
    /// The codes.
    pub a: Vec<u8>,
    /// Row stride of `a`.
    pub lda: usize,
    /// Scale per row.
    pub scale: Vec<f32>,
    /// Zero point per row, in `[0, 255]`.
    pub zero: Vec<i32>,
}

/// The range parameters of one row from its minimum and maximum: `(scale, 1 / scale, zero)`.
/// The range always contains 0 (so that 0 is exact); a constant-zero row gets scale 1.
#[inline]
fn row_params(lo: f32, hi: f32) -> (f32, f32, i32) {
    let lo = lo.min(0.0);
    let hi = hi.max(0.0);
    let scale = (hi - lo) / 255.0;
    if !(scale > 0.0 && scale.is_finite()) {
        return (1.0, 1.0, 0);
    }
    let inv = 1.0 / scale;
    let zero = (-lo * inv).round_ties_even().clamp(0.0, 255.0) as i32;
    (scale, inv, zero)
}

/// Quantises one row (scalar). Returns `(scale, zero)`.
#[inline(always)]
fn quantize_row_scalar(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let (scale, inv, zero) = row_params(lo, hi);
    for (d, &v) in out.iter_mut().zip(x) {
        // `as i32` saturates; for finite inputs `v * inv` lies within [-256, 256].
        let q = (v * inv).round_ties_even() as i32 + zero;
        *d = q.clamp(0, 255) as u8;
    }
    (scale, zero)
}

/// Quantises one row with AVX-512 (same results as [`quantize_row_scalar`] for finite inputs:
/// min/max are exact, `cvtps2dq` rounds half to even like `round_ties_even`). AVX512VL is
/// enabled for the 128-bit masked byte store (without it the intrinsic is an out-of-line call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_row_avx512(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        let k = x.len();
        let mut vlo = _mm512_set1_ps(f32::INFINITY);
        let mut vhi = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut p = 0;
        while p + 16 <= k {
            let v = _mm512_loadu_ps(x.as_ptr().add(p));
            vlo = _mm512_min_ps(vlo, v);
            vhi = _mm512_max_ps(vhi, v);
            p += 16;
        }
        let mut lo = _mm512_reduce_min_ps(vlo);
        let mut hi = _mm512_reduce_max_ps(vhi);
        for &v in &x[p..] {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let (scale, inv, zero) = row_params(lo, hi);
        let vinv = _mm512_set1_ps(inv);
        let vzero = _mm512_set1_epi32(zero);
        let v0 = _mm512_setzero_si512();
        let v255 = _mm512_set1_epi32(255);
        let mut p = 0;
        while p < k {
            let n = (k - p).min(16);
            let mask: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
            let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(p));
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, vinv)), vzero);
            let q = _mm512_min_epi32(_mm512_max_epi32(q, v0), v255);
            _mm_mask_storeu_epi8(
                out.as_mut_ptr().add(p) as *mut i8,
                mask,
                _mm512_cvtepi32_epi8(q),
            );
            p += 16;
        }
        (scale, zero)
    }
}

/// [`quantize_row_scalar`] compiled for AVX2+FMA: `round_ties_even` becomes one `vroundps`
/// (SSE4.1) instead of a call to libm's `rintf` (11% of an int8 batch-32 forward on the AVX2
/// path), and the loops vectorise; the same operations, the same codes.
///
/// # Safety
/// AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    quantize_row_scalar(x, out)
}

/// Quantises the rows of a row-major `[m, k]` matrix to u8 (see [`QuantizedRows`]).
pub fn quantize_rows(x: &[f32], m: usize, k: usize) -> QuantizedRows {
    quantize_rows_on(crate::cpu::isa(), x, m, k)
}

/// [`quantize_rows`] with the row quantiser of `isa`'s family: a vector one on AVX-512, AVX2
/// and SIMD128, [`quantize_row_scalar`] elsewhere (the vector ones equal it code for code).
fn quantize_rows_on(isa: Isa, x: &[f32], m: usize, k: usize) -> QuantizedRows {
    assert!(x.len() >= m * k, "quantize_rows: x is shorter than m x k");
    let lda = k.div_ceil(4) * 4;
    let mut a = vec![0u8; m * lda];
    let mut params = vec![(0f32, 0i32); m];
    let run = |xr: &[f32], ar: &mut [u8]| -> (f32, i32) {
        #[cfg(target_arch = "x86_64")]
        if isa.avx512() {
            // SAFETY: AVX-512F/BW/VL are part of every AVX-512 family (checked when chosen).
            return unsafe { quantize_row_avx512(xr, &mut ar[..k]) };
        }
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx2Fma { .. }) {
            // SAFETY: the AVX2+FMA family is only chosen where the CPU has both.
            return unsafe { quantize_row_avx2(xr, &mut ar[..k]) };
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if isa == Isa::Simd128 {
            let (lo, hi) = crate::arch::wasm::min_max(xr);
            let (scale, inv, zero) = row_params(lo, hi);
            crate::arch::wasm::quantize_row(xr, inv, zero, &mut ar[..k]);
            return (scale, zero);
        }
        let _ = isa;
        quantize_row_scalar(xr, &mut ar[..k])
    };
    let rows_per_task = (16384 / lda.max(1)).max(1);
    if m * k >= 1 << 16 && lda > 0 {
        a.par_chunks_mut(lda * rows_per_task)
            .zip(params.par_chunks_mut(rows_per_task))
            .enumerate()
            .for_each(|(t, (ab, pb))| {
                for (r, (ar, pr)) in ab.chunks_mut(lda).zip(pb.iter_mut()).enumerate() {
                    let i = t * rows_per_task + r;
                    *pr = run(&x[i * k..(i + 1) * k], ar);
                }
            });
    } else if lda > 0 {
        for (i, (ar, pr)) in a.chunks_mut(lda).zip(params.iter_mut()).enumerate() {
            *pr = run(&x[i * k..(i + 1) * k], ar);
        }
    } else {
        params.iter_mut().for_each(|p| *p = (1.0, 0));
    }
    let (scale, zero) = params.into_iter().unzip();
    QuantizedRows {
        a,
        lda,
        scale,
        zero,
    }
}

/// The i32 accumulators of one `MR x NR` tile: `tile[i][j] = Σ_p a[i][p] · w[j][p]` over the
/// whole (padded) `k`. Rows `>= mr` repeat row 0 (their results are not used).
pub(crate) fn tile_scalar(
    kq: usize,
    a: &[u8],
    lda: usize,
    row0: usize,
    mr: usize,
    panel: &[i8],
    tile: &mut [[i32; NR]; MR],
) {
    for (i, trow) in tile.iter_mut().enumerate() {
        let r = if i < mr { row0 + i } else { row0 };
        let arow = &a[r * lda..r * lda + 4 * kq];
        trow.fill(0);
        for q in 0..kq {
            let av = &arow[4 * q..4 * q + 4];
            let bq = &panel[q * NR * 4..(q + 1) * NR * 4];
            for (j, acc) in trow.iter_mut().enumerate() {
                let b = &bq[4 * j..4 * j + 4];
                *acc = acc.wrapping_add(
                    av[0] as i32 * b[0] as i32
                        + av[1] as i32 * b[1] as i32
                        + av[2] as i32 * b[2] as i32
                        + av[3] as i32 * b[3] as i32,
                );
            }
        }
    }
}

/// [`tile_scalar`] with `vpdpbusd`: 24 zmm accumulators (12 rows x 2 x 16 columns), the four
/// bytes of each row broadcast to all lanes.
///
/// # Safety
/// AVX-512F/BW/VNNI must be available; `a` must hold rows `row0..row0 + mr` of `4 * kq`
/// bytes at stride `lda`, `panel` `kq * NR * 4` bytes.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_vnni(
    kq: usize,
    a: *const u8,
    lda: usize,
    mr: usize,
    panel: *const i8,
    tile: &mut [[i32; NR]; MR],
) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        // The smallest row count that covers `mr` (a 32-row batch-1 input is 12 + 12 + 8 rows).
        match mr {
            0..=4 => tile_vnni_rows::<4>(kq, a, lda, mr, panel, tile),
            5..=8 => tile_vnni_rows::<8>(kq, a, lda, mr, panel, tile),
            _ => tile_vnni_rows::<MR>(kq, a, lda, mr, panel, tile),
        }
    }
}

/// [`tile_vnni`] for `R` accumulator rows (`mr <= R <= MR`); fills the first `R` rows of `tile`.
///
/// # Safety
/// As [`tile_vnni`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni_rows<const R: usize>(
    kq: usize,
    a: *const u8,
    lda: usize,
    mr: usize,
    panel: *const i8,
    tile: &mut [[i32; NR]; MR],
) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        let mut rows = [a; R];
        for (i, r) in rows.iter_mut().enumerate().take(mr) {
            *r = a.add(i * lda);
        }
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        for q in 0..kq {
            // Weights stream from memory at small batch: fetch the panel a few KiB ahead (past
            // its end this touches the next panel, which comes next; a prefetch never faults).
            let ahead = panel.add((q + PREFETCH_Q) * NR * 4);
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.add(64));
            let b0 = _mm512_loadu_si512(panel.add(q * NR * 4) as *const _);
            let b1 = _mm512_loadu_si512(panel.add(q * NR * 4 + 64) as *const _);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32((rows[i].add(4 * q) as *const i32).read_unaligned());
                row[0] = _mm512_dpbusd_epi32(row[0], av, b0);
                row[1] = _mm512_dpbusd_epi32(row[1], av, b1);
            }
        }
        for (t, row) in tile.iter_mut().zip(&acc) {
            _mm512_storeu_si512(t.as_mut_ptr() as *mut _, row[0]);
            _mm512_storeu_si512(t.as_mut_ptr().add(16) as *mut _, row[1]);
        }
    }
}

/// Per-column parameters of one panel's epilogue.
struct Cols<'a> {
    scale: &'a [f32],
    sum: &'a [i32],
    bias: &'a [f32],
}

/// One tile's epilogue: the i32 accumulators of an `mr x nr` tile, the quantisation parameters
/// of its rows and columns, and where its f32 result goes.
struct Epilogue<'a> {
    tile: &'a [[i32; NR]; MR],
    mr: usize,
    nr: usize,
    /// Row scales and zero points (`mr` values each).
    sx: &'a [f32],
    zero: &'a [i32],
    cols: Cols<'a>,
    /// The tile's first output element; rows are `ldc` apart.
    c: *mut f32,
    ldc: usize,
}

impl Epilogue<'_> {
    /// Writes the tile with the epilogue of `isa`'s family (all give identical results).
    ///
    /// # Safety
    /// `c` must be valid for writes of `mr` rows of `nr` elements at stride `ldc`, and
    /// `cols.scale` and `cols.sum` hold `NR` values.
    unsafe fn write(&self, isa: Isa) {
        #[cfg(target_arch = "x86_64")]
        if isa.avx512() {
            // SAFETY: AVX-512F is part of every AVX-512 family; the bounds are the caller's.
            return unsafe { epilogue_avx512(self) };
        }
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx2Fma { .. }) {
            // SAFETY: the AVX2+FMA family was detected; the bounds are the caller's.
            return unsafe { epilogue_avx2(self) };
        }
        let _ = isa;
        // SAFETY: the bounds are the caller's.
        unsafe { epilogue_scalar(self) }
    }
}

/// `c[i][j] = (sx_i · sw_j) · (tile[i][j] - z_i · sum_j) + b_j` for `i < mr`, `j < nr`.
///
/// # Safety
/// `c` must be valid for writes of `mr` rows of `nr` elements at stride `ldc`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn epilogue_scalar(e: &Epilogue) {
    let Epilogue {
        tile,
        mr,
        nr,
        sx,
        zero,
        ref cols,
        c,
        ldc,
    } = *e;
    // SAFETY: covered by this unsafe fn's contract (pointer bounds), which the caller upholds.
    unsafe {
        for i in 0..mr {
            let cr = c.add(i * ldc);
            for j in 0..nr {
                let v = tile[i][j] - zero[i] * cols.sum[j];
                let s = sx[i] * cols.scale[j];
                // WebAssembly has no fused multiply-add instruction (`mul_add` is a slow
                // software `fmaf` there): multiply and add.
                #[cfg(target_arch = "wasm32")]
                let y = v as f32 * s + cols.bias[j];
                #[cfg(not(target_arch = "wasm32"))]
                let y = (v as f32).mul_add(s, cols.bias[j]);
                *cr.add(j) = y;
            }
        }
    }
}

/// [`epilogue_scalar`] compiled for AVX2+FMA: `mul_add` becomes one `vfmadd` instead of a call
/// to libm's software `fmaf` (5% of an int8 batch-32 forward on the AVX2 path), and the loop
/// vectorises; identical results (the same fused multiply-add).
///
/// # Safety
/// As [`epilogue_scalar`], plus AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn epilogue_avx2(e: &Epilogue) {
    // SAFETY: the contract is `epilogue_scalar`'s, which the caller upholds.
    unsafe { epilogue_scalar(e) }
}

/// [`epilogue_scalar`] with AVX-512 (identical results: the same integer correction, the same
/// product of scales, one fused multiply-add).
///
/// # Safety
/// As [`epilogue_scalar`], plus AVX-512F; `cols.scale` and `cols.sum` hold `NR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_avx512(e: &Epilogue) {
    let (tile, cols, c) = (e.tile, &e.cols, e.c);
    let (mr, nr, sx, zero, ldc) = (e.mr, e.nr, e.sx, e.zero, e.ldc);
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        let (m0, m1) = crate::sgemm::tail_masks(nr);
        let sw = [
            _mm512_loadu_ps(cols.scale.as_ptr()),
            _mm512_loadu_ps(cols.scale.as_ptr().add(16)),
        ];
        let sums = [
            _mm512_loadu_si512(cols.sum.as_ptr() as *const _),
            _mm512_loadu_si512(cols.sum.as_ptr().add(16) as *const _),
        ];
        let bias = [
            _mm512_maskz_loadu_ps(m0, cols.bias.as_ptr()),
            _mm512_maskz_loadu_ps(m1, cols.bias.as_ptr().add(16)),
        ];
        for i in 0..mr {
            let zi = _mm512_set1_epi32(zero[i]);
            let si = _mm512_set1_ps(sx[i]);
            let cr = c.add(i * ldc);
            for h in 0..2 {
                let acc = _mm512_loadu_si512(tile[i].as_ptr().add(16 * h) as *const _);
                let v = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zi, sums[h]));
                let y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(si, sw[h]), bias[h]);
                _mm512_mask_storeu_ps(cr.add(16 * h), if h == 0 { m0 } else { m1 }, y);
            }
        }
    }
}

#[derive(Clone, Copy)]
struct OutPtr<T>(*mut T);
// SAFETY: tasks write disjoint tiles of the output.
unsafe impl<T> Send for OutPtr<T> {}
// SAFETY: as for `Send`: the tasks sharing it write disjoint elements.
unsafe impl<T> Sync for OutPtr<T> {}
impl<T> OutPtr<T> {
    #[inline(always)]
    fn get(self) -> *mut T {
        self.0
    }
}

/// What the driver writes for each tile.
enum Sink<'a> {
    /// The dequantised f32 result with bias.
    F32 {
        c: OutPtr<f32>,
        bias: &'a [f32],
        /// Apply the exact GELU to each tile once written (the layer's activation, fused).
        gelu: bool,
    },
    /// The raw i32 accumulators (tests).
    I32 { c: OutPtr<i32> },
}

/// Runs every tile of `a · Wᵀ`, in parallel tasks of row blocks x panel groups.
fn drive(x: &QuantizedRows, m: usize, w: &PackedI8, isa: Isa, sink: &Sink) {
    let n = w.n;
    let npanels = n.div_ceil(NR);
    let stride = w.kq * NR * 4;
    let mblocks = m.div_ceil(MC);
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m * n * w.k >= 32 * 32 * 64;
    let (groups, per_group) = crate::sgemm::column_groups(mblocks, npanels, parallel);
    let task = |t: usize| {
        // Group-major order: rayon halves the task range, and each half then holds every row
        // block (a short last block no longer lands beside its twin on one thread).
        let (ib, g) = (t % mblocks, t / mblocks);
        let i0 = ib * MC;
        let mc = MC.min(m - i0);
        let (first, last) = (g * per_group, ((g + 1) * per_group).min(npanels));
        let mut tile_acc = [[0i32; NR]; MR];
        for jp in first..last {
            let j0 = jp * NR;
            let nr = NR.min(n - j0);
            let panel = &w.panels[jp * stride..(jp + 1) * stride];
            for ir in (0..mc).step_by(MR) {
                let row0 = i0 + ir;
                let mr = MR.min(mc - ir);
                let sums = &w.row_sums[j0..j0 + NR];
                tile(isa, w.kq, &x.a, x.lda, row0, mr, panel, sums, &mut tile_acc);
                match sink {
                    Sink::F32 { c, bias, gelu } => {
                        // SAFETY: the tile's rows and columns lie inside the m x n output,
                        // written by this task only.
                        let dst = unsafe { c.get().add(row0 * n + j0) };
                        let e = Epilogue {
                            tile: &tile_acc,
                            mr,
                            nr,
                            sx: &x.scale[row0..row0 + mr],
                            zero: &x.zero[row0..row0 + mr],
                            cols: Cols {
                                scale: &w.scales[j0..j0 + NR],
                                sum: &w.row_sums[j0..j0 + NR],
                                bias: &bias[j0..j0 + nr],
                            },
                            c: dst,
                            ldc: n,
                        };
                        // SAFETY: as above; `w.scales` and `w.row_sums` are padded to whole
                        // panels, so they hold `NR` values from `j0`.
                        unsafe {
                            e.write(isa);
                            #[cfg(target_arch = "x86_64")]
                            if *gelu && isa.avx512() {
                                crate::fast_math::gelu_tile_avx512(dst, n, mr, nr);
                                continue;
                            }
                            if *gelu {
                                for i in 0..mr {
                                    let row = std::slice::from_raw_parts_mut(dst.add(i * n), nr);
                                    crate::fast_math::gelu_in_place_on(isa, row);
                                }
                            }
                        }
                    }
                    Sink::I32 { c } => {
                        for (i, trow) in tile_acc.iter().enumerate().take(mr) {
                            for (j, &v) in trow.iter().enumerate().take(nr) {
                                // SAFETY: inside the m x n output, this task's tile.
                                unsafe { *c.get().add((row0 + i) * n + j0 + j) = v };
                            }
                        }
                    }
                }
            }
        }
    };
    let tasks = mblocks * groups;
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// `y[m, n] = x[m, k] · Wᵀ + bias` with `x` quantised per row to u8 and `W` the packed int8
/// weight; f32 output, on the selected kernel family.
pub fn int8_linear(x: &[f32], m: usize, w: &PackedI8, bias: &[f32], gelu: bool) -> Vec<f32> {
    assert!(x.len() >= m * w.k, "int8_linear: x is shorter than m x k");
    let xq = quantize_rows(x, m, w.k);
    int8_linear_quantized(&xq, m, w, bias, gelu)
}

/// [`int8_linear`] from activations already quantised by [`quantize_rows`] (several layers
/// reading one input, e.g. query, key and value, quantise it once).
pub fn int8_linear_quantized(
    xq: &QuantizedRows,
    m: usize,
    w: &PackedI8,
    bias: &[f32],
    gelu: bool,
) -> Vec<f32> {
    let n = w.n;
    assert!(
        xq.scale.len() >= m && xq.a.len() >= m * xq.lda && xq.lda == w.kq * 4,
        "int8_linear: quantised input does not match m x k"
    );
    assert_eq!(bias.len(), n, "int8_linear: one bias per output");
    let isa = crate::cpu::isa();
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let sink = Sink::F32 {
        c: OutPtr(y.as_mut_ptr()),
        bias,
        gelu,
    };
    drive(xq, m, w, isa, &sink);
    // SAFETY: every tile of the m x n output was written by `drive` (the tiles cover it).
    unsafe { y.set_len(m * n) };
    y
}

/// The integer products `a[m, k] · Wᵀ` (u8 x s8 -> i32) of quantised rows, on the selected
/// kernel family.
pub fn int8_gemm_i32(x: &QuantizedRows, m: usize, w: &PackedI8) -> Vec<i32> {
    assert!(x.a.len() >= m * x.lda && x.lda == w.kq * 4);
    let mut c = vec![0i32; m * w.n];
    let sink = Sink::I32 {
        c: OutPtr(c.as_mut_ptr()),
    };
    drive(x, m, w, crate::cpu::isa(), &sink);
    c
}

/// The i32 accumulators of one `MR x NR` tile (rows `row0..row0 + mr` of `a`, one panel) on
/// `isa`'s kernel; `sums` are the panel's `Σ_p w_jp` (the NEON kernels' correction).
#[allow(clippy::too_many_arguments)]
fn tile(
    isa: Isa,
    kq: usize,
    a: &[u8],
    lda: usize,
    row0: usize,
    mr: usize,
    panel: &[i8],
    sums: &[i32],
    acc: &mut [[i32; NR]; MR],
) {
    assert!(a.len() >= (row0 + mr) * lda && panel.len() >= kq * NR * 4 && sums.len() >= NR);
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        all(target_arch = "wasm32", target_feature = "simd128")
    ))]
    let rows = a[row0 * lda..].as_ptr();
    let _ = sums;
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: VNNI selected; rows row0..row0+mr of `lda` bytes and the panel's
        // `kq * NR * 4` bytes exist (asserted above).
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe {
            tile_vnni(kq, rows, lda, mr, panel.as_ptr(), acc)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 selected; operands as above.
        Isa::Avx2Fma { vnni: false } => unsafe {
            crate::arch::avx2::qgemm_tile(kq, rows, lda, mr, panel.as_ptr(), acc)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and AVX-VNNI selected; operands as above.
        Isa::Avx2Fma { vnni: true } => unsafe {
            crate::arch::avx2::qgemm_tile_vnni(kq, rows, lda, mr, panel.as_ptr(), acc)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON (and SDOT when `dotprod`) selected; operands as above.
        Isa::Neon { dotprod } => unsafe {
            crate::arch::neon::qgemm_tile(dotprod, kq, rows, lda, mr, panel.as_ptr(), sums, acc)
        },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        // SAFETY: SIMD128 selected; operands as above.
        Isa::Simd128 => unsafe {
            crate::arch::wasm::qgemm_tile(kq, rows, lda, mr, panel.as_ptr(), acc)
        },
        _ => tile_scalar(kq, a, lda, row0, mr, panel, acc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// The naive integer reference: `Σ_p a_ip · w_jp` from the unpacked matrices.
    fn naive(a: &QuantizedRows, q: &[i8], m: usize, n: usize, k: usize) -> Vec<i32> {
        let mut c = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a.a[i * a.lda + p] as i32 * q[j * k + p] as i32)
                    .sum();
            }
        }
        c
    }

    const SHAPES: [(usize, usize, usize); 10] = [
        (1, 1, 1),
        (1, 384, 384),
        (3, 5, 7),
        (13, 33, 63),
        (12, 32, 4),
        (25, 70, 130),
        (97, 31, 257),
        (130, 65, 1537),
        (2, 1000, 9),
        // Batch-1 rows: 12 + 12 + 8 (the 8-row kernel).
        (32, 64, 384),
    ];

    fn case(m: usize, n: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<i8>, Vec<f32>) {
        let mut s = seed;
        // Extreme codes included: weights hit +-127, activations 0 and 255.
        let x: Vec<f32> = (0..m * k)
            .map(|_| (lcg(&mut s) % 2001) as f32 / 100.0 - 7.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|_| (lcg(&mut s) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let (q, sc) = quantize_weight_rows(&w, n, k);
        (x, q, sc)
    }

    #[test]
    fn kernel_equals_naive_integer_reference_on_awkward_shapes() {
        for (t, &(m, n, k)) in SHAPES.iter().enumerate() {
            let (x, q, sc) = case(m, n, k, t as u64 + 1);
            let w = PackedI8::pack(&q, &sc, n, k);
            let a = quantize_rows(&x, m, k);
            let want = naive(&a, &q, m, n, k);
            for isa in crate::cpu::supported() {
                let got = crate::cpu::with_isa(isa, || int8_gemm_i32(&a, m, &w));
                assert_eq!(got, want, "{m}x{n}x{k} on {isa}");
            }
        }
        eprintln!("int8 kernels checked on {:?}", crate::cpu::supported());
    }

    #[test]
    fn simd_and_scalar_paths_give_identical_f32_outputs() {
        for (t, &(m, n, k)) in SHAPES.iter().enumerate() {
            let (x, q, sc) = case(m, n, k, 100 + t as u64);
            let w = PackedI8::pack(&q, &sc, n, k);
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01 - 0.3).collect();
            let slow = crate::cpu::with_isa(Isa::Scalar, || int8_linear(&x, m, &w, &bias, false));
            let fast = int8_linear(&x, m, &w, &bias, false);
            assert_eq!(fast, slow, "{m}x{n}x{k}");
            // The fused GELU is the family's GELU of the same output (the scalar one's bits
            // everywhere but on SIMD128, see `fast_math`'s tests).
            for isa in crate::cpu::supported() {
                let want = crate::cpu::with_isa(isa, || {
                    let mut want = fast.clone();
                    crate::fast_math::gelu_in_place(&mut want);
                    want
                });
                let got = crate::cpu::with_isa(isa, || int8_linear(&x, m, &w, &bias, true));
                assert_eq!(got, want, "{m}x{n}x{k} GELU on {isa}");
                let plain = crate::cpu::with_isa(isa, || int8_linear(&x, m, &w, &bias, false));
                assert_eq!(plain, slow, "{m}x{n}x{k} on {isa}");
            }
            // And the quantisers agree code for code.
            let qa = quantize_rows(&x, m, k);
            let qb = quantize_rows_on(Isa::Scalar, &x, m, k);
            assert_eq!(qa.a, qb.a);
            assert_eq!(qa.zero, qb.zero);
            assert_eq!(qa.scale, qb.scale);
        }
    }

    #[test]
    fn output_is_close_to_the_f32_product() {
        let (m, n, k) = (37, 45, 384);
        let (x, _, _) = case(m, n, k, 7);
        let mut s = 9u64;
        let w: Vec<f32> = (0..n * k)
            .map(|_| (lcg(&mut s) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let (q, sc) = quantize_weight_rows(&w, n, k);
        let packed = PackedI8::pack(&q, &sc, n, k);
        let bias = vec![0.5f32; n];
        let y = int8_linear(&x, m, &packed, &bias, false);
        let mut max_err = 0f64;
        let mut max_ref = 0f64;
        for i in 0..m {
            for j in 0..n {
                let r: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum::<f64>()
                    + 0.5;
                max_err = max_err.max((y[i * n + j] as f64 - r).abs());
                max_ref = max_ref.max(r.abs());
            }
        }
        // Row ranges of ~20 and |w| <= 1: per-element errors ~0.04 and ~0.004 summed over
        // k = 384 mostly cancel; the bound is loose on purpose.
        assert!(
            max_err < 0.02 * max_ref,
            "max error {max_err} vs max |y| {max_ref}"
        );
    }

    #[test]
    fn weight_quantisation_round_trips_through_packing() {
        let (n, k) = (70, 13);
        let (_, q, sc) = case(1, n, k, 3);
        assert!(q.iter().all(|&v| v >= -127));
        assert!(q.iter().any(|&v| v.abs() == 127));
        let w = PackedI8::pack(&q, &sc, n, k);
        assert_eq!(w.unpack(), (q, sc));
    }

    #[test]
    fn activation_rows_use_zero_point_and_edge_cases_do_not_panic() {
        let x = [
            0.0f32,
            0.0,
            0.0,
            1.0,
            2.0,
            -1.0,
            f32::NAN,
            3.0,
            f32::INFINITY,
        ];
        let q = quantize_rows(&x, 3, 3);
        assert_eq!(q.lda, 4);
        // All-zero row: scale 1, zero point 0, codes 0.
        assert_eq!((q.scale[0], q.zero[0]), (1.0, 0));
        assert_eq!(&q.a[0..4], &[0, 0, 0, 0]);
        // [1, 2, -1]: range [-1, 2], zero point round(1 / (3/255)) = 85.
        assert_eq!(q.zero[1], 85);
        assert_eq!(q.a[4 + 1], 255);
        assert_eq!(q.a[4 + 2], 0);
        // Non-finite values give some codes, never a panic.
        let _ = quantize_rows_on(Isa::Scalar, &x, 3, 3);
    }
}
