//! Raw CPU kernels shared by the fused ops: a row-major GEMM front-end over the `gemm` crate
//! and column reductions.

use rayon::prelude::*;

use super::autocast::{round_bf16_in_place, MatmulPrecision};

/// A matrix operand given by its data and strides (in elements).
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    /// Stride between consecutive rows.
    pub rs: isize,
    /// Stride between consecutive columns.
    pub cs: isize,
    /// Round the values to bf16 before multiplying ([`MatmulPrecision::Bf16`]).
    pub bf16: bool,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols as isize,
            cs: 1,
            bf16: false,
        }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols as isize,
            bf16: false,
        }
    }

    /// A strided matrix: element `(i, j)` at `data[i * rs + j * cs]`.
    pub fn strided(data: &'a [f32], rs: isize, cs: isize) -> Self {
        Self {
            data,
            rs,
            cs,
            bf16: false,
        }
    }

    /// The same operand, multiplied in `precision`.
    pub fn at(self, precision: MatmulPrecision) -> Self {
        Self {
            bf16: precision == MatmulPrecision::Bf16,
            ..self
        }
    }
}

/// Whether the AVX-512 kernel is used (`PREFINE_GEMM_CRATE=1` forces the `gemm` crate, for
/// comparisons).
pub(crate) fn use_own_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OWN.get_or_init(|| {
            super::sgemm::available() && std::env::var_os("PREFINE_GEMM_CRATE").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst (+)= a[m, k] · b[k, n]` with `dst` row-major at row stride `ldc`; multi-threaded when
/// `parallel`. The one place that picks the GEMM implementation.
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` elements at stride `ldc` (and for reads
/// when `accumulate`), not aliased by `a` or `b`, and untouched by other threads.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_ptr(
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
    #[cfg(target_arch = "x86_64")]
    if use_own_kernel() {
        let start = super::sgemm::Start::from_accumulate(accumulate);
        super::sgemm::sgemm(m, n, k, a, b, dst, ldc, start, parallel);
        return;
    }
    if nothing_to_multiply(m, n, k, dst, ldc, accumulate) {
        return;
    }
    // The `gemm` crate multiplies f32 only: round bf16 operands into copies first.
    // Only the span the product reads is copied (strides are non-negative here).
    let rounded = |x: MatRef, rows: usize, cols: usize| {
        let span = (rows - 1) * x.rs.max(0) as usize + (cols - 1) * x.cs.max(0) as usize + 1;
        let mut v = x.data[..span.min(x.data.len())].to_vec();
        round_bf16_in_place(&mut v);
        v
    };
    let (a_copy, b_copy);
    let a_data = if a.bf16 {
        a_copy = rounded(a, m, k);
        &a_copy[..]
    } else {
        a.data
    };
    let b_data = if b.bf16 {
        b_copy = rounded(b, k, n);
        &b_copy[..]
    } else {
        b.data
    };
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldc as isize,
        accumulate,
        a_data.as_ptr(),
        a.cs,
        a.rs,
        b_data.as_ptr(),
        b.cs,
        b.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// Finishes a GEMM with an empty operand: nothing for `m == 0` or `n == 0`, a zeroed `dst` for
/// `k == 0` (unless accumulating). Returns whether the GEMM was of that kind.
///
/// # Safety
/// As [`gemm_ptr`]'s `dst`.
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
            std::ptr::write_bytes(dst.add(i * ldc), 0, n);
        }
    }
    true
}

/// `m` copies of `bias`, row-major: the starting value of a GEMM that accumulates `x · Wᵀ`
/// onto the bias (no separate bias pass).
pub(crate) fn bias_rows(bias: &[f32], m: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(m * bias.len());
    for _ in 0..m {
        y.extend_from_slice(bias);
    }
    y
}

/// A per-thread scratch buffer (see [`with_buffer`]).
pub(crate) type Buffer<T = f32> = std::thread::LocalKey<std::cell::RefCell<Vec<T>>>;

/// Runs `f` on the first `len` elements of this thread's buffer `key` (grown when short), or on
/// a fresh buffer when it is already borrowed: a thread blocked in a parallel loop may run
/// another op stolen by rayon, which must not share the outer call's buffer. The contents are
/// stale: `f` must write what it reads.
pub(crate) fn with_buffer<T: Copy + Default, R>(
    key: &'static Buffer<T>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

/// A new row-major `[m, n]` matrix `a · b + 1 biasᵀ` (a linear layer's forward), with the exact
/// GELU applied when `gelu`. With this crate's kernel the bias is added in the kernel's first
/// store and the output is never zero-filled; otherwise the output starts as the bias rows.
pub(crate) fn linear_new(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    bias: &[f32],
    gelu: bool,
) -> Vec<f32> {
    let mut y = linear_bias_new(m, n, k, a, b, bias);
    if gelu {
        super::fast_math::gelu_in_place(&mut y);
    }
    y
}

fn linear_bias_new(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, bias: &[f32]) -> Vec<f32> {
    assert_eq!(bias.len(), n, "linear: one bias per output column");
    #[cfg(target_arch = "x86_64")]
    if use_own_kernel() {
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: `out` has capacity for m x n elements, not aliased by the operands; starting
        // from the bias the kernel writes every element before `set_len` exposes them.
        unsafe {
            super::sgemm::sgemm(
                m,
                n,
                k,
                a,
                b,
                out.as_mut_ptr(),
                n,
                super::sgemm::Start::Bias(bias),
                worth_parallel(m, n, k),
            );
            out.set_len(m * n);
        }
        return out;
    }
    let mut y = bias_rows(bias, m);
    gemm(m, n, k, &mut y, true, a, b);
    y
}

/// Whether a GEMM is big enough to split across threads.
pub(crate) fn worth_parallel(m: usize, n: usize, k: usize) -> bool {
    m * n * k > 48 * 48 * 48
}

/// A new row-major `[m, n]` matrix `a · b`, allocated without zero-filling (every element is
/// written by the GEMM before the vector is exposed).
pub(crate) fn gemm_new(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
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
pub(crate) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: MatRef,
    b: MatRef,
) {
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
pub(crate) unsafe fn gemm_into_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
) {
    gemm_ptr(m, n, k, dst, dst_rs as usize, accumulate, a, b, false);
}

/// A raw pointer that may be shared across rayon tasks writing disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
// SAFETY: users guarantee that concurrent tasks write disjoint elements.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    #[inline(always)]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// The transpose of a row-major `[rows, cols]` matrix, row-major `[cols, rows]`.
pub(crate) fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
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
pub(crate) fn column_sums(data: &[f32], cols: usize) -> Vec<f32> {
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
