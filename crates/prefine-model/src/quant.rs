//! Quantised backbone weights for inference: int8 and bf16 linear layers.
//!
//! [`Encoder::quantize`](crate::Encoder::quantize) replaces the f32 weight of every linear layer of every block (query,
//! key, value, attention output, intermediate, output) and of the pooler by a
//! [`QuantizedLinear`] and releases the f32 copy; at int8 the word and position embedding
//! tables become [`Int8Table`]s too (together 90% of an int8 MiniLM file otherwise). Layer
//! norms, biases, the token-type table, LoRA pairs and heads stay f32; a LoRA delta is computed
//! in f32 next to the quantised base product.
//!
//! - [`Precision::Int8`]: per-output-channel symmetric int8 weights, activations quantised per
//!   row at run time (u8 with a zero point), i32 accumulation with AVX512_VNNI where the CPU has
//!   it, f32 output (see `prefine_kernels::qgemm`).
//! - [`Precision::Bf16`]: weights rounded to bf16 (nearest, ties to even). On a CPU with
//!   AVX512_BF16 the activations are rounded too and the products run on its bf16 dot products
//!   with f32 accumulation; elsewhere the weights are widened to f32 for the f32 GEMM (half the
//!   memory, no faster arithmetic). See `prefine_kernels::bf16`.
//!
//! A quantised encoder is inference-only: a training forward (dropout on), a trainable
//! parameter, a backward pass through a quantised layer, merging LoRA groups and writing a
//! Hugging Face checkpoint are refused with [`Error::InferenceOnly`]. It is written with
//! [`Encoder::save_quantized`](crate::Encoder::save_quantized) (safetensors: int8 weights and tables as `I8` `[out, in]` plus an
//! `F32` `<name>_scale` `[out]`, or `BF16` weights; the precision in the header's metadata
//! under `prefine_precision`) and read back by [`Encoder::from_model_dir`](crate::Encoder::from_model_dir), which maps the
//! file: the word table's codes stay in the mapping (only the rows a text uses are paged in)
//! and every other tensor's pages are released once converted. Files written before the
//! tables were quantised (f32 tables and pooler) still load.
//!
//! ```no_run
//! use prefine_model::{Encoder, EncoderInput, Forward, Precision};
//! let (mut enc, _) = Encoder::from_model_dir("models/all-MiniLM-L6-v2")?;
//! enc.quantize(Precision::Int8)?;
//! let input = EncoderInput::from_vecs(&[vec![101, 7592, 102]], &[vec![0; 3]], &[vec![1; 3]])?;
//! let hidden = enc.forward(&input, Forward::eval(None))?;
//! # Ok::<(), prefine_model::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};

use crate::error::{Error, Result};
use crate::int8_table::{Int8Table, INT8_TABLES};
use crate::ops::f32_slice;
pub use crate::precision::Precision;
use crate::weights::MappedFile;
use prefine_kernels::bf16::{bf16_linear, bf16_to_f32, Bf16Matrix};
use prefine_kernels::packed_f32::{packed_linear, PackedF32Matrix};
use prefine_kernels::qgemm::{
    int8_linear, int8_linear_quantized, quantize_rows, quantize_weight_rows, PackedI8,
    QuantizedRows,
};

/// The safetensors metadata key that records a quantised checkpoint's precision.
pub const PRECISION_METADATA_KEY: &str = "prefine_precision";

#[derive(Clone)]
enum QuantizedWeight {
    Int8(PackedI8),
    Bf16(Bf16Matrix),
    /// f32, packed once in the GEMM kernel's layout ([`Encoder::prepare_inference`](crate::Encoder::prepare_inference)).
    F32(PackedF32Matrix),
}

/// The quantised weight of one linear layer `[out, in]` (the bias stays an f32 parameter of
/// the layer).
#[derive(Clone)]
pub struct QuantizedLinear {
    out: usize,
    inp: usize,
    weight: QuantizedWeight,
}

impl std::fmt::Debug for QuantizedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantizedLinear {{ {} [{}, {}] }}",
            self.precision(),
            self.out,
            self.inp
        )
    }
}

