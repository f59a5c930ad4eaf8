//! bf16 GEMM on AVX512_BF16 dot products (`vdpbf16ps`): `C (+)= A · B` with both operands
//! rounded to bf16 (nearest, ties to even, as [`crate::cpu::round_bf16`]) while they are
//! packed, and products accumulated in f32.
//!
//! One `vdpbf16ps` multiplies 32 bf16 pairs and adds them into 16 f32 lanes: twice the
//! multiply-adds of an f32 FMA of the same width, so on a CPU with AVX512_BF16 (AMD Zen 4/5,
//! Intel Sapphire Rapids) the bf16 mixed-precision GEMMs run on the bf16 units instead of
//! multiplying rounded values on the f32 ones. The blocking is [`crate::sgemm`]'s (a 12 x 32
//! register tile, the same `KC`, `MC`, `NC`); the packed panels hold pairs of consecutive `k`
//! values as one 32-bit lane: `A` panels `[k / 2][MR]`, `B` panels `[k / 2][NR]` (an odd `k`
//! pairs its last value with a zero).
//!
//! Numerics: each product of two bf16 values is exact in f32; the instruction rounds the sum of
//! a pair of products into the accumulator (ties to even) and treats subnormal values as zero,
//! so results differ from the f32-FMA path on the same rounded operands by f32 rounding only.
//! `PREFINE_BF16_NATIVE=0` keeps the f32-FMA path (for comparisons).

//! x86-64 only (the module is compiled there alone); runs where [`crate::cpu::isa`] is
//! [`crate::cpu::Isa::Avx512Bf16`].

use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::cpu::{with_buffer, MatRef};
use crate::sgemm::{
    column_groups, empty_product, pack_a_panels, pack_b_panel, store_tile, OutPtr, Start, Tile, KC,
    MC, MR, NC, NR,
};

thread_local! {
    /// f32 staging of one panel (`A` row block or `B` panel) before it is paired.
    static STAGE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Paired panels of `A` for one row block.
    static A_PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Paired panels of `B` for one `(NC, KC)` block (the calling thread's).
    static B_PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// bf16 bits of 16 f32 lanes, rounded to nearest with ties to even (NaN stays a quiet NaN), in
/// the low half of each 32-bit lane.
#[inline(always)]
unsafe fn round_lanes(v: __m512) -> __m512i {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        let bits = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let r = _mm512_srli_epi32::<16>(_mm512_add_epi32(
            bits,
            _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb),
        ));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(0x40));
        _mm512_mask_mov_epi32(r, nan, quiet)
    }
}

/// Pairs the rows of an f32 panel (`rows` rows of `lanes` values, row-major, `lanes <= 32`):
/// `dst[q * lanes + j] = bf16(src[2q][j]) | bf16(src[2q + 1][j]) << 16`, with a zero for the row
/// past an odd `rows`.
///
/// # Safety
/// AVX-512F; `src` holds `rows * lanes` values, `dst` `rows.div_ceil(2) * lanes`.
#[target_feature(enable = "avx512f")]
unsafe fn pair_rows(src: &[f32], rows: usize, lanes: usize, dst: &mut [u32]) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        debug_assert!(lanes <= 32 && src.len() >= rows * lanes);
        let pairs = rows.div_ceil(2);
        debug_assert!(dst.len() >= pairs * lanes);
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        for q in 0..pairs {
            let lo = s.add(2 * q * lanes);
            let odd_last = 2 * q + 1 == rows;
            for j in (0..lanes).step_by(16) {
                let m: __mmask16 = if lanes - j >= 16 {
                    0xFFFF
                } else {
                    ((1u32 << (lanes - j)) - 1) as u16
                };
                let even = round_lanes(_mm512_maskz_loadu_ps(m, lo.add(j)));
                let odd = if odd_last {
                    _mm512_setzero_si512()
                } else {
                    round_lanes(_mm512_maskz_loadu_ps(m, lo.add(lanes + j)))
                };
                let pair = _mm512_or_si512(even, _mm512_slli_epi32::<16>(odd));
                _mm512_mask_storeu_epi32(d.add(q * lanes + j) as *mut i32, m, pair);
            }
        }
    }
}

