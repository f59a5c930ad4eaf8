//! [`WeightReader`]: hands a checkpoint's tensors to the model's `load` functions by name and
//! shape, and collects every missing tensor and shape mismatch into one error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::int8_table::Int8Table;
use crate::params::Param;
use crate::quant::{Precision, QuantizedLinear};

/// The quantised parts of a checkpoint (none for an f32 one).
#[derive(Default)]
pub struct QuantizedParts {
    /// Quantised linear weights, keyed `<layer>.weight`, all of `precision`.
    pub linears: HashMap<String, Arc<QuantizedLinear>>,
    /// Int8 tables (the word embeddings), keyed by their checkpoint name.
    pub tables: HashMap<String, Arc<Int8Table>>,
    /// The number format of the linear weights.
    pub precision: Precision,
}

/// The named tensors of one checkpoint, taken one by one. A tensor that is missing or has the
/// wrong shape is recorded and a zero placeholder is returned, so that loading goes on and
/// [`WeightReader::finish`] can report every problem at once.
pub struct WeightReader {
    tensors: HashMap<String, Tensor>,
    /// Quantised linear weights (keyed `<layer>.weight`), all of `precision`.
    quantized: HashMap<String, Arc<QuantizedLinear>>,
    tables: HashMap<String, Arc<Int8Table>>,
    precision: Precision,
    path: PathBuf,
    missing: Vec<String>,
    shape_errors: Vec<String>,
}

/// An embedding table as read: f32, or int8.
pub(crate) enum TableWeight {
    /// A float table `[rows, dim]`.
    F32(Param),
    /// An int8 table.
    Int8(Arc<Int8Table>),
}

/// A linear layer's base weight as read: f32, or quantised.
pub(crate) enum LinearWeight {
    /// A float weight `[out, in]`.
    F32(Param),
    /// A quantised weight.
    Quantized(Arc<QuantizedLinear>),
}

impl WeightReader {
    /// A reader over `tensors` (names already normalised) and the quantised parts;
    /// `path` is named in errors.
    pub fn new(tensors: HashMap<String, Tensor>, quantized: QuantizedParts, path: &Path) -> Self {
        Self {
            tensors,
            quantized: quantized.linears,
            tables: quantized.tables,
            precision: quantized.precision,
            path: path.to_path_buf(),
            missing: Vec::new(),
            shape_errors: Vec::new(),
        }
    }

    /// The number format of the linear weights.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn placeholder(shape: &[usize]) -> Result<Param> {
        Param::new(&Tensor::zeros(shape, DType::F32, &Device::Cpu)?)
    }

    /// The tensor `name` of shape `shape` (a zero placeholder, recorded, when it is missing or
    /// misshapen).
    pub fn param(&mut self, name: &str, shape: &[usize]) -> Result<Param> {
        match self.tensors.remove(name) {
            None => {
                self.missing.push(name.to_string());
                Self::placeholder(shape)
            }
            Some(t) => self.checked(name, t, shape),
        }
    }

    /// The tensor `name` if present (a shape mismatch is still recorded).
    pub fn optional(&mut self, name: &str, shape: &[usize]) -> Result<Option<Param>> {
        match self.tensors.remove(name) {
            None => Ok(None),
            Some(t) => self.checked(name, t, shape).map(Some),
        }
    }

    /// Whether the checkpoint holds the quantised weight `name` (not yet taken).
    pub(crate) fn has_quantized(&self, name: &str) -> bool {
        self.quantized.contains_key(name)
    }

    /// Whether the checkpoint holds `name` (not yet taken).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn checked(&mut self, name: &str, t: Tensor, shape: &[usize]) -> Result<Param> {
        if t.dims() != shape {
            self.shape_errors
                .push(format!("{name}: expected {shape:?}, found {:?}", t.dims()));
            return Self::placeholder(shape);
        }
        Param::new(&t)
    }

    /// The base weight of a linear layer `[out, in]`: f32, or quantised in a quantised
    /// checkpoint (where a layer the quantiser leaves alone, such as MobileBERT's bottlenecks,
    /// is stored and read as f32).
    pub(crate) fn linear_weight(
        &mut self,
        name: &str,
        out: usize,
        inp: usize,
    ) -> Result<LinearWeight> {
        if self.precision == Precision::F32 {
            return Ok(LinearWeight::F32(self.param(name, &[out, inp])?));
        }
        let precision = self.precision;
        Ok(match self.quantized.remove(name) {
            Some(q) if q.dims() == (out, inp) && q.precision() == precision => {
                LinearWeight::Quantized(q)
            }
            Some(q) => {
                self.shape_errors.push(format!(
                    "{name}: expected {precision} [{out}, {inp}], found {q:?}"
                ));
                LinearWeight::F32(Self::placeholder(&[out, inp])?)
            }
            None if self.tensors.contains_key(name) => {
                LinearWeight::F32(self.param(name, &[out, inp])?)
            }
            None => {
                self.missing.push(format!("{name} ({precision})"));
                LinearWeight::F32(Self::placeholder(&[out, inp])?)
            }
        })
    }

    /// The embedding table `name` `[rows, dim]`: int8 when the checkpoint holds it so, f32
    /// otherwise.
    pub(crate) fn table(&mut self, name: &str, rows: usize, dim: usize) -> Result<TableWeight> {
        match self.tables.remove(name) {
            Some(t) if t.dims() == (rows, dim) => Ok(TableWeight::Int8(t)),
            Some(t) => {
                self.shape_errors.push(format!(
                    "{name}: expected int8 [{rows}, {dim}], found {t:?}"
                ));
                Ok(TableWeight::F32(Self::placeholder(&[rows, dim])?))
            }
            None => Ok(TableWeight::F32(self.param(name, &[rows, dim])?)),
        }
    }

    /// Drops buffers that carry no learned weights (e.g. `embeddings.position_ids`).
    pub fn ignore(&mut self, name: &str) {
        self.tensors.remove(name);
    }

    /// Fails with every missing tensor and shape mismatch; otherwise returns the names of the
    /// tensors nobody took, sorted.
    pub fn finish(self) -> Result<Vec<String>> {
        if !self.missing.is_empty() || !self.shape_errors.is_empty() {
            let mut reason = String::new();
            if !self.missing.is_empty() {
                reason += &format!(
                    "{} missing tensor(s): {}",
                    self.missing.len(),
                    self.missing.join(", ")
                );
            }
            if !self.shape_errors.is_empty() {
                if !reason.is_empty() {
                    reason += "; ";
                }
                reason += &format!("shape mismatch: {}", self.shape_errors.join(", "));
            }
            return Err(Error::Weights {
                path: self.path,
                reason,
            });
        }
        let mut unexpected: Vec<String> = self
            .tensors
            .into_keys()
            .chain(self.quantized.into_keys())
            .chain(self.tables.into_keys())
            .collect();
        unexpected.sort();
        Ok(unexpected)
    }
}
