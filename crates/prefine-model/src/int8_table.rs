//! An int8 embedding table: the word and position embeddings of an int8 backbone.
//!
//! The word table is the largest tensor of a small encoder (all-MiniLM-L6-v2: 30,522 x 384 =
//! 11.7M values, 47 MB in f32, more than its six blocks together). [`Int8Table`] holds it as
//! one symmetric int8 code per value and one f32 scale per row (`row ≈ scale · codes`), the
//! scheme of the int8 linear weights; a lookup dequantises only the rows it reads. ONNX
//! Runtime's `quantize_dynamic` quantises the embedding `Gather` the same way.
//!
//! A table read from a memory-mapped model file keeps its codes in the file: a lookup reads the
//! rows it needs (one positioned read per distinct token, from the OS's page cache), so the
//! table takes no memory of the process at all (see [`crate::weights::MappedFile`]).

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::weights::MappedFile;
use prefine_kernels::qgemm::quantize_weight_rows;

/// The checkpoint name of the word-embedding table (after the family prefix is stripped).
pub const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";
/// The checkpoint name of the position-embedding table.
pub const POSITION_EMBEDDINGS: &str = "embeddings.position_embeddings.weight";
/// The checkpoint name of ModernBERT's token-embedding table.
pub const TOKEN_EMBEDDINGS: &str = "embeddings.tok_embeddings.weight";
/// The tables an int8 backbone holds as int8.
pub const INT8_TABLES: [&str; 3] = [WORD_EMBEDDINGS, POSITION_EMBEDDINGS, TOKEN_EMBEDDINGS];

/// Where a table's int8 codes live.
#[derive(Clone)]
enum Codes {
    /// In memory, row-major `[rows, dim]`.
    Owned(Vec<i8>),
    /// In a mapped checkpoint, `rows * dim` bytes from `offset`, read row by row.
    Mapped {
        file: Arc<MappedFile>,
        offset: usize,
    },
}

/// An int8 table `[rows, dim]` with one scale per row (inference only).
#[derive(Clone)]
pub struct Int8Table {
    rows: usize,
    dim: usize,
    scales: Vec<f32>,
    codes: Codes,
}

impl std::fmt::Debug for Int8Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = match self.codes {
            Codes::Owned(_) => "in memory",
            Codes::Mapped { .. } => "mapped",
        };
        write!(f, "Int8Table {{ [{}, {}], {at} }}", self.rows, self.dim)
    }
}