/// A weight `W[n, k]` (the `B = Wᵀ` operand of `x · Wᵀ`) held as bf16 pairs in the kernel's
/// panel layout: for each `NC` block of outputs and each `KC` block of inputs, that block's
/// NR-wide panels of `kc.div_ceil(2)` pair rows. bf16 inference weights use it: no packing, no
/// widening per call, and 2 bytes per value (plus the padding of a last partial panel).
#[derive(Clone)]
pub struct PairedB {
    n: usize,
    k: usize,
    data: Vec<u32>,
}

impl PairedB {
    /// Packs `w[n, k]` (row-major), rounding to bf16. Needs AVX-512F.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "PairedB::pack: weight is not n x k");
        assert!(crate::cpu::isa().avx512(), "PairedB needs AVX-512F");
        let b = MatRef::transposed(w, k);
        let mut data = Vec::new();
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let at = data.len();
                data.resize(at + nc.div_ceil(NR) * kc.div_ceil(2) * NR, 0);
                pack_b_pairs(b, p0, kc, j0, nc, &mut data[at..], false);
            }
        }
        Self { n, k, data }
    }

    /// `(n, k)`: outputs and inputs of the weight.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.data.len()
    }

    /// The panels of the block at outputs `j0..j0 + nc`, inputs `p0..p0 + kc` (`j0` a multiple
    /// of `NC`, `p0` of `KC`): each earlier column block is `NC` wide and holds `pair_rows_for(k)`
    /// pair rows per column, and each earlier depth block of this one `KC / 2`.
    fn block(&self, j0: usize, p0: usize, nc: usize, kc: usize) -> &[u32] {
        let panels = nc.div_ceil(NR);
        let start = j0 * pair_rows_for(self.k) + panels * NR * (p0 / 2);
        &self.data[start..start + panels * kc.div_ceil(2) * NR]
    }

    /// The row-major `[n, k]` bf16 bits.
    pub fn to_bits(&self) -> Vec<u16> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0u16; n * k];
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let kq = kc.div_ceil(2);
                let block = self.block(j0, p0, nc, kc);
                for j in 0..nc {
                    let panel = &block[(j / NR) * kq * NR..];
                    for p in 0..kc {
                        let pair = panel[(p / 2) * NR + j % NR];
                        w[(j0 + j) * k + p0 + p] = (pair >> (16 * (p % 2))) as u16;
                    }
                }
            }
        }
        w
    }
}