impl QuantizedLinear {
    /// Quantises an f32 weight `[out, in]` to `precision`: `Bf16` or `Int8`, or `F32` kept at
    /// full precision and packed for inference.
    pub fn quantize(weight: &Tensor, precision: Precision) -> Result<Self> {
        let (out, inp) = weight.dims2()?;
        let w: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        if precision == Precision::F32 {
            let weight = QuantizedWeight::F32(PackedF32Matrix::from_f32(&w, out, inp));
            return Ok(Self { out, inp, weight });
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "cannot quantise a weight holding a non-finite value (flat index {i})"
            )));
        }
        let weight = match precision {
            Precision::Int8 => {
                let (q, scales) = quantize_weight_rows(&w, out, inp);
                QuantizedWeight::Int8(PackedI8::pack(&q, &scales, out, inp))
            }
            Precision::Bf16 => QuantizedWeight::Bf16(Bf16Matrix::from_f32(&w, out, inp)),
            Precision::F32 => unreachable!("packed above"),
        };
        Ok(Self { out, inp, weight })
    }

    /// From int8 values (row-major `[out, in]`) and one scale per output.
    pub fn from_int8(q: &[i8], scales: &[f32], out: usize, inp: usize) -> Result<Self> {
        if q.len() != out * inp || scales.len() != out {
            return Err(Error::Input(format!(
                "int8 weight: {} values and {} scales do not fit [{out}, {inp}]",
                q.len(),
                scales.len()
            )));
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
            return Err(Error::Input(format!(
                "int8 weight: scale {s} is not a finite non-negative number"
            )));
        }
        if q.contains(&i8::MIN) {
            return Err(Error::Input(
                "int8 weight: -128 is outside the symmetric range [-127, 127]".into(),
            ));
        }
        Ok(Self {
            out,
            inp,
            weight: QuantizedWeight::Int8(PackedI8::pack(q, scales, out, inp)),
        })
    }

    /// From bf16 bits (row-major `[out, in]`).
    pub fn from_bf16_bits(bits: &[u16], out: usize, inp: usize) -> Result<Self> {
        if bits.len() != out * inp {
            return Err(Error::Input(format!(
                "bf16 weight: {} values do not fit [{out}, {inp}]",
                bits.len()
            )));
        }
        if let Some(i) = bits.iter().position(|&b| b & 0x7F80 == 0x7F80) {
            return Err(Error::Input(format!(
                "bf16 weight holds a NaN or infinite value (flat index {i})"
            )));
        }
        Ok(Self {
            out,
            inp,
            weight: QuantizedWeight::Bf16(Bf16Matrix::from_bits(bits, out, inp)),
        })
    }

    /// The precision of the weight.
    pub fn precision(&self) -> Precision {
        match self.weight {
            QuantizedWeight::Int8(_) => Precision::Int8,
            QuantizedWeight::Bf16(_) => Precision::Bf16,
            QuantizedWeight::F32(_) => Precision::F32,
        }
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// Bytes of weight data held in memory (int8 also keeps a scale and a row sum per output).
    pub fn bytes(&self) -> usize {
        match &self.weight {
            QuantizedWeight::Int8(p) => p.bytes(),
            QuantizedWeight::Bf16(b) => b.bytes(),
            QuantizedWeight::F32(p) => p.bytes(),
        }
    }

    /// The weight the layer computes with, as f32 `[out, in]` (scale · q, or the bf16 value).
    pub fn dequantize(&self) -> Result<Tensor> {
        let v: Vec<f32> = match &self.weight {
            QuantizedWeight::Int8(p) => {
                let (q, scales) = p.unpack();
                q.iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 * scales[i / self.inp])
                    .collect()
            }
            QuantizedWeight::Bf16(b) => b.to_bits().into_iter().map(bf16_to_f32).collect(),
            QuantizedWeight::F32(p) => p.to_f32(),
        };
        Ok(Tensor::from_vec(v, (self.out, self.inp), &Device::Cpu)?)
    }

    /// `x · Wᵀ + bias` for `x: [..., in]`, `bias: [out]`. Inference only: a backward pass
    /// through it fails with a message saying so.
    pub fn forward(self: &Arc<Self>, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.apply(x, bias, false)
    }

    /// `GELU(x · Wᵀ + bias)` (exact GELU), the activation applied to each output tile as the
    /// GEMM writes it: no pass and no tensor of its own. Inference only, as [`Self::forward`].
    pub fn forward_gelu(self: &Arc<Self>, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.apply(x, bias, true)
    }

    fn apply(self: &Arc<Self>, x: &Tensor, bias: &Tensor, gelu: bool) -> Result<Tensor> {
        let x = x.contiguous()?;
        let input = match &self.weight {
            QuantizedWeight::Int8(_) => Some(quantized_input(&x, self.inp)?),
            _ => None,
        };
        Ok(x.apply_op2_arc(
            &bias.contiguous()?,
            Arc::new(Box::new(QuantizedLinearOp {
                layer: self.clone(),
                gelu,
                input,
            })),
        )?)
    }

    /// The tensors of the checkpoint entry `name` (`<layer>.weight`): `(name, dtype, shape,
    /// little-endian bytes)`.
    pub(crate) fn checkpoint_entries(
        &self,
        name: &str,
    ) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
        let shape = vec![self.out, self.inp];
        match &self.weight {
            QuantizedWeight::Int8(p) => {
                let (q, scales) = p.unpack();
                vec![
                    (
                        name.to_string(),
                        safetensors::Dtype::I8,
                        shape,
                        q.iter().map(|&v| v as u8).collect(),
                    ),
                    (
                        format!("{name}_scale"),
                        safetensors::Dtype::F32,
                        vec![self.out],
                        scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                    ),
                ]
            }
            QuantizedWeight::Bf16(b) => vec![(
                name.to_string(),
                safetensors::Dtype::BF16,
                shape,
                b.to_bits().iter().flat_map(|v| v.to_le_bytes()).collect(),
            )],
            QuantizedWeight::F32(p) => vec![(
                name.to_string(),
                safetensors::Dtype::F32,
                shape,
                p.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect(),
            )],
        }
    }
}

