//! The CPU: which kernel family runs ([`Isa`], decided once per process), plus the small
//! plumbing every kernel shares: matrix operands ([`MatRef`]), per-thread scratch buffers
//! ([`with_buffer`]) and bf16 rounding.
//!
//! This is the one place that looks at CPU features. [`isa()`] is the best family the CPU
//! supports, lowered by the environment variable `PREFINE_ISA` (`avx512bf16`, `avx512`,
//! `avx2-vnni`, `avx2`,
//! `neon-dotprod`, `neon`, `simd128`, `scalar`), so that tests and benchmarks can run every path on one
//! machine. A value the CPU cannot run (a higher family, or another architecture's) is ignored
//! with a warning on stderr. `PREFINE_BF16_NATIVE=0`, the older switch, still caps the family at
//! `avx512` (the f32-FMA path for bf16 GEMMs).
//!
//! A module of leaves: it imports no other module of this crate.

use std::cell::Cell;
use std::sync::OnceLock;

/// A kernel family: the instruction set the GEMMs and the vector math run on. Ordered from the
/// most portable to the most capable within an architecture (`Scalar` is the lowest
/// everywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust (what wasm32 runs; what every other family is tested against).
    Scalar,
    /// x86-64 with AVX2 and FMA (Haswell / Zen 1 and later): 8-lane f32; int8 on `vpdpbusd`
    /// ymm when the CPU has AVX-VNNI (Alder Lake, Sapphire Rapids, Zen 5 and later), widening
    /// multiplies otherwise.
    Avx2Fma {
        /// AVX-VNNI (the VEX-encoded `vpdpbusd`) is available.
        vnni: bool,
    },
    /// x86-64 with AVX-512 F, BW, VL and VNNI (Ice Lake, Cascade Lake, Zen 4 and later):
    /// 16-lane f32 and `vpdpbusd` int8.
    Avx512,
    /// [`Isa::Avx512`] plus AVX512_BF16 (`vdpbf16ps` for bf16 GEMMs: Sapphire Rapids, Zen 4+).
    Avx512Bf16,
    /// aarch64 Advanced SIMD (every ARMv8-A core); `dotprod` when the core has SDOT
    /// (ARMv8.2-A dot product: Cortex-A55/A75 and later, Apple M1+), else widening multiplies.
    Neon {
        /// `SDOT` is available.
        dotprod: bool,
    },
    /// WebAssembly SIMD128 (every current browser; chosen at build time: the wasm32 build
    /// enables `simd128`, see `.cargo/config.toml`): 4-lane f32, `i32x4.dot_i16x8_s` int8.
    Simd128,
}

