//! The register tile shared by every GEMM micro-kernel: its shape ([`MR`] x [`NR`]), where its
//! `A` rows come from ([`ASource`]) and where and how it is stored ([`Tile`]). Packed panels
//! (f32 [`crate::sgemm::PackedB`], int8 [`crate::qgemm::PackedI8`]) use this shape on every
//! kernel family, so a weight packed once runs on any of them.

/// Rows of `A` (and `C`) per register tile.
pub const MR: usize = 12;
/// Columns of `B` (and `C`) per register tile and packed panel.
pub const NR: usize = 32;

/// Where a micro-kernel reads `A`.
#[derive(Clone, Copy)]
pub enum ASource {
    /// An `MR`-tall packed panel: element `(i, p)` at `[p * MR + i]`.
    Panel(*const f32),
    /// Rows in place, at this row stride: element `(i, p)` at `[i * stride + p]`.
    Rows(*const f32, usize),
}

impl ASource {
    /// `(first element, row step, depth step)` of the operand.
    #[inline(always)]
    pub fn strides(self) -> (*const f32, usize, usize) {
        match self {
            ASource::Panel(p) => (p, 1, MR),
            ASource::Rows(p, lda) => (p, lda, 1),
        }
    }
}

/// Where and how a micro-kernel stores its `mr x nr` tile (`mr <= MR`, `nr <= NR`): at `c`,
/// row stride `ldc`; overwriting `c` (plus `bias`, when not null) or adding to it; with the
/// exact GELU applied when `gelu`.
#[derive(Clone, Copy)]
pub struct Tile {
    /// First element of the tile in `C`.
    pub c: *mut f32,
    /// Row stride of `C`.
    pub ldc: usize,
    /// Valid rows.
    pub mr: usize,
    /// Valid columns.
    pub nr: usize,
    /// Overwrite `C` (else add to it).
    pub overwrite: bool,
    /// Null, or `nr` values added in an overwriting store.
    pub bias: *const f32,
    /// Apply the exact GELU after the store's add.
    pub gelu: bool,
}

/// Calls the sub-tile kernel `f::<R>` monomorphised for the row count `rows` (1 to 5, or
/// `max` rows for anything larger), the dispatch every family's tile driver needs: a kernel's
/// accumulators live in registers only when `R` is a constant.
macro_rules! by_rows {
    ($rows:expr, $max:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            _ => $f::<{ $max }>($($arg),*),
        }
    };
}
#[allow(unused_imports)]
pub(crate) use by_rows;