thread_local! {
    /// The input this thread quantised last, by tensor id (ids are never reused): the query,
    /// key and value layers read one input, which is quantised once.
    static LAST_INPUT: std::cell::RefCell<Option<(candle_core::TensorId, usize, Arc<QuantizedRows>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `x` (contiguous, rows of `k`) quantised to u8 rows, reusing this thread's last result when
/// it is the same tensor.
fn quantized_input(x: &Tensor, k: usize) -> Result<Arc<QuantizedRows>> {
    let id = x.id();
    let hit = LAST_INPUT.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(i, kk, _)| *i == id && *kk == k)
            .map(|(_, _, q)| q.clone())
    });
    if let Some(q) = hit {
        return Ok(q);
    }
    let n = x.elem_count();
    if k == 0 || !n.is_multiple_of(k) {
        return Err(Error::Input(format!(
            "quantized_linear: input {:?} does not end with in_features {k}",
            x.dims()
        )));
    }
    let q = Arc::new(crate::ops::with_f32(x, "quantized_linear", |v| {
        quantize_rows(v, n / k, k)
    })?);
    LAST_INPUT.with(|c| *c.borrow_mut() = Some((id, k, q.clone())));
    Ok(q)
}

struct QuantizedLinearOp {
    layer: Arc<QuantizedLinear>,
    /// Exact GELU on the output.
    gelu: bool,
    /// The input already quantised (int8 weights).
    input: Option<Arc<QuantizedRows>>,
}

