//! Single-precision GEMM: BLIS-style packing and blocking around one register tile of `C`
//! ([`crate::tile`], 12 x 32) per micro-kernel call, the micro-kernel picked by the selected
//! [`Isa`]. The AVX-512 kernel keeps the tile in 24 zmm registers and streams packed panels of
//! `A` and `B`; the AVX2+FMA, NEON and scalar kernels ([`crate::arch`]) cover it in smaller
//! sub-tiles. The packed layouts are the same on every family.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::cpu::{round_bf16_in_place, with_buffer, Isa, MatRef};
pub(crate) use crate::tile::{ASource, Tile, MR, NR};
/// Depth of one pass over `k`: 384 covers the hidden size of MiniLM-class models in one pass, so
/// that their `[tokens, 384] x [384, n]` products write C once instead of twice; a B panel is then
/// 48 KiB, streamed from L2 (measured: +10-15% on those GEMMs, +4% train_full, over 256).
pub(crate) const KC: usize = 384;
pub(crate) const MC: usize = 96;
pub(crate) const NC: usize = 2048;
/// How many rows of a B panel the micro-kernel prefetches ahead.
#[cfg(target_arch = "x86_64")]
const PREFETCH_ROWS: usize = 64;

thread_local! {
    /// Per-thread packing buffer for panels of A (reused across calls: no allocation or
    /// zero-fill per task; `pack_a` writes every element it hands to the kernel).
    static A_PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread packing buffer for panels of B (the calling thread's).
    static B_PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A packed once per call and shared by all of its tasks (few row blocks).
    static A_SHARED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a GEMM's output starts from.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// Overwritten: `C = A · B`.
    Zero,
    /// Added to: `C += A · B`.
    Accumulate,
    /// A bias per column, added in the kernel's first store: `C = A · B + 1 biasᵀ` (no pass
    /// that fills C first).
    Bias(&'a [f32]),
}

impl Start<'_> {
    /// `Accumulate` or `Zero`.
    pub fn from_accumulate(accumulate: bool) -> Self {
        if accumulate {
            Start::Accumulate
        } else {
            Start::Zero
        }
    }
}

/// `PREFINE_SGEMM_PACK_A=1` packs A even when it is row-major (for comparisons).
fn pack_a_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("PREFINE_SGEMM_PACK_A").is_some_and(|v| v == "1"))
}

/// Handles the GEMMs with an empty operand (see [`nothing_to_multiply`]); with a bias, an
/// empty `k` leaves every row equal to the bias. Returns whether there was nothing to multiply.
///
/// # Safety
/// As [`nothing_to_multiply`].
pub(crate) unsafe fn empty_product(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    start: Start,
) -> bool {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        if !nothing_to_multiply(m, n, k, c, ldc, matches!(start, Start::Accumulate)) {
            return false;
        }
        if let (Start::Bias(b), true) = (start, k == 0) {
            for i in 0..m {
                std::ptr::copy_nonoverlapping(b.as_ptr(), c.add(i * ldc), n);
            }
        }
        true
    }
}