/// Where the bf16 kernel's `B` panels come from.
#[derive(Clone, Copy)]
pub(crate) enum PairSource<'a> {
    /// Any strided matrix, rounded and paired block by block on every call.
    Strided(MatRef<'a>),
    /// A weight paired beforehand.
    Packed(&'a PairedB),
}

// Depth blocks pair on their own: every block but the last must have an even length.
const _: () = assert!(KC.is_multiple_of(2));

/// Pair rows per column of a depth-`k` operand split into `KC` blocks (each block pairs on its
/// own; every block but the last has the even length `KC`).
fn pair_rows_for(k: usize) -> usize {
    (k / KC) * (KC / 2) + (k % KC).div_ceil(2)
}

/// `C[m, n] (+)= A[m, k] · B[k, n]` with both operands rounded to bf16 and f32 accumulation,
/// `C` row-major at row stride `ldc`, on up to all pool threads when `parallel`. With `gelu`,
/// the exact GELU is applied to each tile after its last product.
///
/// # Safety
/// AVX512_BF16 (`crate::cpu::Isa::Avx512Bf16`) must hold; `c` must be valid for `m` rows of `n` elements at stride `ldc`, not
/// aliased by `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: PairSource,
    c: *mut f32,
    ldc: usize,
    start: Start,
    parallel: bool,
    gelu: bool,
) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        if let PairSource::Packed(p) = b {
            assert_eq!((p.n, p.k), (n, k), "bf16 gemm: packed weight shape");
        }
        if empty_product(m, n, k, c, ldc, start) {
            if gelu && k == 0 {
                for i in 0..m {
                    crate::fast_math::gelu_in_place(std::slice::from_raw_parts_mut(
                        c.add(i * ldc),
                        n,
                    ));
                }
            }
            return;
        }
        let out = OutPtr(c);
        let accumulate = matches!(start, Start::Accumulate);
        let bias = match start {
            Start::Bias(b) => {
                assert!(b.len() >= n, "bf16 gemm: bias shorter than n");
                Some(b)
            }
            _ => None,
        };
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            let npanels = nc.div_ceil(NR);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let kq = kc.div_ceil(2);
                let overwrite = p0 == 0 && !accumulate;
                let gelu_now = gelu && p0 + kc == k;
                let len = match b {
                    PairSource::Strided(_) => npanels * kq * NR,
                    PairSource::Packed(_) => 0,
                };
                with_buffer(&B_PAIRS, len, |scratch| {
                    let bpairs: &[u32] = match b {
                        PairSource::Strided(b) => {
                            pack_b_pairs(b, p0, kc, j0, nc, scratch, parallel);
                            scratch
                        }
                        PairSource::Packed(p) => p.block(j0, p0, nc, kc),
                    };
                    let mblocks = m.div_ceil(MC);
                    let (groups, per_group) = column_groups(mblocks, npanels, parallel);
                    let task = |t: usize| {
                        let (ib, g) = (t % mblocks, t / mblocks);
                        let i0 = ib * MC;
                        let mc = MC.min(m - i0);
                        let apanels = mc.div_ceil(MR);
                        with_buffer(&A_PAIRS, apanels * kq * MR, |apairs| {
                            pack_a_pairs(a, i0, mc, p0, kc, apairs);
                            let (first, last) = (g * per_group, ((g + 1) * per_group).min(npanels));
                            for jp in first..last {
                                let jr = jp * NR;
                                let nr = NR.min(nc - jr);
                                let bp = bpairs.as_ptr().add(jp * kq * NR);
                                for ir in (0..mc).step_by(MR) {
                                    let mr = MR.min(mc - ir);
                                    let ap = apairs.as_ptr().add((ir / MR) * kq * MR);
                                    let cptr = out.get().add((i0 + ir) * ldc + j0 + jr);
                                    let bias =
                                        bias.map_or(std::ptr::null(), |b| b.as_ptr().add(j0 + jr));
                                    let tile = Tile {
                                        c: cptr,
                                        ldc,
                                        mr,
                                        nr,
                                        overwrite,
                                        bias,
                                        gelu: gelu_now,
                                    };
                                    pair_tile(kq, ap, bp, tile);
                                }
                            }
                        });
                    };
                    let tasks = mblocks * groups;
                    if parallel && rayon::current_num_threads() > 1 && tasks > 1 {
                        (0..tasks).into_par_iter().for_each(task);
                    } else {
                        (0..tasks).for_each(task);
                    }
                });
            }
        }
    }
}

/// `x[m, k] · Wᵀ + bias` for a paired weight (`x` row-major, rounded to bf16 as it is packed),
/// as a new row-major `[m, n]` matrix, multi-threaded when the product is large enough; with
/// `gelu`, the exact GELU of it (applied in the last store). The output is never zero-filled.
pub fn linear_paired(m: usize, x: &[f32], w: &PairedB, bias: &[f32], gelu: bool) -> Vec<f32> {
    let (n, k) = w.dims();
    assert!(
        crate::cpu::isa().avx512_bf16(),
        "paired bf16 weights need AVX512_BF16"
    );
    assert!(x.len() >= m * k, "linear_paired: x is shorter than m x k");
    assert_eq!(bias.len(), n, "linear_paired: one bias per output column");
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: AVX512_BF16 checked above; `y` has capacity for m x n elements, not aliased by
    // the operands; starting from the bias, the GEMM writes every element before `set_len`.
    unsafe {
        gemm(
            m,
            n,
            k,
            MatRef::row_major(&x[..m * k], k),
            PairSource::Packed(w),
            y.as_mut_ptr(),
            n,
            Start::Bias(bias),
            crate::sgemm::worth_parallel(m, n, k),
            gelu,
        );
        y.set_len(m * n);
    }
    y
}