impl CustomOp2 for QuantizedLinearOp {
    fn name(&self) -> &'static str {
        "prefine-quantized-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = &self.layer;
        let gelu = self.gelu;
        let x = f32_slice(s1, l1, "quantized_linear")?;
        let b = f32_slice(s2, l2, "quantized_linear")?;
        if l1.dims().last() != Some(&q.inp) {
            candle_core::bail!(
                "quantized_linear: input {:?} does not end with in_features {}",
                l1.dims(),
                q.inp
            );
        }
        if b.len() != q.out {
            candle_core::bail!(
                "quantized_linear: bias has {} elements, expected {}",
                b.len(),
                q.out
            );
        }
        let m = x.len() / q.inp.max(1);
        let y = match &q.weight {
            QuantizedWeight::Int8(p) => match &self.input {
                Some(xq) => int8_linear_quantized(xq, m, p, b, gelu),
                None => int8_linear(x, m, p, b, gelu),
            },
            QuantizedWeight::Bf16(w) => bf16_linear(x, m, w, b, gelu),
            QuantizedWeight::F32(w) => packed_linear(x, m, w, b, gelu),
        };
        let mut od = l1.dims().to_vec();
        *od.last_mut().expect("non-empty dims") = q.out;
        Ok((CpuStorage::F32(y), Shape::from(od)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        _dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        candle_core::bail!(
            "a {} linear layer prepared for inference (quantised or packed) has no gradient: \
             such encoders are inference-only (train on the f32 model as loaded, quantise or \
             pack afterwards)",
            self.layer.precision()
        )
    }
}

/// The precision recorded in a safetensors file's header metadata (`F32` when absent), read
/// without loading the tensors.
pub fn checkpoint_precision(path: &Path) -> Result<Precision> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    let mut head = Vec::new();
    if f.read_exact(&mut len).is_ok() {
        head.extend_from_slice(&len);
        let n = u64::from_le_bytes(len).min(100_000_001);
        (&mut f)
            .take(n)
            .read_to_end(&mut head)
            .map_err(|e| Error::io(path, e))?;
    }
    checkpoint_precision_bytes(&head, path)
}

/// [`checkpoint_precision`] from the file's bytes (at least its 8-byte length and header);
/// `path` names it in errors.
pub fn checkpoint_precision_bytes(bytes: &[u8], path: &Path) -> Result<Precision> {
    let bad = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let Some(len) = bytes.get(..8) else {
        return Err(bad("not a readable safetensors file (too short)".into()));
    };
    let n = u64::from_le_bytes(len.try_into().unwrap_or([0; 8]));
    if n > 100_000_000 {
        return Err(bad(format!(
            "not a readable safetensors file (header of {n} bytes)"
        )));
    }
    let header = bytes
        .get(8..8 + n as usize)
        .ok_or_else(|| bad("not a readable safetensors file (header cut short)".into()))?;
    let v: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
    match v
        .get("__metadata__")
        .and_then(|m| m.get(PRECISION_METADATA_KEY))
    {
        None => Ok(Precision::F32),
        Some(p) => p
            .as_str()
            .and_then(Precision::parse)
            .ok_or_else(|| bad(format!("unknown {PRECISION_METADATA_KEY} {p}"))),
    }
}

/// A quantised checkpoint split into its f32 tensors, its quantised linear weights (keyed by
/// the weight's name, `<layer>.weight`) and its int8 tables (the word embeddings, keyed
/// [`INT8_TABLES`]).
pub(crate) struct QuantizedCheckpoint {
    pub tensors: HashMap<String, Tensor>,
    pub linears: HashMap<String, Arc<QuantizedLinear>>,
    pub tables: HashMap<String, Arc<Int8Table>>,
}