/// Finishes a GEMM with an empty operand: nothing for `m == 0` or `n == 0`, a zeroed `dst` for
/// `k == 0` (unless accumulating). Returns whether the GEMM was of that kind.
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` elements at stride `ldc`.
pub(crate) unsafe fn nothing_to_multiply(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldc: usize,
    accumulate: bool,
) -> bool {
    if m == 0 || n == 0 {
        return true;
    }
    if k != 0 {
        return false;
    }
    if !accumulate {
        for i in 0..m {
            // SAFETY: row `i < m` of `n` elements lies in `dst` (the caller's contract).
            unsafe { std::ptr::write_bytes(dst.add(i * ldc), 0, n) };
        }
    }
    true
}

/// Whether a GEMM is big enough to split across threads.
pub fn worth_parallel(m: usize, n: usize, k: usize) -> bool {
    m * n * k > 48 * 48 * 48
}

#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint row blocks of C.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: the tasks sharing it write disjoint elements.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    #[inline(always)]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// The `B` operand `Wᵀ` of `x · Wᵀ` for a fixed weight `W[n, k]` (row-major), packed once into
/// the kernel's panel layout: what [`sgemm`] otherwise repacks on every call. Frozen inference
/// weights use it (batch-1 inference spends about a quarter of its time packing weights).
#[derive(Clone)]
pub struct PackedB {
    n: usize,
    k: usize,
    /// For each `NC` block of columns, for each `KC` block of `k`: that block's NR-wide panels
    /// (`pack_b`'s layout), so the block at `(j0, p0)` starts at `k * j0 + panels(nc) * NR * p0`.
    data: Vec<f32>,
}

impl PackedB {
    /// Packs `w[n, k]` (row-major, the weight of a linear layer with `n` outputs).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "PackedB::pack: weight is not n x k");
        let b = MatRef::transposed(w, k);
        let mut data = Vec::with_capacity(n.div_ceil(NR) * NR * k);
        let mut block = Vec::new();
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                pack_b(b, p0, kc, j0, nc, &mut block);
                data.extend_from_slice(&block[..nc.div_ceil(NR) * kc * NR]);
            }
        }
        Self { n, k, data }
    }

    /// The packed values (panel layout, padding included).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// A borrowed view for [`sgemm_packed`].
    pub fn view(&self) -> PanelsRef<'_> {
        PanelsRef {
            n: self.n,
            k: self.k,
            data: &self.data,
        }
    }

    /// Bytes held (the padding of a last partial panel included).
    pub fn bytes(&self) -> usize {
        4 * self.data.len()
    }

    /// The weight `w[n, k]` back in row-major order.
    pub fn unpack(&self) -> Vec<f32> {
        self.view().unpack()
    }
}

/// Panels in [`PackedB`]'s layout, borrowed: a packed weight, or one widened from bf16 into a
/// scratch buffer.
#[derive(Clone, Copy)]
pub struct PanelsRef<'a> {
    n: usize,
    k: usize,
    data: &'a [f32],
}

impl<'a> PanelsRef<'a> {
    /// Elements of the panels of a `[n, k]` weight.
    pub fn len_for(n: usize, k: usize) -> usize {
        n.div_ceil(NR) * NR * k
    }

    /// Panels of a `[n, k]` weight held in `data` (`len_for(n, k)` elements).
    pub fn new(n: usize, k: usize, data: &'a [f32]) -> Self {
        assert_eq!(data.len(), Self::len_for(n, k), "PanelsRef: wrong length");
        Self { n, k, data }
    }

    /// The panels of the block at columns `j0..j0 + nc`, depth `p0..p0 + kc`.
    fn block(&self, j0: usize, p0: usize, nc: usize, kc: usize) -> &'a [f32] {
        let start = self.k * j0 + nc.div_ceil(NR) * NR * p0;
        &self.data[start..start + nc.div_ceil(NR) * NR * kc]
    }

    /// `(n, k)`: outputs and inputs of the weight.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The weight `w[n, k]` back in row-major order.
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; n * k];
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let block = self.block(j0, p0, nc, kc);
                for j in 0..nc {
                    let panel = &block[(j / NR) * kc * NR..];
                    for p in 0..kc {
                        w[(j0 + j) * k + p0 + p] = panel[p * NR + j % NR];
                    }
                }
            }
        }
        w
    }
}

/// Where the kernel's `B` panels come from.
#[derive(Clone, Copy)]
enum BSource<'a> {
    /// Any strided matrix, packed block by block on every call.
    Strided(MatRef<'a>),
    /// Panels packed beforehand ([`PackedB`]).
    Packed(PanelsRef<'a>),
}

/// Packs `B[p0..p0+kc, j0..j0+nc]` into NR-wide column panels, zero-padded.
fn pack_b(b: MatRef, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut Vec<f32>) {
    let panels = nc.div_ceil(NR);
    // Every element handed to the kernel is written below (padding included): grow only, no
    // zero-fill pass over the whole buffer per call.
    if out.len() < panels * kc * NR {
        out.resize(panels * kc * NR, 0.0);
    }
    out[..panels * kc * NR]
        .par_chunks_mut(kc * NR)
        .enumerate()
        .for_each(|(jp, panel)| {
            pack_b_panel(b, p0, kc, j0 + jp * NR, j0 + nc, panel);
            if b.bf16 {
                round_bf16_in_place(panel);
            }
        });
}

/// Packs the NR-wide panel of `B[p0..p0+kc, jbase..min(jbase+NR, jend)]`, zero-padded.
pub(crate) fn pack_b_panel(
    b: MatRef,
    p0: usize,
    kc: usize,
    jbase: usize,
    jend: usize,
    panel: &mut [f32],
) {
    let width = NR.min(jend - jbase);
    if b.rs == 1 {
        // Bᵀ is row-major (a transposed weight): column j of B is contiguous along p.
        let mut starts = [0usize; NR];
        for (j, s) in starts.iter_mut().enumerate().take(width) {
            *s = ((p0 as isize) + (jbase + j) as isize * b.cs) as usize;
        }
        pack_transposed(b.data, &starts[..width], kc, NR, panel);
        return;
    }
    if b.cs == 1 && b.rs > 0 {
        // Row-major B: each panel row is one contiguous run of `width` values.
        let first = ((p0 as isize) * b.rs + jbase as isize) as usize;
        copy_rows(b.data, first, b.rs as usize, kc, width, NR, panel);
        return;
    }
    for p in 0..kc {
        let row = &mut panel[p * NR..(p + 1) * NR];
        let src = ((p0 + p) as isize * b.rs + jbase as isize * b.cs) as usize;
        for (j, r) in row[..width].iter_mut().enumerate() {
            *r = b.data[(src as isize + j as isize * b.cs) as usize];
        }
        row[width..].fill(0.0);
    }
}

/// Writes `out[p * lanes + i] = data[starts[i] + p]` for `p < kc` and `i < lanes`, with zeros
/// for the lanes past `starts.len()`: packs rows that are contiguous along `p` into a panel
/// (a transpose), four rows by four columns at a time with SSE shuffles.
fn pack_transposed(data: &[f32], starts: &[usize], kc: usize, lanes: usize, out: &mut [f32]) {
    debug_assert!(lanes.is_multiple_of(4) && starts.len() <= lanes);
    let out = &mut out[..kc * lanes];
    for &s in starts {
        assert!(s + kc <= data.len(), "pack: row out of bounds");
    }
    #[cfg(target_arch = "x86_64")]
    {
        let kc4 = kc - kc % 4;
        for i4 in (0..lanes).step_by(4) {
            let rows = starts.len().saturating_sub(i4).min(4);
            if rows == 0 {
                for p in 0..kc {
                    out[p * lanes + i4..p * lanes + i4 + 4].fill(0.0);
                }
                continue;
            }
            // SAFETY: every row read is `starts[i]..starts[i] + kc`, checked above; every
            // store is `out[p * lanes + i4..+4]` with p < kc and i4 + 4 <= lanes.
            unsafe {
                let ptr = |r: usize| data.as_ptr().add(starts[i4 + r]);
                let load = |r: usize, p: usize| {
                    if r < rows {
                        _mm_loadu_ps(ptr(r).add(p))
                    } else {
                        _mm_setzero_ps()
                    }
                };
                let dst = out.as_mut_ptr().add(i4);
                for p in (0..kc4).step_by(4) {
                    let (r0, r1, r2, r3) = (load(0, p), load(1, p), load(2, p), load(3, p));
                    let t0 = _mm_unpacklo_ps(r0, r1);
                    let t1 = _mm_unpackhi_ps(r0, r1);
                    let t2 = _mm_unpacklo_ps(r2, r3);
                    let t3 = _mm_unpackhi_ps(r2, r3);
                    _mm_storeu_ps(dst.add(p * lanes), _mm_movelh_ps(t0, t2));
                    _mm_storeu_ps(dst.add((p + 1) * lanes), _mm_movehl_ps(t2, t0));
                    _mm_storeu_ps(dst.add((p + 2) * lanes), _mm_movelh_ps(t1, t3));
                    _mm_storeu_ps(dst.add((p + 3) * lanes), _mm_movehl_ps(t3, t1));
                }
            }
            for p in kc4..kc {
                for r in 0..4 {
                    out[p * lanes + i4 + r] = if r < rows {
                        data[starts[i4 + r] + p]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for p in 0..kc {
        for i in 0..lanes {
            out[p * lanes + i] = starts.get(i).map_or(0.0, |&s| data[s + p]);
        }
    }
}

/// Writes `out[r * lanes + j] = data[first + r * stride + j]` for `r < rows`, `j < width`, and
/// zeros for `width <= j < lanes` (`width <= lanes <= 32`): gathers rows of a panel.
fn copy_rows(
    data: &[f32],
    first: usize,
    stride: usize,
    rows: usize,
    width: usize,
    lanes: usize,
    out: &mut [f32],
) {
    assert!(width <= lanes && lanes <= 32 && out.len() >= rows * lanes);
    if rows == 0 {
        return;
    }
    assert!(
        first + (rows - 1) * stride + width <= data.len(),
        "pack: rows out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa().avx512() {
        // SAFETY: AVX-512F is selected; every read lies in the range checked above and every
        // store in `out[..rows * lanes]`.
        unsafe { copy_rows_avx512(data.as_ptr().add(first), stride, rows, width, lanes, out) };
        return;
    }
    for (r, row) in out[..rows * lanes].chunks_exact_mut(lanes).enumerate() {
        let src = first + r * stride;
        row[..width].copy_from_slice(&data[src..src + width]);
        row[width..].fill(0.0);
    }
}

/// Copies `rows` runs of `width` values, `stride` apart from `src`, into `out` at a stride of
/// `lanes` (`width <= lanes <= 32`), zero-filling each output row past `width`: one or two
/// masked vector moves per row instead of a `memcpy` call for a few dozen bytes.
///
/// # Safety
/// AVX-512F; `src` valid for reads of `(rows - 1) * stride + width` values; `out` holds at least
/// `rows * lanes` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_rows_avx512(
    src: *const f32,
    stride: usize,
    rows: usize,
    width: usize,
    lanes: usize,
    out: &mut [f32],
) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        debug_assert!(width <= lanes && lanes <= 32 && out.len() >= rows * lanes);
        let (lo_load, hi_load) = tail_masks(width);
        let (lo_store, hi_store) = tail_masks(lanes);
        let dst = out.as_mut_ptr();
        for r in 0..rows {
            let s = src.add(r * stride);
            let d = dst.add(r * lanes);
            _mm512_mask_storeu_ps(d, lo_store, _mm512_maskz_loadu_ps(lo_load, s));
            if lanes > 16 {
                _mm512_mask_storeu_ps(
                    d.add(16),
                    hi_store,
                    _mm512_maskz_loadu_ps(hi_load, s.add(16)),
                );
            }
        }
    }
}

/// Packs `A[i0..i0+mc, p0..p0+kc]` into MR-tall row panels, zero-padded (rounded to bf16 when
/// `a.bf16`).
fn pack_a(a: MatRef, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
    pack_a_panels(a, i0, mc, p0, kc, out);
    if a.bf16 {
        round_bf16_in_place(&mut out[..mc.div_ceil(MR) * kc * MR]);
    }
}

/// [`pack_a`] before rounding.
pub(crate) fn pack_a_panels(
    a: MatRef,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    out: &mut [f32],
) {
    let panels = mc.div_ceil(MR);
    for ip in 0..panels {
        let ibase = i0 + ip * MR;
        let height = MR.min(i0 + mc - ibase);
        let panel = &mut out[ip * kc * MR..(ip + 1) * kc * MR];
        if a.rs == 1 && a.cs > 0 {
            // Column-major A: the MR values of one column are contiguous.
            let first = (ibase as isize + p0 as isize * a.cs) as usize;
            copy_rows(a.data, first, a.cs as usize, kc, height, MR, panel);
        } else if a.cs == 1 {
            // Row-major A: each row's run is contiguous along p; transpose it into the panel.
            let mut starts = [0usize; MR];
            for (i, s) in starts.iter_mut().enumerate().take(height) {
                *s = (ibase + i) * a.rs as usize + p0;
            }
            pack_transposed(a.data, &starts[..height], kc, MR, panel);
        } else {
            for i in 0..MR {
                if i < height {
                    let base = (ibase + i) as isize * a.rs + p0 as isize * a.cs;
                    for p in 0..kc {
                        panel[p * MR + i] = a.data[(base + p as isize * a.cs) as usize];
                    }
                } else {
                    for p in 0..kc {
                        panel[p * MR + i] = 0.0;
                    }
                }
            }
        }
    }
}

/// `C[m, n] (+)= A[m, k] · B[k, n]` with `C` row-major (row stride `ldc`), on up to `threads`
/// rayon tasks.
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]); `c` must be valid for `m` rows of `n` elements
/// at stride `ldc`, not aliased by `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: *mut f32,
    ldc: usize,
    start: Start,
    parallel: bool,
) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        if empty_product(m, n, k, c, ldc, start) {
            return;
        }
        // A thread blocked in this GEMM's parallel loop can run another GEMM stolen by rayon (an
        // outer parallel loop over GEMMs): then the thread's buffer is still borrowed and that
        // nested call packs into a buffer of its own.
        B_PACK.with(|cell| match cell.try_borrow_mut() {
            Ok(mut bpack) => sgemm_blocks(
                m,
                n,
                k,
                a,
                BSource::Strided(b),
                OutPtr(c),
                ldc,
                start,
                parallel,
                false,
                &mut bpack,
            ),
            Err(_) => sgemm_blocks(
                m,
                n,
                k,
                a,
                BSource::Strided(b),
                OutPtr(c),
                ldc,
                start,
                parallel,
                false,
                &mut Vec::new(),
            ),
        })
    }
}

