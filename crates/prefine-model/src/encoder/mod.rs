//! The encoder: one family's model ([`Body`], see [`crate::models`]) with an optional pooler,
//! named LoRA groups on its linear layers, a number format, and Hugging Face checkpoint I/O.
//! Weights map one to one onto the checkpoint's names (see [`Naming`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::config::{EncoderConfig, ModelType};
use crate::error::{Error, Result};
pub use crate::input::{EncoderInput, Forward};

mod quantize;
use crate::lora::{LoraConfig, LoraLinear, LoraPair, LoraTarget};
use crate::models::{normalise_keys, Body, LinearId, MixedRoute, Naming, Run};
use crate::ops;
use crate::params::{Param, SeedRng};
use crate::quant::{
    checkpoint_precision_bytes, read_quantized_checkpoint, Precision, QuantizedLinear,
};
use crate::reader::{LinearWeight, QuantizedParts, WeightReader};
use crate::weights::{load_safetensors_bytes, save_safetensors, write_atomic, MappedFile};

/// The pooler of `BertModel`: `tanh(W h_[CLS] + b)`.
#[derive(Debug, Clone)]
pub struct Pooler {
    /// `[hidden, hidden]` (empty, `[0, hidden]`, once quantised: see `quantized`).
    pub weight: Param,
    /// `[hidden]`.
    pub bias: Param,
    /// The quantised weight used instead of `weight` (inference only), if any.
    pub quantized: Option<Arc<QuantizedLinear>>,
}

/// The checkpoint name of the pooler's weight.
pub(crate) const POOLER_WEIGHT: &str = "pooler.dense.weight";

impl Pooler {
    /// A pooler with an f32 weight `[hidden, hidden]` and bias `[hidden]`.
    pub fn new(weight: Param, bias: Param) -> Self {
        Self {
            weight,
            bias,
            quantized: None,
        }
    }

    /// Reads `pooler.dense` if the checkpoint has it (f32, or quantised in a quantised
    /// checkpoint written since the pooler is quantised too).
    fn load(r: &mut WeightReader, h: usize) -> Result<Option<Self>> {
        let quantized = r.has_quantized(POOLER_WEIGHT);
        if !quantized && !r.contains(POOLER_WEIGHT) && !r.contains("pooler.dense.bias") {
            return Ok(None);
        }
        let bias = r.param("pooler.dense.bias", &[h])?;
        if !quantized {
            return Ok(Some(Self::new(r.param(POOLER_WEIGHT, &[h, h])?, bias)));
        }
        Ok(Some(match r.linear_weight(POOLER_WEIGHT, h, h)? {
            LinearWeight::F32(weight) => Self::new(weight, bias),
            LinearWeight::Quantized(q) => Self {
                weight: Param::new(&Tensor::zeros(
                    (0, h),
                    candle_core::DType::F32,
                    &Device::Cpu,
                )?)?,
                bias,
                quantized: Some(q),
            },
        }))
    }

    /// Quantises the weight to `precision` (inference only; `F32` keeps it as it is).
    pub(crate) fn quantize(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::F32 || self.quantized.is_some() {
            return Ok(());
        }
        let q = QuantizedLinear::quantize(&self.weight.t().detach(), precision)?;
        self.weight = Param::new(&Tensor::zeros(
            (0, q.dims().1),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)?;
        self.quantized = Some(Arc::new(q));
        Ok(())
    }

    /// Pools the first token's hidden state.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let y = match &self.quantized {
            Some(q) => q.forward(&cls, &self.bias.t())?,
            None => ops::linear(&cls, &self.weight.t(), &self.bias.t())?,
        };
        Ok(y.tanh()?)
    }
}

/// What loading a checkpoint found besides the expected tensors.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Tensors in the file that the encoder does not use (e.g. a task head).
    pub unexpected: Vec<String>,
    /// Optional tensors that were absent (e.g. the pooler).
    pub missing_optional: Vec<String>,
}

