//! Preparing an [`Encoder`] for inference: quantising its weights (see [`crate::quant`]),
//! packing f32 weights, and writing a quantised model directory.

use std::collections::HashMap;
use std::path::Path;

use super::{Encoder, POOLER_WEIGHT};
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::quant::PRECISION_METADATA_KEY;
use crate::weights::write_atomic;

impl Encoder {
    /// Quantises the backbone's linear weights (every block's query, key, value, attention
    /// output, intermediate and output) to `precision` for inference, releasing their f32
    /// copies. Quantising to the current precision does nothing; a quantised encoder cannot be
    /// quantised again nor turned back to f32 (reload the f32 model), and a merged LoRA group
    /// must be unmerged first.
    pub fn quantize(&mut self, precision: Precision) -> Result<()> {
        if self.is_packed() && precision != Precision::F32 {
            return Err(Error::InferenceOnly {
                precision: self.precision(),
                what: format!("converting packed f32 weights to {precision}"),
            });
        }
        if precision == self.precision() {
            return Ok(());
        }
        if self.precision() != Precision::F32 {
            return Err(Error::InferenceOnly {
                precision: self.precision(),
                what: format!("converting to {precision}"),
            });
        }
        self.convert_linears(precision)?;
        if precision == Precision::Int8 {
            self.body.quantize_tables()?;
        }
        if let Some(p) = &mut self.pooler {
            p.quantize(precision)?;
        }
        self.set_precision(precision);
        Ok(())
    }

    /// Prepares the backbone for inference at `precision`. `Int8` and `Bf16` quantise (see
    /// [`Encoder::quantize`]); `F32` keeps every value and packs each block's linear weight
    /// once into the GEMM kernel's layout, releasing the f32 tensors, so that no forward pass
    /// repacks weights. Either way the encoder becomes inference-only, like a quantised one
    /// (LoRA groups and heads still run in f32 beside the packed weights). Preparing twice at
    /// the same precision does nothing.
    pub fn prepare_inference(&mut self, precision: Precision) -> Result<()> {
        if precision != Precision::F32 {
            return self.quantize(precision);
        }
        if self.is_packed() {
            return Ok(());
        }
        if self.precision() != Precision::F32 {
            return Err(Error::InferenceOnly {
                precision: self.precision(),
                what: "converting back to f32".into(),
            });
        }
        self.convert_linears(Precision::F32)?;
        self.set_packed();
        Ok(())
    }

    /// Replaces every block's f32 linear weight by its [`QuantizedLinear`] at `precision`.
    fn convert_linears(&mut self, precision: Precision) -> Result<()> {
        if let Some(m) = self
            .linears()
            .into_iter()
            .find_map(|(_, l)| l.merged.clone())
        {
            return Err(Error::Input(format!(
                "LoRA group {m:?} is merged into the base weights; unmerge it (or bake it) before \
                 quantising or packing"
            )));
        }
        use rayon::prelude::*;
        let mut layers: Vec<&mut crate::lora::LoraLinear> =
            self.linears_mut().into_iter().map(|(_, l)| l).collect();
        layers
            .par_iter_mut()
            .map(|lin| lin.quantize(precision))
            .collect::<Result<Vec<()>>>()?;
        Ok(())
    }

    /// Bytes of the backbone's weights as held for inference: f32 tensors at 4 bytes per
    /// element, quantised linear weights at their own size (int8: values, scales and row sums).
    pub fn weight_bytes(&self) -> usize {
        let f32_bytes: usize = self
            .base_params()
            .iter()
            .map(|(_, p)| 4 * p.elem_count())
            .sum();
        let q: usize = self
            .linears()
            .into_iter()
            .filter_map(|(_, l)| l.quantized.as_ref().map(|q| q.bytes()))
            .sum();
        let tables: usize = self.body.int8_tables().iter().map(|(_, t)| t.bytes()).sum();
        let pooler = self
            .pooler
            .as_ref()
            .and_then(|p| p.quantized.as_ref())
            .map_or(0, |q| q.bytes());
        f32_bytes + q + tables + pooler
    }

    /// Writes a quantised backbone as a model directory: `config.json`, `model.safetensors`
    /// (f32 tensors, the quantised linear weights as I8 + `*.weight_scale` or BF16, the
    /// precision in the metadata) and the tokenizer files of `tokenizer_from`. It is read back
    /// by [`Encoder::from_model_dir`]. An f32 encoder is written with
    /// [`Encoder::save_pretrained`] instead.
    pub fn save_quantized(&self, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
        if self.is_packed() {
            return Err(Error::InferenceOnly {
                precision: Precision::F32,
                what: "saving packed weights (a run-time layout: save the model as loaded)".into(),
            });
        }
        if self.precision() == Precision::F32 {
            return Err(Error::Input(
                "save_quantized: the encoder is not quantised; use save_pretrained".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("model.safetensors");
        let mut entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, p) in self.base_params() {
            let t = p.t().detach().contiguous()?;
            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            entries.push((
                name,
                safetensors::Dtype::F32,
                t.dims().to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        let naming = self.naming();
        for ((i, t), lin) in self.linears() {
            let q = lin.quantized.as_ref().ok_or_else(|| {
                Error::Input(format!(
                    "layer {i} {t:?} is not quantised in a quantised encoder"
                ))
            })?;
            entries.extend(q.checkpoint_entries(&format!("{}.weight", naming.linear(i, t))));
        }
        for (name, table) in self.body.int8_tables() {
            entries.extend(table.checkpoint_entries(&name));
        }
        if let Some(q) = self.pooler.as_ref().and_then(|p| p.quantized.as_ref()) {
            entries.extend(q.checkpoint_entries(POOLER_WEIGHT));
        }
        let mut views = Vec::with_capacity(entries.len());
        for (name, dtype, shape, bytes) in &entries {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map_err(
                |e| Error::Weights {
                    path: path.clone(),
                    reason: format!("{name}: {e}"),
                },
            )?;
            views.push((name.clone(), view));
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert(
            PRECISION_METADATA_KEY.to_string(),
            self.precision().name().to_string(),
        );
        let bytes =
            safetensors::serialize(views, Some(meta)).map_err(|source| Error::Safetensors {
                path: path.clone(),
                source,
            })?;
        write_atomic(&path, &bytes)?;
        self.write_config_and_tokenizer(dir, tokenizer_from)
    }
}