/// `C[m, n] (+)= A[m, k] · Wᵀ` for a weight in packed panels ([`PackedB::view`], `W[n, k]`).
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_packed(
    m: usize,
    a: MatRef,
    b: PanelsRef,
    c: *mut f32,
    ldc: usize,
    start: Start,
    parallel: bool,
    gelu: bool,
) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        let (n, k) = b.dims();
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
        sgemm_blocks(
            m,
            n,
            k,
            a,
            BSource::Packed(b),
            OutPtr(c),
            ldc,
            start,
            parallel,
            gelu,
            &mut Vec::new(),
        )
    }
}

/// `x[m, k] · Wᵀ + bias` for a weight in packed panels (`x` row-major), as a new row-major
/// `[m, n]` matrix: the safe entry point of [`sgemm_packed`], multi-threaded when the product is
/// large enough. The bias is added in the kernel's first store, and the output is never
/// zero-filled (the kernel writes every element).
/// With `gelu`, the exact GELU is applied to each tile in the kernel's last store (the
/// activation of the layer, without a pass of its own).
pub fn gemm_panels_bias(m: usize, x: &[f32], w: PanelsRef, bias: &[f32], gelu: bool) -> Vec<f32> {
    let (n, k) = w.dims();
    assert!(
        x.len() >= m * k,
        "gemm_panels_bias: x is shorter than m x k"
    );
    assert_eq!(
        bias.len(),
        n,
        "gemm_panels_bias: one bias per output column"
    );
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: AVX-512F checked above; `y` has capacity for m x n elements, not aliased by `x`,
    // the panels or the bias; starting from the bias, the GEMM writes every element before
    // `set_len` exposes them.
    unsafe {
        sgemm_packed(
            m,
            MatRef::row_major(&x[..m * k], k),
            w,
            y.as_mut_ptr(),
            n,
            Start::Bias(bias),
            worth_parallel(m, n, k),
            gelu,
        );
        y.set_len(m * n);
    }
    y
}