/// An encoder of any supported family, with named LoRA groups.
#[derive(Debug, Clone)]
pub struct Encoder {
    config: EncoderConfig,
    naming: Naming,
    /// The family's model (embeddings and blocks).
    pub body: Body,
    /// Pooler, when the checkpoint has one.
    pub pooler: Option<Pooler>,
    groups: BTreeMap<String, LoraConfig>,
    /// The number format of the blocks' linear weights (see [`crate::quant`]).
    precision: Precision,
    /// Whether the f32 linear weights are packed for inference
    /// ([`Encoder::prepare_inference`]).
    packed: bool,
}

impl Encoder {
    /// Loads `config.json` and `model.safetensors` from a Hugging Face model directory, or
    /// from a quantised model directory written by [`Encoder::save_quantized`].
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        let config = EncoderConfig::from_model_dir(dir)?;
        let path = dir.join("model.safetensors");
        let file = Arc::new(MappedFile::open(&path)?);
        Self::from_config_and_bytes(config, file.bytes(), &path, Some(&file))
    }

    /// Loads from the bytes of `config.json` and `model.safetensors` (f32 or quantised) held in
    /// memory; `path` names the weights in error messages.
    pub fn from_bytes(
        config_json: &[u8],
        weights: &[u8],
        path: &Path,
    ) -> Result<(Self, LoadReport)> {
        let cpath = path.with_file_name("config.json");
        let text = std::str::from_utf8(config_json).map_err(|e| Error::Parse {
            path: cpath.clone(),
            reason: format!("not UTF-8 ({e})"),
        })?;
        let config = EncoderConfig::from_json_str(text, &cpath)?;
        Self::from_config_and_bytes(config, weights, path, None)
    }

    /// Loads from the weights' `bytes`; `file`, when given, is the mapping they come from.
    fn from_config_and_bytes(
        config: EncoderConfig,
        bytes: &[u8],
        path: &Path,
        file: Option<&Arc<MappedFile>>,
    ) -> Result<(Self, LoadReport)> {
        let precision = checkpoint_precision_bytes(bytes, path)?;
        if precision != Precision::F32 {
            let ckpt = read_quantized_checkpoint(bytes, path, file)?;
            let quantized = QuantizedParts {
                linears: ckpt.linears,
                tables: ckpt.tables,
                precision,
            };
            return Self::from_tensors_with(config, ckpt.tensors, quantized, path);
        }
        let tensors = load_safetensors_bytes(bytes, path)?;
        Self::from_tensors(config, tensors, path)
    }

    /// Builds the encoder from named tensors; `path` is used in error messages.
    pub fn from_tensors(
        config: EncoderConfig,
        tensors: HashMap<String, Tensor>,
        path: &Path,
    ) -> Result<(Self, LoadReport)> {
        Self::from_tensors_with(config, tensors, QuantizedParts::default(), path)
    }

    /// [`Encoder::from_tensors`] where the blocks' linear weights and the int8 tables of a
    /// quantised checkpoint come as `quantized`.
    fn from_tensors_with(
        config: EncoderConfig,
        tensors: HashMap<String, Tensor>,
        quantized: QuantizedParts,
        path: &Path,
    ) -> Result<(Self, LoadReport)> {
        let naming = Naming(config.model_type);
        let precision = quantized.precision;
        let mut r = WeightReader::new(normalise_keys(tensors, naming), quantized, path);
        let body = Body::load(&config, &mut r)?;
        let pooler = Pooler::load(&mut r, config.hidden_size)?;
        let mut report = LoadReport {
            unexpected: r.finish()?,
            missing_optional: Vec::new(),
        };
        if pooler.is_none() && config.model_type == ModelType::Bert {
            report.missing_optional.push("pooler.dense".into());
        }
        if !report.unexpected.is_empty() {
            tracing::warn!(
                "{}: {} unexpected tensor(s) ignored: {}",
                path.display(),
                report.unexpected.len(),
                report.unexpected.join(", ")
            );
        }
        Ok((
            Self {
                config,
                naming,
                body,
                pooler,
                groups: BTreeMap::new(),
                precision,
                packed: false,
            },
            report,
        ))
    }

    /// A randomly initialised encoder (BERT's N(0, 0.02) init), for tests and from-scratch runs.
    pub fn random(config: EncoderConfig, rng: &mut SeedRng) -> Result<Self> {
        config.validate()?;
        let tensors = Body::random_tensors(&config, rng)?.into_iter().collect();
        Ok(Self::from_tensors(config, tensors, Path::new("<random>"))?.0)
    }

    /// An independent copy of the base weights (no LoRA groups), frozen.
    pub fn deep_copy_base(&self) -> Result<Self> {
        self.require_f32("copying the f32 base weights")?;
        let mut tensors = HashMap::new();
        for (name, p) in self.base_params() {
            tensors.insert(name, p.t().detach().copy()?);
        }
        Ok(Self::from_tensors(self.config.clone(), tensors, Path::new("<copy>"))?.0)
    }

    /// The architecture.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The checkpoint naming scheme.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// Hidden size.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The number format of the blocks' linear weights.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub(crate) fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Whether the f32 linear weights are packed for inference
    /// ([`Encoder::prepare_inference`]).
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    pub(crate) fn set_packed(&mut self) {
        self.packed = true;
    }

    /// Whether the linear weights are held for inference only (quantised or packed).
    pub fn is_inference_only(&self) -> bool {
        self.precision != Precision::F32 || self.packed
    }

    /// Fails with [`Error::InferenceOnly`] on a quantised or packed encoder.
    fn require_f32(&self, what: &str) -> Result<()> {
        if !self.is_inference_only() {
            Ok(())
        } else {
            Err(Error::InferenceOnly {
                precision: self.precision,
                what: what.to_string(),
            })
        }
    }

    /// On a quantised encoder: refuses training mode and trainable parameters (their
    /// gradients would flow through quantised layers that have none).
    fn check_inference_only(&self, training: bool) -> Result<()> {
        if !self.is_inference_only() {
            return Ok(());
        }
        if training {
            return self.require_f32("a training forward pass (dropout on)");
        }
        let lora_trainable = self
            .body
            .linears()
            .iter()
            .any(|(_, l)| l.loras.values().any(|p| p.a.trainable() || p.b.trainable()));
        if lora_trainable || self.base_params().iter().any(|(_, p)| p.trainable()) {
            return self.require_f32("a forward pass with trainable parameters");
        }
        Ok(())
    }

    /// Runs the encoder: `[batch, seq, hidden]` last hidden states.
    pub fn forward(&self, input: &EncoderInput, mut fwd: Forward<'_>) -> Result<Tensor> {
        self.check_inference_only(fwd.dropout_rng.is_some())?;
        for g in [fwd.group, fwd.also].into_iter().flatten() {
            if !self.groups.contains_key(g) {
                return Err(Error::UnknownGroup(g.to_string()));
            }
        }
        self.check_input(input)?;
        self.body
            .forward(&self.config, input, &mut Run::Single(&mut fwd))
    }

    /// Checks sequence length and token ids against the config.
    fn check_input(&self, input: &EncoderInput) -> Result<()> {
        let cfg = &self.config;
        let (_, s) = input.dims()?;
        if s > cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "sequence of {s} tokens exceeds max_position_embeddings {}",
                cfg.max_position_embeddings
            )));
        }
        let ids = input.input_ids.flatten_all()?;
        let max_id = ids.max(0)?.to_scalar::<u32>()?;
        if max_id as usize >= cfg.vocab_size {
            return Err(Error::Input(format!(
                "token id {max_id} outside the vocabulary of {}",
                cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Inference-only forward pass where every row of the batch runs with its own LoRA group
    /// (`row_groups[i]`, `None` for the bare backbone): the base matmuls are shared by all rows,
    /// and each group's delta `s (x Aᵀ) Bᵀ` is computed on the rows of that group only and added
    /// to them. No dropout. Row `i` of the result equals (up to float rounding) row `i` of
    /// `forward(input_i, Forward::eval(row_groups[i]))` run alone. Refused while a group is
    /// merged into the base weights.
    pub fn forward_mixed(
        &self,
        input: &EncoderInput,
        row_groups: &[Option<&str>],
    ) -> Result<Tensor> {
        self.check_inference_only(false)?;
        let (b, _) = input.dims()?;
        if row_groups.len() != b {
            return Err(Error::Input(format!(
                "{} row groups for a batch of {b} rows",
                row_groups.len()
            )));
        }
        let mut rows: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (i, g) in row_groups.iter().enumerate() {
            if let Some(g) = g {
                if !self.groups.contains_key(*g) {
                    return Err(Error::UnknownGroup(g.to_string()));
                }
                rows.entry(g).or_default().push(i as u32);
            }
        }
        if let Some(m) = self
            .body
            .linears()
            .into_iter()
            .find_map(|(_, l)| l.merged.as_deref())
        {
            return Err(Error::Input(format!(
                "LoRA group {m:?} is merged into the base weights; unmerge it before a mixed forward"
            )));
        }
        let routes = rows
            .into_iter()
            .map(|(g, idx)| {
                let n = idx.len();
                Ok(MixedRoute {
                    group: g,
                    rows: Tensor::from_vec(idx, n, &Device::Cpu)?,
                    all: n == b,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.check_input(input)?;
        self.body
            .forward(&self.config, input, &mut Run::Mixed(&routes))
    }

    // ----- LoRA groups -----

    /// Adds a LoRA group with PEFT initialisation. Fails if the name exists.
    pub fn add_lora_group(
        &mut self,
        name: &str,
        cfg: &LoraConfig,
        rng: &mut SeedRng,
    ) -> Result<()> {
        cfg.validate(self.config.num_hidden_layers)?;
        if self.groups.contains_key(name) {
            return Err(Error::config(
                "lora group",
                format!("{name:?} already exists"),
            ));
        }
        let targets = self.naming().resolve_targets(&cfg.targets).map_err(|t| {
            Error::config(
                "lora.targets",
                format!(
                    "{t:?} is not a linear layer of a {:?} model",
                    self.config.model_type
                ),
            )
        })?;
        let cfg = &LoraConfig {
            targets,
            ..cfg.clone()
        };
        // Layer by layer, targets in the config's order (the RNG draw order of PEFT).
        let mut linears = self.body.linears_mut();
        for i in (0..self.config.num_hidden_layers).filter(|&i| cfg.covers_layer(i)) {
            for t in &cfg.targets {
                let Some((_, lin)) = linears.iter_mut().find(|(id, _)| *id == (i, *t)) else {
                    continue;
                };
                let (out, inp) = lin.dims();
                let mut pair = LoraPair::init(inp, out, cfg, rng)?;
                pair.a.set_trainable(true);
                pair.b.set_trainable(true);
                lin.loras.insert(name.to_string(), pair);
            }
        }
        self.groups.insert(name.to_string(), cfg.clone());
        Ok(())
    }

    /// Inserts a LoRA pair from loaded tensors (used by the PEFT reader).
    pub(crate) fn insert_lora_pair(
        &mut self,
        group: &str,
        layer: usize,
        t: LoraTarget,
        pair: LoraPair,
    ) -> Result<()> {
        let lin = self
            .body
            .linear_mut((layer, t))
            .ok_or_else(|| Error::Input(format!("layer {layer} has no {t:?} layer")))?;
        lin.loras.insert(group.to_string(), pair);
        Ok(())
    }

    /// Registers a group's config without creating pairs (used by the PEFT reader).
    pub(crate) fn register_group(&mut self, name: &str, cfg: LoraConfig) -> Result<()> {
        if self.groups.contains_key(name) {
            return Err(Error::config(
                "lora group",
                format!("{name:?} already exists"),
            ));
        }
        self.groups.insert(name.to_string(), cfg);
        Ok(())
    }

    /// Removes a LoRA group (unmerging it first if merged).
    pub fn remove_lora_group(&mut self, name: &str) -> Result<()> {
        if self.groups.remove(name).is_none() {
            return Err(Error::UnknownGroup(name.to_string()));
        }
        {
            for (_, lin) in self.body.linears_mut() {
                if lin.merged.as_deref() == Some(name) {
                    lin.unmerge()?;
                }
                lin.loras.remove(name);
            }
        }
        Ok(())
    }

    /// The names of the LoRA groups, sorted.
    pub fn group_names(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    /// The config of a group.
    pub fn group_config(&self, name: &str) -> Option<&LoraConfig> {
        self.groups.get(name)
    }

    /// Folds a group into the base weights (inference with that group then costs nothing extra).
    pub fn merge_group(&mut self, name: &str) -> Result<()> {
        self.require_f32("merging a LoRA group")?;
        if !self.groups.contains_key(name) {
            return Err(Error::UnknownGroup(name.to_string()));
        }
        {
            for (_, lin) in self.body.linears_mut() {
                lin.merge(name)?;
            }
        }
        Ok(())
    }

    /// Folds a group into the base weights for good and forgets the group (used to start full
    /// fine-tuning from a pre-finetuned adapter).
    pub fn bake_group(&mut self, name: &str) -> Result<()> {
        self.merge_group(name)?;
        {
            for (_, lin) in self.body.linears_mut() {
                lin.merged = None;
                lin.loras.remove(name);
            }
        }
        self.groups.remove(name);
        Ok(())
    }

    /// Undoes [`Encoder::merge_group`].
    pub fn unmerge(&mut self) -> Result<()> {
        {
            for (_, lin) in self.body.linears_mut() {
                lin.unmerge()?;
            }
        }
        Ok(())
    }

    // ----- parameters -----

    /// Every base (non-LoRA) parameter with its checkpoint name.
    pub fn base_params(&self) -> Vec<(String, &Param)> {
        let mut v = self.body.params(&self.config);
        if let Some(p) = &self.pooler {
            if p.quantized.is_none() {
                v.push((POOLER_WEIGHT.into(), &p.weight));
            }
            v.push(("pooler.dense.bias".into(), &p.bias));
        }
        v
    }

    fn base_params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.body.params_mut();
        if let Some(p) = &mut self.pooler {
            if p.quantized.is_none() {
                v.push(&mut p.weight);
            }
            v.push(&mut p.bias);
        }
        v
    }

    /// Every LoRA-adaptable linear layer with its place.
    pub fn linears(&self) -> Vec<(LinearId, &LoraLinear)> {
        self.body.linears()
    }

    /// Every LoRA-adaptable linear layer with its place, mutable.
    pub fn linears_mut(&mut self) -> Vec<(LinearId, &mut LoraLinear)> {
        self.body.linears_mut()
    }

    /// The LoRA pairs of a group with their module paths: `(layer path, (layer, target), pair)`.
    pub fn group_pairs(&self, name: &str) -> Vec<(String, (usize, LoraTarget), &LoraPair)> {
        let mut v = Vec::new();
        for ((i, t), lin) in self.body.linears() {
            if let Some(p) = lin.loras.get(name) {
                v.push((self.naming.linear(i, t), (i, t), p));
            }
        }
        v
    }

    /// Freezes or unfreezes every base weight.
    pub fn set_backbone_trainable(&mut self, trainable: bool) {
        for p in self.base_params_mut() {
            p.set_trainable(trainable);
        }
    }

    /// Freezes or unfreezes a LoRA group.
    pub fn set_group_trainable(&mut self, name: &str, trainable: bool) -> Result<()> {
        if !self.groups.contains_key(name) {
            return Err(Error::UnknownGroup(name.to_string()));
        }
        {
            for (_, lin) in self.body.linears_mut() {
                if let Some(p) = lin.loras.get_mut(name) {
                    p.a.set_trainable(trainable);
                    p.b.set_trainable(trainable);
                }
            }
        }
        Ok(())
    }

    /// Every trainable parameter with a unique name (LoRA: `<module>.lora_A.<group>.weight`).
    pub fn trainable_params(&self) -> Vec<(String, &Param)> {
        let mut v: Vec<(String, &Param)> = self
            .base_params()
            .into_iter()
            .filter(|(_, p)| p.trainable())
            .collect();
        for g in self.groups.keys() {
            for (path, _, pair) in self.group_pairs(g) {
                if pair.a.trainable() {
                    v.push((format!("{path}.lora_A.{g}.weight"), &pair.a));
                }
                if pair.b.trainable() {
                    v.push((format!("{path}.lora_B.{g}.weight"), &pair.b));
                }
            }
        }
        v
    }

    /// Number of base parameters (elements), quantised weights included.
    pub fn num_base_parameters(&self) -> usize {
        let quantized: usize = self
            .body
            .linears()
            .into_iter()
            .filter_map(|(_, l)| l.quantized.as_ref().map(|q| q.dims().0 * q.dims().1))
            .sum::<usize>()
            + self
                .body
                .int8_tables()
                .iter()
                .map(|(_, t)| t.dims().0 * t.dims().1)
                .sum::<usize>()
            + self
                .pooler
                .as_ref()
                .and_then(|p| p.quantized.as_ref())
                .map_or(0, |q| q.dims().0 * q.dims().1);
        self.base_params()
            .iter()
            .map(|(_, p)| p.elem_count())
            .sum::<usize>()
            + quantized
    }

    /// Writes the backbone as a Hugging Face model directory (`config.json`, `model.safetensors`
    /// with checkpoint names, and `tokenizer.json` copied from `tokenizer_from` when given).
    /// LoRA groups are not included (save them with the PEFT writer, or merge first).
    /// A quantised encoder is refused (write it with [`Encoder::save_quantized`]).
    pub fn save_pretrained(&self, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
        self.require_f32("writing a Hugging Face checkpoint (use save_quantized)")?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors = BTreeMap::new();
        for (name, p) in self.base_params() {
            tensors.insert(name, p.t().detach());
        }
        save_safetensors(&dir.join("model.safetensors"), &tensors)?;
        self.write_config_and_tokenizer(dir, tokenizer_from)
    }

    /// Writes `config.json` and copies the tokenizer files of `tokenizer_from`.
    pub(crate) fn write_config_and_tokenizer(
        &self,
        dir: &Path,
        tokenizer_from: Option<&Path>,
    ) -> Result<()> {
        // A quantised model directory is read by prefine only, which takes the vocabulary from
        // `tokenizer.json`: `vocab.txt` (0.2 MB for BERT) would be dead weight on a device.
        let lean = self.precision() != Precision::F32;
        let cfg =
            serde_json::to_vec_pretty(&self.config.to_json()).map_err(|source| Error::Json {
                path: dir.join("config.json"),
                source,
            })?;
        write_atomic(&dir.join("config.json"), &cfg)?;
        if let Some(src) = tokenizer_from {
            for f in [
                "tokenizer.json",
                "vocab.txt",
                "tokenizer_config.json",
                "special_tokens_map.json",
            ] {
                let p = src.join(f);
                if lean && f == "vocab.txt" && src.join("tokenizer.json").exists() {
                    continue;
                }
                if p.exists() {
                    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                    write_atomic(&dir.join(f), &bytes)?;
                }
            }
        }
        Ok(())
    }
}
