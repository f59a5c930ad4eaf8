//! The GEMM front-end the fused ops call: products of strided operands into new or existing
//! row-major matrices, a linear layer's forward (bias and GELU fused), and column reductions.

use rayon::prelude::*;

use crate::cpu::MatRef;
use crate::sgemm::{sgemm, worth_parallel, Start};

/// `dst (+)= a[m, k] · b[k, n]` with `dst` row-major at row stride `ldc`; multi-threaded when
/// `parallel`. The one place that picks the GEMM kernel: the bf16 dot-product kernel when both
/// operands are rounded to bf16 and the CPU has AVX512_BF16, else the blocked f32 GEMM on the
/// selected [`crate::cpu::Isa`].
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` elements at stride `ldc` (and for reads
/// when `accumulate`), not aliased by `a` or `b`, and untouched by other threads.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_ptr(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
    parallel: bool,
) {
    let start = Start::from_accumulate(accumulate);
    // SAFETY: forwarded from this function's contract.
    unsafe { sgemm_any(m, n, k, a, b, dst, ldc, start, parallel) }
}

/// [`sgemm`], or the bf16 dot-product kernel when both operands are bf16 and the CPU has it.
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_any(
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
    #[cfg(target_arch = "x86_64")]
    if a.bf16 && b.bf16 && crate::cpu::isa().avx512_bf16() {
        let b = crate::sgemm_bf16::PairSource::Strided(b);
        // SAFETY: AVX512_BF16 selected; the output contract is this function's.
        unsafe { crate::sgemm_bf16::gemm(m, n, k, a, b, c, ldc, start, parallel, false) };
        return;
    }
    // SAFETY: forwarded from this function's contract.
    unsafe { sgemm(m, n, k, a, b, c, ldc, start, parallel) }
}

/// `m` copies of `bias`, row-major: the starting value of a GEMM that accumulates `x · Wᵀ`
/// onto the bias (no separate bias pass).
pub fn bias_rows(bias: &[f32], m: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(m * bias.len());
    for _ in 0..m {
        y.extend_from_slice(bias);
    }
    y
}

/// A new row-major `[m, n]` matrix `a · b + 1 biasᵀ` (a linear layer's forward), with the exact
/// GELU applied when `gelu`. The bias is added in the kernel's first store and the output is
/// never zero-filled.
pub fn linear_new(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    bias: &[f32],
    gelu: bool,
) -> Vec<f32> {
    assert_eq!(bias.len(), n, "linear: one bias per output column");
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `out` has capacity for m x n elements, not aliased by the operands; starting
    // from the bias the kernel writes every element before `set_len` exposes them.
    unsafe {
        sgemm_any(
            m,
            n,
            k,
            a,
            b,
            out.as_mut_ptr(),
            n,
            Start::Bias(bias),
            worth_parallel(m, n, k),
        );
        out.set_len(m * n);
    }
    if gelu {
        crate::fast_math::gelu_in_place(&mut out);
    }
    out
}

/// A new row-major `[m, n]` matrix `a · b`, allocated without zero-filling (every element is
/// written by the GEMM before the vector is exposed).
pub fn gemm_new(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
    let len = m * n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: `out` has capacity for m x n elements; in overwrite mode both GEMM paths write
    // every element before anything reads it, and only raw pointers touch the memory until
    // `set_len`.
    unsafe {
        gemm_ptr(
            m,
            n,
            k,
            out.as_mut_ptr(),
            n,
            false,
            a,
            b,
            worth_parallel(m, n, k),
        );
        out.set_len(len);
    }
    out
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`, with `dst` row-major and contiguous.
pub fn gemm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, a: MatRef, b: MatRef) {
    assert!(dst.len() >= m * n, "gemm: destination too small");
    debug_assert!(
        m == 0
            || k == 0
            || a.data.len() as isize > (m as isize - 1) * a.rs + (k as isize - 1) * a.cs
    );
    debug_assert!(
        n == 0
            || k == 0
            || b.data.len() as isize > (k as isize - 1) * b.rs + (n as isize - 1) * b.cs
    );
    // SAFETY: `dst` is an exclusive slice of at least m x n elements.
    unsafe {
        gemm_ptr(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            n,
            accumulate,
            a,
            b,
            worth_parallel(m, n, k),
        )
    }
}

/// `dst (+)= a[m, k] · b[k, n]` single-threaded, with `dst` given by a raw pointer and strides
/// (for writing one head's block of a `[seq, hidden]` matrix).
///
/// # Safety
/// `dst` must be valid for writes at every `i * dst_rs + j` for `i < m`, `j < n`, and no other
/// thread may access those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_into_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
) {
    // SAFETY: covered by this unsafe fn's contract (CPU features, pointer bounds), which the
    // caller upholds.
    unsafe {
        gemm_ptr(m, n, k, dst, dst_rs as usize, accumulate, a, b, false);
    }
}

/// A raw pointer that may be shared across rayon tasks writing disjoint elements.
#[derive(Clone, Copy)]
pub struct SharedMut(pub *mut f32);
// SAFETY: users guarantee that concurrent tasks write disjoint elements.
unsafe impl Send for SharedMut {}
// SAFETY: as for `Send`: the tasks sharing it write disjoint elements.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    #[inline(always)]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// The transpose of a row-major `[rows, cols]` matrix, row-major `[cols, rows]`.
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(v.len(), rows * cols, "transpose: not rows x cols");
    let mut t = vec![0f32; v.len()];
    for (i, row) in v.chunks_exact(cols.max(1)).enumerate() {
        for (j, x) in row.iter().enumerate() {
            t[j * rows + i] = *x;
        }
    }
    t
}

/// Sum over rows of a row-major `[rows, cols]` matrix.
pub fn column_sums(data: &[f32], cols: usize) -> Vec<f32> {
    let rows = data.len() / cols.max(1);
    let chunk_rows = (rows / rayon::current_num_threads().max(1)).max(64);
    data.par_chunks(chunk_rows * cols)
        .map(|chunk| {
            let mut acc = vec![0f32; cols];
            for row in chunk.chunks_exact(cols) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .reduce(
            || vec![0f32; cols],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        )
}