/// The blocked loops of [`sgemm`], with the caller's B packing buffer (unused for packed B).
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_blocks(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: BSource,
    out: OutPtr,
    ldc: usize,
    start: Start,
    parallel: bool,
    gelu: bool,
    bpack: &mut Vec<f32>,
) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        let accumulate = matches!(start, Start::Accumulate);
        // The family is read once here: the tasks below may run on other threads.
        let isa = crate::cpu::isa();
        // A row-major A (unit column stride) is read in place by the kernel.
        // (A bf16 operand is packed: the rounding happens there.)
        let direct_a = a.cs == 1 && a.rs > 0 && !a.bf16 && !pack_a_forced();
        let lda = a.rs.max(0) as usize;
        let bias = match start {
            Start::Bias(b) => {
                assert!(b.len() >= n, "sgemm: bias shorter than n");
                Some(b)
            }
            _ => None,
        };
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let overwrite = p0 == 0 && !accumulate;
                let gelu_now = gelu && p0 + kc == k;
                let bp: &[f32] = match b {
                    BSource::Strided(b) => {
                        pack_b(b, p0, kc, j0, nc, bpack);
                        &bpack[..]
                    }
                    BSource::Packed(packed) => packed.block(j0, p0, nc, kc),
                };
                let npanels = nc.div_ceil(NR);
                let mblocks = m.div_ceil(MC);
                let (groups, per_group) = column_groups(mblocks, npanels, parallel);
                let block_len = (MC / MR) * kc * MR;
                // `apack` is the row block's packed A, or empty when A is read in place.
                let run_block = |ib: usize, g: usize, apack: &[f32]| {
                    let i0 = ib * MC;
                    let mc = MC.min(m - i0);
                    let (first, last) = (g * per_group, ((g + 1) * per_group).min(npanels));
                    for jp in first..last {
                        let jr = jp * NR;
                        let nr = NR.min(nc - jr);
                        let bpanel = bp.as_ptr().add(jp * kc * NR);
                        for ir in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - ir);
                            let asrc = if direct_a {
                                ASource::Rows(a.data.as_ptr().add((i0 + ir) * lda + p0), lda)
                            } else {
                                ASource::Panel(apack.as_ptr().add((ir / MR) * kc * MR))
                            };
                            let cptr = out.get().add((i0 + ir) * ldc + j0 + jr);
                            let bias = bias.map_or(std::ptr::null(), |b| b.as_ptr().add(j0 + jr));
                            let tile = Tile {
                                c: cptr,
                                ldc,
                                mr,
                                nr,
                                overwrite,
                                bias,
                                gelu: gelu_now,
                            };
                            kernel_tile(isa, kc, asrc, bpanel, tile);
                        }
                    }
                };
                // Tasks run in group-major order: rayon halves the task range, and each half then
                // holds every row block (a short last block no longer lands beside its twin).
                if direct_a {
                    // Row-major A: the kernel broadcasts straight from its rows (no packing).
                    let tasks = mblocks * groups;
                    let task = |t: usize| run_block(t % mblocks, t / mblocks, &[]);
                    if parallel && rayon::current_num_threads() > 1 && tasks > 1 {
                        (0..tasks).into_par_iter().for_each(task);
                    } else {
                        (0..tasks).for_each(task);
                    }
                    continue;
                }
                let tasks = mblocks * groups;
                let parallel_tasks = parallel && rayon::current_num_threads() > 1 && tasks > 1;
                if groups > 1 && parallel_tasks {
                    // Few row blocks (batch-1 inference), split by columns: pack each block of A
                    // once here rather than once per column group.
                    with_buffer(&A_SHARED, mblocks * block_len, |shared| {
                        for ib in 0..mblocks {
                            let i0 = ib * MC;
                            let mc = MC.min(m - i0);
                            let need = mc.div_ceil(MR) * kc * MR;
                            let at = ib * block_len;
                            pack_a(a, i0, mc, p0, kc, &mut shared[at..at + need]);
                        }
                        let shared = &*shared;
                        (0..tasks).into_par_iter().for_each(|t| {
                            let ib = t % mblocks;
                            run_block(ib, t / mblocks, &shared[ib * block_len..]);
                        });
                    });
                    continue;
                }
                let task = |t: usize| {
                    let (ib, g) = (t % mblocks, t / mblocks);
                    let i0 = ib * MC;
                    let mc = MC.min(m - i0);
                    let need = mc.div_ceil(MR) * kc * MR;
                    with_buffer(&A_PACK, need, |apack| {
                        pack_a(a, i0, mc, p0, kc, apack);
                        run_block(ib, g, apack);
                    });
                };
                if parallel_tasks {
                    (0..tasks).into_par_iter().for_each(task);
                } else {
                    (0..tasks).for_each(task);
                }
            }
        }
    }
}

