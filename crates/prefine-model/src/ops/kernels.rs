//! Raw CPU kernels shared by the fused ops: a row-major GEMM front-end over the `gemm` crate
//! and column reductions.

use rayon::prelude::*;

/// A matrix operand given by its data and strides (in elements).
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    /// Stride between consecutive rows.
    pub rs: isize,
    /// Stride between consecutive columns.
    pub cs: isize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols as isize,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols as isize,
        }
    }
}

/// A new row-major `[m, n]` matrix `a · b`, allocated without zero-filling (every element is
/// written by the GEMM before the vector is exposed).
pub(crate) fn gemm_new(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
    let len = m * n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if k == 0 || len == 0 {
        out.resize(len, 0.0);
        return out;
    }
    let work = m * n * k;
    // SAFETY: `out` has capacity for m x n elements; in overwrite mode (accumulate = false) both
    // GEMM paths write every element of the m x n block before anything reads it, and only raw
    // pointers touch the memory until `set_len`.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if super::sgemm::available() && std::env::var_os("PREFINE_GEMM_CRATE").is_none() {
            super::sgemm::sgemm(
                m,
                n,
                k,
                a,
                b,
                out.as_mut_ptr(),
                n,
                false,
                work > 48 * 48 * 48,
            );
            out.set_len(len);
            return out;
        }
        let parallelism = if work > 48 * 48 * 48 {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        };
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
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
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let work = m * n * k;
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() && std::env::var_os("PREFINE_GEMM_CRATE").is_none() {
        // SAFETY: AVX-512F detected; `dst` holds m x n elements; operands cover their extents.
        unsafe {
            super::sgemm::sgemm(
                m,
                n,
                k,
                a,
                b,
                dst.as_mut_ptr(),
                n,
                accumulate,
                work > 48 * 48 * 48,
            )
        };
        return;
    }
    let parallelism = if work > 48 * 48 * 48 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the operand extents are implied by (m, n, k) and the strides; callers build them
    // from slices whose lengths cover those extents (checked by the debug asserts below).
    debug_assert!(a.data.len() as isize > (m as isize - 1) * a.rs + (k as isize - 1) * a.cs);
    debug_assert!(b.data.len() as isize > (k as isize - 1) * b.rs + (n as isize - 1) * b.cs);
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
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
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() && std::env::var_os("PREFINE_GEMM_CRATE").is_none() {
        super::sgemm::sgemm(m, n, k, a, b, dst, dst_rs as usize, accumulate, false);
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        a.data.as_ptr(),
        a.cs,
        a.rs,
        b.data.as_ptr(),
        b.cs,
        b.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
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