impl Int8Table {
    /// Quantises an f32 table `[rows, dim]` row by row (symmetric, scale = max |v| / 127).
    pub fn quantize(table: &Tensor) -> Result<Self> {
        let (rows, dim) = table.dims2()?;
        let w: Vec<f32> = table.flatten_all()?.to_vec1()?;
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "cannot quantise an embedding table holding a non-finite value (flat index {i})"
            )));
        }
        let (codes, scales) = quantize_weight_rows(&w, rows, dim);
        Ok(Self {
            rows,
            dim,
            scales,
            codes: Codes::Owned(codes),
        })
    }

    /// From codes held in memory (row-major `[rows, dim]`) and one scale per row.
    pub fn from_codes(codes: Vec<i8>, scales: Vec<f32>, rows: usize, dim: usize) -> Result<Self> {
        if codes.len() != rows * dim {
            return Err(Error::Input(format!(
                "int8 table: {} codes do not fit [{rows}, {dim}]",
                codes.len()
            )));
        }
        Self::checked(rows, dim, scales, Codes::Owned(codes))
    }

    /// From `rows * dim` codes at `offset` in a mapped checkpoint; a row is read from the file
    /// when a lookup needs it, and never kept.
    pub fn mapped(
        file: Arc<MappedFile>,
        offset: usize,
        scales: Vec<f32>,
        rows: usize,
        dim: usize,
    ) -> Result<Self> {
        if offset
            .checked_add(rows * dim)
            .is_none_or(|end| end > file.bytes().len())
        {
            return Err(Error::Input(format!(
                "int8 table [{rows}, {dim}] at byte {offset} overruns a file of {} bytes",
                file.bytes().len()
            )));
        }
        Self::checked(rows, dim, scales, Codes::Mapped { file, offset })
    }

    fn checked(rows: usize, dim: usize, scales: Vec<f32>, codes: Codes) -> Result<Self> {
        if scales.len() != rows {
            return Err(Error::Input(format!(
                "int8 table: {} scales for {rows} rows",
                scales.len()
            )));
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
            return Err(Error::Input(format!(
                "int8 table: scale {s} is not a finite non-negative number"
            )));
        }
        Ok(Self {
            rows,
            dim,
            scales,
            codes,
        })
    }

    /// `(rows, dim)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.dim)
    }

    /// Whether the codes stay in a mapped file rather than in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.codes, Codes::Mapped { .. })
    }

    /// Bytes of the codes and scales.
    pub fn bytes(&self) -> usize {
        self.rows * self.dim + 4 * self.rows
    }

    fn codes(&self) -> &[i8] {
        match &self.codes {
            Codes::Owned(c) => c,
            Codes::Mapped { file, offset } => {
                let b = &file.bytes()[*offset..*offset + self.rows * self.dim];
                // SAFETY: i8 and u8 have the same size and alignment and every bit pattern is
                // valid for both; the slice borrows `file`, which outlives it.
                unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<i8>(), b.len()) }
            }
        }
    }

    /// The dequantised rows `ids` as an f32 tensor `[ids.len(), dim]`.
    pub fn gather(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(i) = ids.iter().find(|&&i| i as usize >= self.rows) {
            return Err(Error::Input(format!(
                "token id {i} outside an embedding table of {} rows",
                self.rows
            )));
        }
        let d = self.dim;
        let mut out = vec![0f32; ids.len() * d];
        match &self.codes {
            Codes::Owned(codes) => {
                for (o, &i) in out.chunks_exact_mut(d).zip(ids) {
                    let i = i as usize;
                    let row: &[i8] = &codes[i * d..(i + 1) * d];
                    for (o, &c) in o.iter_mut().zip(row) {
                        *o = c as f32 * self.scales[i];
                    }
                }
            }
            Codes::Mapped { file, offset } => {
                // One read per distinct row (padding and frequent tokens repeat): positions
                // sorted by row, the first of each run read and dequantised, the rest copied.
                let mut order: Vec<(u32, usize)> = ids.iter().copied().zip(0..).collect();
                order.sort_unstable();
                let mut buf = vec![0u8; d];
                let mut first = None;
                for (k, &(i, t)) in order.iter().enumerate() {
                    match first {
                        Some(f) if k > 0 && order[k - 1].0 == i => {
                            out.copy_within(f * d..(f + 1) * d, t * d);
                        }
                        _ => {
                            let row = i as usize;
                            file.read_at(offset + row * d, &mut buf)?;
                            self.dequantize_row(&mut out[t * d..(t + 1) * d], row, &buf);
                            first = Some(t);
                        }
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (ids.len(), d), &Device::Cpu)?)
    }

    /// The whole table dequantised to f32 `[rows, dim]` (a mapped table is read at once).
    pub fn dequantize(&self) -> Result<Tensor> {
        let d = self.dim;
        let codes: Vec<u8> = match &self.codes {
            Codes::Owned(codes) => codes.iter().map(|&c| c as u8).collect(),
            Codes::Mapped { file, offset } => {
                let mut buf = vec![0u8; self.rows * d];
                file.read_at(*offset, &mut buf)?;
                buf
            }
        };
        let mut out = vec![0f32; self.rows * d];
        for (row, (o, c)) in out
            .chunks_exact_mut(d)
            .zip(codes.chunks_exact(d))
            .enumerate()
        {
            self.dequantize_row(o, row, c);
        }
        Ok(Tensor::from_vec(out, (self.rows, d), &Device::Cpu)?)
    }

    /// Row `row`'s codes (as stored: two's-complement bytes) times its scale, into `out`.
    fn dequantize_row(&self, out: &mut [f32], row: usize, codes: &[u8]) {
        let s = self.scales[row];
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = c as i8 as f32 * s;
        }
    }

    /// The safetensors entries of the table under `name`: the codes as `I8` `[rows, dim]` and
    /// the scales as `F32` `<name>_scale` `[rows]`.
    pub(crate) fn checkpoint_entries(
        &self,
        name: &str,
    ) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
        vec![
            (
                name.to_string(),
                safetensors::Dtype::I8,
                vec![self.rows, self.dim],
                self.codes().iter().map(|&c| c as u8).collect(),
            ),
            (
                format!("{name}_scale"),
                safetensors::Dtype::F32,
                vec![self.rows],
                self.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_dequantises_rows_within_half_a_step() {
        let rows = 5;
        let dim = 7;
        let w: Vec<f32> = (0..rows * dim)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013)
            .collect();
        let t = Tensor::from_vec(w.clone(), (rows, dim), &Device::Cpu).unwrap();
        let table = Int8Table::quantize(&t).unwrap();
        let got: Vec<Vec<f32>> = table.gather(&[3, 0, 3]).unwrap().to_vec2().unwrap();
        for (row, &id) in got.iter().zip(&[3usize, 0, 3]) {
            let want = &w[id * dim..(id + 1) * dim];
            let step = want.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (g, w) in row.iter().zip(want) {
                assert!((g - w).abs() <= step / 2.0 + 1e-7, "{g} vs {w}");
            }
        }
        let err = table.gather(&[5]).unwrap_err().to_string();
        assert!(err.contains("token id 5"), "{err}");
    }

    #[test]
    fn mapped_and_owned_tables_agree_with_repeated_ids() {
        let (rows, dim) = (6, 5);
        let codes: Vec<i8> = (0..rows * dim)
            .map(|i| (i as i32 * 53 % 255 - 127) as i8)
            .collect();
        let scales: Vec<f32> = (0..rows).map(|r| 0.01 * (r + 1) as f32).collect();
        let owned = Int8Table::from_codes(codes.clone(), scales.clone(), rows, dim).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.bin");
        let mut bytes = vec![7u8; 3];
        bytes.extend(codes.iter().map(|&c| c as u8));
        std::fs::write(&path, &bytes).unwrap();
        let file = Arc::new(MappedFile::open(&path).unwrap());
        let mapped = Int8Table::mapped(file, 3, scales, rows, dim).unwrap();
        let ids = [4, 0, 4, 5, 0, 0, 2];
        let a: Vec<Vec<f32>> = owned.gather(&ids).unwrap().to_vec2().unwrap();
        let b: Vec<Vec<f32>> = mapped.gather(&ids).unwrap().to_vec2().unwrap();
        assert_eq!(a, b);
        let a: Vec<Vec<f32>> = owned.dequantize().unwrap().to_vec2().unwrap();
        let b: Vec<Vec<f32>> = mapped.dequantize().unwrap().to_vec2().unwrap();
        assert_eq!(a, b);
        assert_eq!(a[5][1], codes[5 * dim + 1] as f32 * 0.06);
    }

    #[test]
    fn bad_scales_and_sizes_are_refused() {
        assert!(Int8Table::from_codes(vec![0; 6], vec![1.0, 1.0], 2, 3).is_ok());
        assert!(Int8Table::from_codes(vec![0; 5], vec![1.0, 1.0], 2, 3).is_err());
        assert!(Int8Table::from_codes(vec![0; 6], vec![1.0], 2, 3).is_err());
        assert!(Int8Table::from_codes(vec![0; 6], vec![1.0, f32::NAN], 2, 3).is_err());
    }
}