/// How to split a GEMM into tasks: `mblocks` row blocks times `groups` groups of `per_group`
/// column panels each. With few row blocks (batch-1 inference) the column panels are split so
/// that every thread gets work; serial calls get one group. Returns `(groups, per_group)`.
pub(crate) fn column_groups(mblocks: usize, npanels: usize, parallel: bool) -> (usize, usize) {
    let threads = rayon::current_num_threads();
    let groups = if !parallel || mblocks >= 2 * threads {
        1
    } else {
        npanels.min((2 * threads).div_ceil(mblocks))
    };
    (groups, npanels.div_ceil(groups))
}

/// Store masks of the two 16-lane halves of a 32-column tile whose first `nr` columns are valid.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn tail_masks(nr: usize) -> (__mmask16, __mmask16) {
    let lanes = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as u16
        }
    };
    (lanes(nr), lanes(nr.saturating_sub(16)))
}

/// One `mr x nr` tile (`mr <= MR`, `nr <= NR`) of `C (+)= Apanel · Bpanel` on `isa`'s
/// micro-kernel. On AVX-512: the smallest row kernel that covers `mr`, so that a short last row
/// panel (e.g. 32 = 12 + 12 + 8 rows at batch-1 inference) does no wasted multiplies.
///
/// # Safety
/// `isa` runs on this CPU; the operands as [`kernel_rows`] requires.
#[inline(always)]
unsafe fn kernel_tile(isa: Isa, kc: usize, a: ASource, bp: *const f32, t: Tile) {
    // SAFETY (every arm): the selected family runs on this CPU and the operands are this
    // function's.
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the selected family runs on this CPU (`cpu::isa`), and the operands meet the callee's contract (this function's).
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe {
            match (a, t.mr) {
                (ASource::Panel(ap), 0..=4) => kernel_rows::<4, false>(kc, ap, MR, bp, t),
                (ASource::Panel(ap), 5..=8) => kernel_rows::<8, false>(kc, ap, MR, bp, t),
                (ASource::Panel(ap), _) => kernel_rows::<MR, false>(kc, ap, MR, bp, t),
                (ASource::Rows(ap, lda), 0..=4) => kernel_rows::<4, true>(kc, ap, lda, bp, t),
                (ASource::Rows(ap, lda), 5..=8) => kernel_rows::<8, true>(kc, ap, lda, bp, t),
                (ASource::Rows(ap, lda), _) => kernel_rows::<MR, true>(kc, ap, lda, bp, t),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the selected family runs on this CPU (`cpu::isa`), and the operands meet the callee's contract (this function's).
        Isa::Avx2Fma { .. } => unsafe { crate::arch::avx2::sgemm_tile(kc, a, bp, t) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the selected family runs on this CPU (`cpu::isa`), and the operands meet the callee's contract (this function's).
        Isa::Neon { .. } => unsafe { crate::arch::neon::sgemm_tile(kc, a, bp, t) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        // SAFETY: the selected family runs on this CPU (`cpu::isa`), and the operands meet the callee's contract (this function's).
        Isa::Simd128 => unsafe { crate::arch::wasm::sgemm_tile(kc, a, bp, t) },
        // SAFETY: the selected family runs on this CPU (`cpu::isa`), and the operands meet the callee's contract (this function's).
        _ => unsafe { crate::arch::scalar::sgemm_tile(kc, a, bp, t) },
    }
}