impl Isa {
    /// The name `PREFINE_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2Fma { vnni: false } => "avx2",
            Isa::Avx2Fma { vnni: true } => "avx2-vnni",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Neon { dotprod: false } => "neon",
            Isa::Neon { dotprod: true } => "neon-dotprod",
            Isa::Simd128 => "simd128",
        }
    }

    /// Parses a `PREFINE_ISA` value (case-insensitive; `avx2fma`, `dotprod` and `portable` are
    /// accepted too).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "portable" => Isa::Scalar,
            "avx2" | "avx2fma" | "avx2+fma" => Isa::Avx2Fma { vnni: false },
            "avx2-vnni" | "avxvnni" => Isa::Avx2Fma { vnni: true },
            "avx512" => Isa::Avx512,
            "avx512bf16" => Isa::Avx512Bf16,
            "neon" => Isa::Neon { dotprod: false },
            "neon-dotprod" | "dotprod" => Isa::Neon { dotprod: true },
            "simd128" | "wasm-simd" => Isa::Simd128,
            _ => return None,
        })
    }

    /// Rank within its architecture (0 = scalar).
    fn rank(self) -> u8 {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2Fma { vnni: false } | Isa::Neon { dotprod: false } | Isa::Simd128 => 1,
            // Below AVX-512 in what it offers, though not every AVX-512 CPU has AVX-VNNI: see
            // `cpu_runs`.
            Isa::Avx2Fma { vnni: true } => 2,
            Isa::Avx512 => 3,
            Isa::Neon { dotprod: true } => 2,
            Isa::Avx512Bf16 => 4,
        }
    }

    /// Whether code for `self` can run where `other` is the best family (same architecture, not
    /// higher).
    pub fn runs_within(self, other: Isa) -> bool {
        let same_arch = matches!(
            (self, other),
            (Isa::Scalar, _)
                | (Isa::Neon { .. }, Isa::Neon { .. })
                | (Isa::Simd128, Isa::Simd128)
                | (
                    Isa::Avx2Fma { .. } | Isa::Avx512 | Isa::Avx512Bf16,
                    Isa::Avx2Fma { .. } | Isa::Avx512 | Isa::Avx512Bf16
                )
        );
        same_arch && self.rank() <= other.rank()
    }

    /// The AVX-512 kernels (f32, int8 VNNI, vector math) run.
    pub fn avx512(self) -> bool {
        matches!(self, Isa::Avx512 | Isa::Avx512Bf16)
    }

    /// The AVX512_BF16 dot-product kernels run.
    pub fn avx512_bf16(self) -> bool {
        self == Isa::Avx512Bf16
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The best family this CPU supports (detected once).
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma")) {
            return Isa::Scalar;
        }
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
            if has!("avx512bf16") {
                return Isa::Avx512Bf16;
            }
            return Isa::Avx512;
        }
        Isa::Avx2Fma {
            vnni: has!("avxvnni"),
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        Isa::Neon {
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        Isa::Simd128
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    {
        Isa::Scalar
    }
}

/// The family in use: [`detected`], lowered by `PREFINE_ISA` (read once per process).
fn selected() -> Isa {
    static SELECTED: OnceLock<Isa> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        let best = detected();
        let mut isa = best;
        if std::env::var_os("PREFINE_BF16_NATIVE").is_some_and(|v| v == "0")
            && isa == Isa::Avx512Bf16
        {
            isa = Isa::Avx512;
        }
        match std::env::var("PREFINE_ISA") {
            Err(std::env::VarError::NotPresent) => isa,
            Ok(v) => match Isa::parse(&v) {
                Some(want) if cpu_runs(want) => want,
                Some(want) => {
                    eprintln!(
                        "prefine: PREFINE_ISA={want} is not supported by this CPU (best: {best}); \
                         using {isa}"
                    );
                    isa
                }
                None => {
                    eprintln!(
                        "prefine: PREFINE_ISA={v:?} is not one of scalar, avx2, avx2-vnni, \
                         avx512, avx512bf16, neon, neon-dotprod, simd128; using {isa}"
                    );
                    isa
                }
            },
            Err(e) => {
                eprintln!("prefine: PREFINE_ISA: {e}; using {isa}");
                isa
            }
        }
    })
}

thread_local! {
    /// A per-thread lower family set by [`with_isa`] (tests).
    static OVERRIDE: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The kernel family that runs on this thread now: the process-wide choice (see the module
/// doc), or the one [`with_isa`] set on this thread. A kernel reads it once at its entry and
/// hands it down to the tasks it spawns.
pub fn isa() -> Isa {
    OVERRIDE.with(Cell::get).unwrap_or_else(selected)
}

/// Whether this CPU can run `isa`: within the detected family, and for AVX-VNNI only where the
/// CPU has it (an AVX-512 CPU may lack it: Ice Lake and Cascade Lake servers, Zen 4).
fn cpu_runs(isa: Isa) -> bool {
    let vnni_ok = || {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avxvnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    isa.runs_within(detected()) && (isa != (Isa::Avx2Fma { vnni: true }) || vnni_ok())
}

/// Every family this CPU can run, lowest first (the ones tests compare).
pub fn supported() -> Vec<Isa> {
    [
        Isa::Scalar,
        Isa::Avx2Fma { vnni: false },
        Isa::Avx2Fma { vnni: true },
        Isa::Avx512,
        Isa::Avx512Bf16,
        Isa::Neon { dotprod: false },
        Isa::Neon { dotprod: true },
        Isa::Simd128,
    ]
    .into_iter()
    .filter(|&i| cpu_runs(i))
    .collect()
}

/// Runs `f` with the kernels called from this thread on `isa` (restored afterwards). Panics
/// when the CPU cannot run `isa`. For tests that compare families within one process.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    assert!(
        cpu_runs(isa),
        "with_isa: {isa} does not run on this CPU ({})",
        detected()
    );
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|c| c.replace(Some(isa))));
    f()
}

/// Runs `f` once on every family this CPU supports ([`supported`], via [`with_isa`]).
pub fn for_each_isa(f: impl Fn()) {
    for isa in supported() {
        with_isa(isa, &f);
    }
}