/// Packs and pairs `B[p0..p0+kc, j0..j0+nc]` into NR-wide panels of `kc.div_ceil(2)` pair rows.
fn pack_b_pairs(
    b: MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    out: &mut [u32],
    parallel: bool,
) {
    let kq = kc.div_ceil(2);
    let one = |(jp, panel): (usize, &mut [u32])| {
        with_buffer(&STAGE, kc * NR, |stage| {
            pack_b_panel(b, p0, kc, j0 + jp * NR, j0 + nc, stage);
            // SAFETY: AVX-512F (the caller selected it); `stage` holds kc x NR values and
            // `panel` kq x NR.
            unsafe { pair_rows(stage, kc, NR, panel) };
        })
    };
    let chunks = out[..nc.div_ceil(NR) * kq * NR].par_chunks_mut(kq * NR);
    if parallel {
        chunks.enumerate().for_each(one);
    } else {
        out[..nc.div_ceil(NR) * kq * NR]
            .chunks_mut(kq * NR)
            .enumerate()
            .for_each(one);
    }
}

/// Packs and pairs `A[i0..i0+mc, p0..p0+kc]` into MR-tall panels of `kc.div_ceil(2)` pair rows.
fn pack_a_pairs(a: MatRef, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [u32]) {
    let kq = kc.div_ceil(2);
    with_buffer(&STAGE, mc.div_ceil(MR) * kc * MR, |stage| {
        pack_a_panels(a, i0, mc, p0, kc, stage);
        for (ip, panel) in stage.chunks_exact(kc * MR).enumerate() {
            // SAFETY: AVX-512F (the caller selected it); sizes as `pair_rows` requires.
            unsafe { pair_rows(panel, kc, MR, &mut out[ip * kq * MR..(ip + 1) * kq * MR]) };
        }
    })
}

/// One `mr x nr` tile with the smallest row kernel that covers `mr` (as the f32 kernel).
///
/// # Safety
/// As [`kernel_pairs`].
#[inline(always)]
unsafe fn pair_tile(kq: usize, ap: *const u32, bp: *const u32, t: Tile) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        match t.mr {
            0..=4 => kernel_pairs::<4>(kq, ap, bp, t),
            5..=8 => kernel_pairs::<8>(kq, ap, bp, t),
            _ => kernel_pairs::<MR>(kq, ap, bp, t),
        }
    }
}