/// The micro-kernel for `R` rows of A (`R <= MR`): the first `R` rows of an `MR`-tall packed
/// panel (`ROWS == false`, `step == MR`), or `mr` rows read in place at row stride `step`
/// (`ROWS == true`; the rows past `mr` repeat the last one and are not stored).
///
/// # Safety
/// AVX-512F; `ap` holds `kc x MR` packed values (or `t.mr` rows of `kc` values at stride
/// `step`), `bp` `kc x NR`; `t` as [`store_tile`] requires.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_rows<const R: usize, const ROWS: bool>(
    kc: usize,
    ap: *const f32,
    step: usize,
    bp: *const f32,
    t: Tile,
) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        debug_assert!(t.mr <= R && R <= MR && t.mr > 0);
        let rows: [*const f32; R] = std::array::from_fn(|i| ap.add(i.min(t.mr - 1) * step));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..kc {
            // Weights stream from L3 at small batch: fetch B a few rows ahead (the hardware
            // prefetcher stops at every 4 KiB page of a 32 KiB panel). Past the panel's end this
            // touches the next panel, which comes next; a prefetch never faults.
            _mm_prefetch::<_MM_HINT_T0>(bp.add((p + PREFETCH_ROWS) * NR) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(bp.add((p + PREFETCH_ROWS) * NR + 16) as *const i8);
            let b0 = _mm512_loadu_ps(bp.add(p * NR));
            let b1 = _mm512_loadu_ps(bp.add(p * NR + 16));
            let arow = ap.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = if ROWS {
                    _mm512_set1_ps(*rows[i].add(p))
                } else {
                    _mm512_set1_ps(*arow.add(i))
                };
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        store_tile(&acc, t);
    }
}