/// A matrix operand given by its data and strides (in elements).
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Stride between consecutive rows.
    pub rs: isize,
    /// Stride between consecutive columns.
    pub cs: isize,
    /// Round the values to bf16 before multiplying (mixed precision).
    pub bf16: bool,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self::strided(data, cols as isize, 1)
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self::strided(data, 1, cols as isize)
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

    /// The same operand, rounded to bf16 before multiplying when `bf16`.
    pub fn rounded_to_bf16(self, bf16: bool) -> Self {
        Self { bf16, ..self }
    }
}

/// A per-thread scratch buffer (see [`with_buffer`]).
pub type Buffer<T = f32> = std::thread::LocalKey<std::cell::RefCell<Vec<T>>>;
/// The contents of an i16 scratch buffer (a `thread_local!` of this type is a `Buffer<i16>`).
pub type ScratchI16 = std::cell::RefCell<Vec<i16>>;

/// Runs `f` on the first `len` elements of this thread's buffer `key` (grown when short), or on
/// a fresh buffer when it is already borrowed: a thread blocked in a parallel loop may run
/// another op stolen by rayon, which must not share the outer call's buffer. The contents are
/// stale: `f` must write what it reads.
pub fn with_buffer<T: Copy + Default, R>(
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

/// `f32` -> bf16 bits, rounding to nearest with ties to even (as PyTorch's `to(bfloat16)`);
/// NaN stays NaN (quiet), infinities stay infinite, overflow rounds to infinity.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7FFF + lsb) >> 16) as u16
}

/// bf16 bits -> `f32` (exact).
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `x` rounded to the nearest bf16 value (ties to even), as f32; NaN stays NaN.
pub fn round_bf16(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

/// Rounds every value of `x` to bf16 in place ([`round_bf16`], vectorised).
pub fn round_bf16_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa().avx512() {
        // SAFETY: the selected family has AVX-512F.
        unsafe { round_bf16_avx512(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = round_bf16(*v));
}

/// [`round_bf16_in_place`] with AVX-512: add `0x7fff` plus the lowest kept bit, clear the low
/// half; NaN lanes are kept as they are (the add could carry them into another value).
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_bf16_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let half = _mm512_set1_epi32(0x7fff);
    let one = _mm512_set1_epi32(1);
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let round = |v: __m512| {
        let bits = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), one);
        let r = _mm512_and_si512(_mm512_add_epi32(bits, _mm512_add_epi32(half, lsb)), high);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_mask_mov_ps(_mm512_castsi512_ps(r), nan, v)
    };
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n`: the 16 values lie inside `x`.
        unsafe { _mm512_storeu_ps(p.add(i), round(_mm512_loadu_ps(p.add(i)))) };
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = (1u16 << (n - i)) - 1;
        // SAFETY: the masked lanes are the `n - i` values left in `x`.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, p.add(i));
            _mm512_mask_storeu_ps(p.add(i), mask, round(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_lower_paths_are_supported() {
        for isa in supported() {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
            assert!(isa.runs_within(detected()));
        }
        assert_eq!(supported()[0], Isa::Scalar);
        assert!(supported().contains(&detected()));
        assert!(!Isa::Avx2Fma { vnni: false }.runs_within(Isa::Neon { dotprod: true }));
        assert!(!Isa::Avx512.runs_within(Isa::Avx2Fma { vnni: true }));
        assert!(Isa::Avx2Fma { vnni: false }.runs_within(Isa::Avx2Fma { vnni: true }));
        assert!(!Isa::Avx2Fma { vnni: true }.runs_within(Isa::Avx2Fma { vnni: false }));
        assert!(Isa::Neon { dotprod: false }.runs_within(Isa::Neon { dotprod: true }));
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2Fma { vnni: false }));
        assert_eq!(Isa::parse("avx2-vnni"), Some(Isa::Avx2Fma { vnni: true }));
        assert_eq!(Isa::parse("sse9"), None);
    }

    #[test]
    fn with_isa_sets_and_restores_the_thread_family() {
        let before = isa();
        with_isa(Isa::Scalar, || assert_eq!(isa(), Isa::Scalar));
        assert_eq!(isa(), before);
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even_on_every_path() {
        let vals: Vec<f32> = (0..1000)
            .map(|i| f32::from_bits(0x3f80_0000 + i * 0x1_0001))
            .chain([f32::NAN, f32::INFINITY, -0.0, 1.0 + f32::EPSILON])
            .collect();
        for path in supported() {
            let mut v = vals.clone();
            with_isa(path, || round_bf16_in_place(&mut v));
            for (a, b) in v.iter().zip(&vals) {
                let want = round_bf16(*b);
                assert!(a.to_bits() == want.to_bits() || (a.is_nan() && want.is_nan()));
            }
        }
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80); // tie -> even
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    }
}