/// The micro-kernel for the first `R` rows of an MR-tall paired `A` panel against one NR-wide
/// paired `B` panel: `kq` pair steps of one `vdpbf16ps` per 16 output lanes.
///
/// # Safety
/// AVX-512F and AVX512_BF16; `ap` holds `kq x MR` pairs, `bp` `kq x NR`; `t` as
/// [`store_tile`] requires.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_pairs<const R: usize>(kq: usize, ap: *const u32, bp: *const u32, t: Tile) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        debug_assert!(t.mr <= R && R <= MR && t.mr > 0);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for q in 0..kq {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR + 16) as *const _));
            let arow = ap.add(q * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*arow.add(i) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                row[1] = _mm512_dpbf16_ps(row[1], av, b1);
            }
        }
        store_tile(&acc, t);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::cpu::round_bf16;
    use crate::sgemm::test_support::{layouts, uniform};

    fn naive_rounded(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        round_bf16(a.data[(i as isize * a.rs + p as isize * a.cs) as usize]) as f64
                            * round_bf16(b.data[(p as isize * b.rs + j as isize * b.cs) as usize])
                                as f64
                    })
                    .sum();
            }
        }
        c
    }

    /// The kernel equals the product of the rounded operands (f64 reference) on shapes with row
    /// and column tails, odd and multi-block `k`, every operand layout, each start and GELU.
    #[test]
    fn matches_the_rounded_product_on_awkward_shapes() {
        if !crate::cpu::isa().avx512_bf16() {
            eprintln!("no AVX512_BF16 on this CPU: the bf16 dot-product kernel is not used here");
            return;
        }
        let mut rnd = uniform(5);
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 33, 7),
            (64, 64, 32),
            (100, 50, 300),
            (200, 70, 513),
            (5, 2100, 3),
            (32, 96, 384),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
            for (ta, tb, am, bm) in layouts(&a, &b, m, n, k) {
                let want = naive_rounded(m, n, k, am, bm);
                let run = |start: Start, fill: f32, gelu: bool| {
                    let mut c = vec![fill; m * n];
                    let b = PairSource::Strided(bm);
                    // SAFETY: `c` holds the m x n outputs the call writes, not aliased by the operands.
                    unsafe { gemm(m, n, k, am, b, c.as_mut_ptr(), n, start, true, gelu) };
                    c
                };
                let mut with_bias = Vec::new();
                for mode in 0..3 {
                    let (start, fill) = match mode {
                        0 => (Start::Zero, f32::NAN),
                        1 => (Start::Accumulate, 1.0),
                        _ => (Start::Bias(&bias), f32::NAN),
                    };
                    let c = run(start, fill, false);
                    for (idx, (x, w)) in c.iter().zip(&want).enumerate() {
                        let w = match mode {
                            1 => w + 1.0,
                            2 => w + bias[idx % n] as f64,
                            _ => *w,
                        };
                        assert!(
                            (*x as f64 - w).abs() < 2e-5 * (1.0 + w.abs()),
                            "{m}x{n}x{k} ta={ta} tb={tb} mode={mode}: {x} vs {w}"
                        );
                    }
                    with_bias = c;
                }
                // GELU in the last store: the activation of the biased product.
                let c = run(Start::Bias(&bias), f32::NAN, true);
                crate::fast_math::gelu_in_place(&mut with_bias);
                for (x, w) in c.iter().zip(&with_bias) {
                    assert!((x - w).abs() <= 1e-6 * (1.0 + w.abs()), "gelu: {x} vs {w}");
                }
            }
        }
    }

    /// Pairing rounds like the scalar rounding, NaN included, and pads an odd row with zero.
    #[test]
    fn pairs_round_to_nearest_even() {
        if !crate::cpu::isa().avx512() {
            eprintln!("no AVX-512F on this CPU: the bf16 packing is not used here");
            return;
        }
        let mut rnd = uniform(9);
        let (rows, lanes) = (5usize, 12usize);
        let mut src: Vec<f32> = (0..rows * lanes).map(|_| rnd() * 1e3).collect();
        src[3] = f32::NAN;
        src[4] = f32::from_bits(0x3F80_8000); // a tie: rounds to the even 1.0
        let mut dst = vec![0u32; rows.div_ceil(2) * lanes];
        // SAFETY: the test runs only where AVX-512F is present; `src` and `dst` have the sizes `pair_rows` needs.
        unsafe { pair_rows(&src, rows, lanes, &mut dst) };
        let bits = |v: f32| crate::cpu::f32_to_bf16(v) as u32;
        for q in 0..rows.div_ceil(2) {
            for j in 0..lanes {
                let lo = bits(src[2 * q * lanes + j]);
                let hi = if 2 * q + 1 < rows {
                    bits(src[(2 * q + 1) * lanes + j])
                } else {
                    0
                };
                let got = dst[q * lanes + j];
                if src[2 * q * lanes + j].is_nan() {
                    assert!(f32::from_bits((got & 0xffff) << 16).is_nan());
                    assert_eq!(got >> 16, hi);
                } else {
                    assert_eq!(got, lo | hi << 16, "q={q} j={j}");
                }
            }
        }
        assert_eq!(dst[4] & 0xffff, 0x3F80);
    }
}