/// Stores an `mr x nr` tile of accumulators (`R` rows of two 16-lane halves) into `c`:
/// overwriting it (plus `bias` when not null) or adding to it, then applying the exact GELU when
/// `gelu` (in registers before the store: a pass over the stored tile stalled, since a masked
/// store does not forward to the reload). Shared by the f32 and bf16 micro-kernels.
///
/// Always inlined into the AVX-512 kernels (like [`tail_masks`]), whose features its
/// intrinsics then take: an out-of-line call would spill the 24 accumulators per tile.
///
/// # Safety
/// AVX-512F; `t.c` is valid for `t.mr <= R` rows of `t.nr` elements at stride `t.ldc`;
/// `t.bias` is null or valid for `t.nr` elements.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn store_tile<const R: usize>(acc: &[[__m512; 2]; R], t: Tile) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        let Tile {
            c,
            ldc,
            mr,
            nr,
            overwrite,
            bias,
            gelu,
        } = t;
        let (m0, m1) = tail_masks(nr);
        let (bias0, bias1) = if overwrite && !bias.is_null() {
            (
                _mm512_maskz_loadu_ps(m0, bias),
                _mm512_maskz_loadu_ps(m1, bias.add(16)),
            )
        } else {
            (_mm512_setzero_ps(), _mm512_setzero_ps())
        };
        let act = |v: __m512| {
            if gelu {
                crate::fast_math::gelu_avx512(v)
            } else {
                v
            }
        };
        for (i, row) in acc.iter().enumerate().take(mr) {
            let cr = c.add(i * ldc);
            let (start0, start1) = if overwrite {
                (bias0, bias1)
            } else {
                (
                    _mm512_maskz_loadu_ps(m0, cr),
                    _mm512_maskz_loadu_ps(m1, cr.add(16)),
                )
            };
            _mm512_mask_storeu_ps(cr, m0, act(_mm512_add_ps(start0, row[0])));
            _mm512_mask_storeu_ps(cr.add(16), m1, act(_mm512_add_ps(start1, row[1])));
        }
    }
}

