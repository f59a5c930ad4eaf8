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
/// The tables an int8 backbone holds as int8.
pub const INT8_TABLES: [&str; 2] = [WORD_EMBEDDINGS, POSITION_EMBEDDINGS];

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
        let mut dequantize = |row: usize, codes: &[i8], at: &[usize]| {
            let s = self.scales[row];
            for &t in at {
                for (o, &c) in out[t * d..(t + 1) * d].iter_mut().zip(codes) {
                    *o = c as f32 * s;
                }
            }
        };
        match &self.codes {
            Codes::Owned(codes) => {
                for (t, &i) in ids.iter().enumerate() {
                    let i = i as usize;
                    dequantize(i, &codes[i * d..(i + 1) * d], &[t]);
                }
            }
            Codes::Mapped { file, offset } => {
                // One read per distinct row (padding and frequent tokens repeat).
                let mut at: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
                for (t, &i) in ids.iter().enumerate() {
                    at.entry(i).or_default().push(t);
                }
                let mut buf = vec![0u8; d];
                for (i, ts) in at {
                    let i = i as usize;
                    file.read_at(offset + i * d, &mut buf)?;
                    let codes: Vec<i8> = buf.iter().map(|&b| b as i8).collect();
                    dequantize(i, &codes, &ts);
                }
            }
        }
        Ok(Tensor::from_vec(out, (ids.len(), d), &Device::Cpu)?)
    }

    /// The whole table dequantised to f32 `[rows, dim]`.
    pub fn dequantize(&self) -> Result<Tensor> {
        let ids: Vec<u32> = (0..self.rows as u32).collect();
        self.gather(&ids)
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
    fn bad_scales_and_sizes_are_refused() {
        assert!(Int8Table::from_codes(vec![0; 6], vec![1.0, 1.0], 2, 3).is_ok());
        assert!(Int8Table::from_codes(vec![0; 5], vec![1.0, 1.0], 2, 3).is_err());
        assert!(Int8Table::from_codes(vec![0; 6], vec![1.0], 2, 3).is_err());
        assert!(Int8Table::from_codes(vec![0; 6], vec![1.0, f32::NAN], 2, 3).is_err());
    }
}