/// Reads a checkpoint written by [`Encoder::save_quantized`](crate::Encoder::save_quantized) from `bytes`. When `file` is the
/// mapping those bytes come from, the int8 word table stays in it (see [`Int8Table::mapped`])
/// and the pages of every other tensor are released once it has been converted.
pub(crate) fn read_quantized_checkpoint(
    bytes: &[u8],
    path: &Path,
    file: Option<&Arc<MappedFile>>,
) -> Result<QuantizedCheckpoint> {
    let bad = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let release = |data: &[u8]| {
        if let Some(f) = file {
            f.release(data);
        }
    };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
    let mut tensors = HashMap::new();
    let mut raw_i8: BTreeMap<String, (Vec<usize>, &[u8])> = BTreeMap::new();
    let mut linears = HashMap::new();
    for (name, view) in st.iter() {
        let shape = view.shape().to_vec();
        let data = view.data();
        match view.dtype() {
            safetensors::Dtype::F32 => {
                let t = Tensor::from_raw_buffer(data, DType::F32, &shape, &Device::Cpu)?;
                release(data);
                let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(bad(format!("tensor {name} holds a NaN or infinite value")));
                }
                tensors.insert(name.to_string(), t);
            }
            safetensors::Dtype::I8 => {
                raw_i8.insert(name.to_string(), (shape, data));
            }
            safetensors::Dtype::BF16 => {
                let [out, inp] = shape[..] else {
                    return Err(bad(format!("bf16 tensor {name}: expected 2 dimensions")));
                };
                let bits: Vec<u16> = data
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                release(data);
                let q = QuantizedLinear::from_bf16_bits(&bits, out, inp)
                    .map_err(|e| bad(format!("{name}: {e}")))?;
                linears.insert(name.to_string(), Arc::new(q));
            }
            other => {
                return Err(bad(format!(
                "tensor {name} has dtype {other:?}; a quantised checkpoint holds F32, I8 and BF16"
            )))
            }
        }
    }
    let mut tables = HashMap::new();
    for (name, (shape, data)) in raw_i8 {
        let [out, inp] = shape[..] else {
            return Err(bad(format!("int8 tensor {name}: expected 2 dimensions")));
        };
        let sname = format!("{name}_scale");
        let scales: Vec<f32> = tensors
            .remove(&sname)
            .ok_or_else(|| bad(format!("int8 tensor {name} has no {sname}")))?
            .flatten_all()?
            .to_vec1()?;
        if let Some(key) = INT8_TABLES.into_iter().find(|t| name.ends_with(t)) {
            let table = match file {
                Some(f) => {
                    let offset = data.as_ptr() as usize - f.bytes().as_ptr() as usize;
                    Int8Table::mapped(f.clone(), offset, scales, out, inp)
                }
                None => {
                    Int8Table::from_codes(data.iter().map(|&b| b as i8).collect(), scales, out, inp)
                }
            }
            .map_err(|e| bad(format!("{name}: {e}")))?;
            tables.insert(key.to_string(), Arc::new(table));
            continue;
        }
        let q: Vec<i8> = data.iter().map(|&b| b as i8).collect();
        release(data);
        let lin = QuantizedLinear::from_int8(&q, &scales, out, inp)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        linears.insert(name, Arc::new(lin));
    }
    Ok(QuantizedCheckpoint {
        tensors,
        linears,
        tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input quantised once and reused (same tensor) gives what quantising it again gives,
    /// and another tensor of the same shape is never served the cached codes.
    #[test]
    fn shared_input_quantisation_is_exact_and_keyed_by_tensor() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(
            (0..6 * 8)
                .map(|i| ((i % 7) as f32 - 3.0) * 0.1)
                .collect::<Vec<f32>>(),
            (6, 8),
            &dev,
        )
        .unwrap();
        let bias = Tensor::zeros(6, DType::F32, &dev).unwrap();
        let q = Arc::new(QuantizedLinear::quantize(&w, Precision::Int8).unwrap());
        let xa: Vec<f32> = (0..3 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
        let xb: Vec<f32> = xa.iter().map(|v| -2.0 * v).collect();
        let a = Tensor::from_vec(xa.clone(), (3, 8), &dev).unwrap();
        let b = Tensor::from_vec(xb, (3, 8), &dev).unwrap();
        let first = q.forward(&a, &bias).unwrap().to_vec2::<f32>().unwrap();
        let again = q.forward(&a, &bias).unwrap().to_vec2::<f32>().unwrap();
        let fresh = q
            .forward(&Tensor::from_vec(xa, (3, 8), &dev).unwrap(), &bias)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(first, fresh);
        let other = q.forward(&b, &bias).unwrap().to_vec2::<f32>().unwrap();
        assert_ne!(first, other);
    }
}