/// Helpers shared by the GEMM kernels' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::MatRef;

    /// Deterministic values in [-0.5, 0.5) (a linear congruential generator).
    pub(crate) fn uniform(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        }
    }

    /// The four layouts of the operands `a[m, k]` and `b[k, n]`, each row-major or transposed
    /// over the same values: `(a transposed, b transposed, a, b)`.
    pub(crate) fn layouts<'a>(
        a: &'a [f32],
        b: &'a [f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> [(bool, bool, MatRef<'a>, MatRef<'a>); 4] {
        [(false, false), (true, false), (false, true), (true, true)].map(|(ta, tb)| {
            let am = if ta {
                MatRef::transposed(a, m)
            } else {
                MatRef::row_major(a, k)
            };
            let bm = if tb {
                MatRef::transposed(b, k)
            } else {
                MatRef::row_major(b, n)
            };
            (ta, tb, am, bm)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += a.data[(i as isize * a.rs + p as isize * a.cs) as usize] as f64
                        * b.data[(p as isize * b.rs + j as isize * b.cs) as usize] as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    use super::test_support::{layouts, uniform};

    /// GEMMs inside an outer rayon loop: a thread waiting in one GEMM's parallel loop steals
    /// another GEMM (this used to panic with "RefCell already borrowed" on the packing buffer).
    #[test]
    // The same on every architecture, and minutes under qemu: run on x86-64 only.
    #[cfg_attr(not(target_arch = "x86_64"), ignore)]
    fn nested_parallel_gemms_are_safe_and_correct() {
        crate::cpu::for_each_isa(|| {
            use rayon::prelude::*;
            let (m, n, k) = (96, 256, 384);
            let a: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.02).collect();
            let am = MatRef::row_major(&a, k);
            let bm = MatRef::row_major(&b, n);
            let want = naive(m, n, k, am, bm);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            pool.install(|| {
                let outs: Vec<Vec<f32>> = (0..64)
                    .into_par_iter()
                    .map(|_| {
                        let mut c = vec![0f32; m * n];
                        // SAFETY: `c` holds the m x n outputs the call writes, not aliased by the operands.
                        unsafe { sgemm(m, n, k, am, bm, c.as_mut_ptr(), n, Start::Zero, true) };
                        c
                    })
                    .collect();
                for c in outs {
                    for (x, w) in c.iter().zip(&want) {
                        assert!((x - w).abs() < 1e-4 * (1.0 + w.abs()), "{x} vs {w}");
                    }
                }
            });
        });
    }

    #[test]
    fn matches_naive_on_awkward_shapes_and_strides() {
        crate::cpu::for_each_isa(|| {
            let mut rnd = uniform(1);
            for &(m, n, k) in &[
                (1, 1, 1),
                (13, 33, 7),
                (100, 50, 300),
                (12, 32, 256),
                (200, 70, 513),
                (5, 2100, 3),
                // Batch-1 shapes: 12 + 12 + 8 rows (the 8-row kernel), one row block shared by
                // the column groups; and a 4-row tail.
                (32, 96, 384),
                (100, 64, 40),
            ] {
                let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
                for (ta, tb, am, bm) in layouts(&a, &b, m, n, k) {
                    let want = naive(m, n, k, am, bm);
                    for acc in [false, true] {
                        let mut c = vec![if acc { 1.0 } else { 7.0 }; m * n];
                        // SAFETY: `c` holds the m x n outputs the call writes, not aliased by the operands.
                        unsafe {
                            sgemm(
                                m,
                                n,
                                k,
                                am,
                                bm,
                                c.as_mut_ptr(),
                                n,
                                Start::from_accumulate(acc),
                                true,
                            )
                        };
                        for (x, w) in c.iter().zip(&want) {
                            let w = if acc { w + 1.0 } else { *w };
                            assert!(
                                (x - w).abs() < 1e-4 * (1.0 + w.abs()),
                                "{m}x{n}x{k} ta={ta} tb={tb} acc={acc}: {x} vs {w}"
                            );
                        }
                    }
                }
            }
        });
    }

    /// A bias start adds one value per column to every row, on shapes with row and column
    /// tails, several KC blocks and an empty `k` (rows equal to the bias); a fused GELU equals
    /// the activation of that output bit for bit.
    #[test]
    fn bias_start_adds_the_bias_once() {
        crate::cpu::for_each_isa(|| {
            let mut rnd = uniform(3);
            for &(m, n, k) in &[(1, 5, 3), (32, 70, 300), (97, 40, 513), (7, 33, 0)] {
                let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
                let am = MatRef::row_major(&a, k);
                let want = naive(m, n, k, am, MatRef::transposed(&w, k));
                let mut c = vec![f32::NAN; m * n];
                let wm = MatRef::transposed(&w, k);
                // SAFETY: `c` holds the m x n outputs the call writes, not aliased by the operands.
                unsafe { sgemm(m, n, k, am, wm, c.as_mut_ptr(), n, Start::Bias(&bias), true) };
                let packed = PackedB::pack(&w, n, k);
                let p = gemm_panels_bias(m, &a, packed.view(), &bias, false);
                // The GELU applied in the kernel's store is the activation of the same values.
                let mut act = p.clone();
                crate::fast_math::gelu_in_place(&mut act);
                let fused = gemm_panels_bias(m, &a, packed.view(), &bias, true);
                assert!(
                    fused
                        .iter()
                        .zip(&act)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{m}x{n}x{k}: fused GELU"
                );
                for (i, got) in c.iter().zip(&p).flat_map(|(x, y)| [x, y]).enumerate() {
                    let want = want[i / 2] + bias[(i / 2) % n];
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{m}x{n}x{k}: {got} vs {want}"
                    );
                }
            }
        });
    }

    /// Weights packed once give the same products as packing per call, on shapes with partial
    /// panels and several KC / NC blocks, and unpack to the original weight.
    #[test]
    fn prepacked_weights_match_naive_and_round_trip() {
        crate::cpu::for_each_isa(|| {
            let mut rnd = uniform(7);
            // Fewer rows under emulation (aarch64 tests run in qemu): still row tails and
            // several NC and KC blocks.
            let tall = if cfg!(target_arch = "x86_64") {
                200
            } else {
                20
            };
            for &(m, n, k) in &[(1, 1, 1), (32, 384, 384), (13, 33, 7), (tall, 2100, 513)] {
                let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let packed = PackedB::pack(&w, n, k);
                assert_eq!(packed.unpack(), w, "{n}x{k}: unpack");
                let am = MatRef::row_major(&a, k);
                let want = naive(m, n, k, am, MatRef::transposed(&w, k));
                for acc in [false, true] {
                    let mut c = vec![if acc { 1.0 } else { 7.0 }; m * n];
                    // SAFETY: `c` holds the m x n outputs the call writes, not aliased by the operands.
                    unsafe {
                        sgemm_packed(
                            m,
                            am,
                            packed.view(),
                            c.as_mut_ptr(),
                            n,
                            Start::from_accumulate(acc),
                            true,
                            false,
                        )
                    };
                    for (x, w) in c.iter().zip(&want) {
                        let w = if acc { w + 1.0 } else { *w };
                        assert!(
                            (x - w).abs() < 1e-4 * (1.0 + w.abs()),
                            "{m}x{n}x{k} acc={acc}: {x} vs {w}"
                        );
                    }
                }
            }
        });
    }
}
