//! The BERT-family encoder (BERT, MiniLM, DistilBERT): embeddings, post-LN transformer blocks,
//! optional pooler. Weights map one to one onto the checkpoint's names (see [`Naming`]); every
//! linear layer can carry named LoRA groups.
//!
//! Upstream behaviour reproduced: GELU is the exact erf form for `"gelu"`; layer norms use
//! biased variance with eps inside the square root; padding keys get zero attention weight
//! (HF adds `finfo(f32).min`, which underflows to exactly 0 after `exp`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::config::{Activation, EncoderConfig, ModelType};
use crate::error::{Error, Result};
use crate::lora::{LoraConfig, LoraLinear, LoraPair, LoraTarget};
use crate::ops;
use crate::params::{normal, Param, SeedRng};
use crate::quant::{
    checkpoint_precision_bytes, read_quantized_checkpoint, Precision, QuantizedLinear,
};
use crate::weights::{
    load_safetensors_bytes, normalise_keys, save_safetensors, write_atomic, BlockNorm, Naming,
};

/// Token ids, segment ids and attention mask of a padded batch.
#[derive(Debug, Clone)]
pub struct EncoderInput {
    /// `[batch, seq]` u32 token ids.
    pub input_ids: Tensor,
    /// `[batch, seq]` u32 segment ids (ignored by DistilBERT).
    pub type_ids: Tensor,
    /// `[batch, seq]` f32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
}

impl EncoderInput {
    /// Builds the tensors from nested vectors (as produced by the tokenizer).
    pub fn from_vecs(ids: &[Vec<u32>], type_ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<Self> {
        let b = ids.len();
        let s = ids.first().map_or(0, Vec::len);
        if b == 0 || s == 0 {
            return Err(Error::Input("empty batch".into()));
        }
        if ids.iter().chain(type_ids).chain(mask).any(|r| r.len() != s)
            || type_ids.len() != b
            || mask.len() != b
        {
            return Err(Error::Input(
                "ragged batch: every row must have the same length".into(),
            ));
        }
        let flat = |v: &[Vec<u32>]| v.iter().flatten().copied().collect::<Vec<u32>>();
        let maskf: Vec<f32> = mask.iter().flatten().map(|&m| m as f32).collect();
        Ok(Self {
            input_ids: Tensor::from_vec(flat(ids), (b, s), &Device::Cpu)?,
            type_ids: Tensor::from_vec(flat(type_ids), (b, s), &Device::Cpu)?,
            attention_mask: Tensor::from_vec(maskf, (b, s), &Device::Cpu)?,
        })
    }

    /// `(batch, seq)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(self.input_ids.dims2()?)
    }
}

/// How a forward pass runs.
pub struct Forward<'a> {
    /// The LoRA group to apply, or none for the bare backbone.
    pub group: Option<&'a str>,
    /// `Some(rng)` means training: dropout is on and draws from `rng`.
    pub dropout_rng: Option<&'a mut SeedRng>,
    /// A second active group (its deltas are added too; freeze it to keep it fixed).
    pub also: Option<&'a str>,
}

impl<'a> Forward<'a> {
    /// Evaluation (no dropout) with the given group.
    pub fn eval(group: Option<&'a str>) -> Self {
        Self {
            group,
            dropout_rng: None,
            also: None,
        }
    }
    /// Training (dropout on) with the given group.
    pub fn train(group: Option<&'a str>, rng: &'a mut SeedRng) -> Self {
        Self {
            group,
            dropout_rng: Some(rng),
            also: None,
        }
    }
}

/// A layer norm's weight and bias.
#[derive(Debug, Clone)]
pub struct Norm {
    /// Scale (gamma).
    pub weight: Param,
    /// Shift (beta).
    pub bias: Param,
}

impl Norm {
    fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(ops::layer_norm(x, &self.weight.t(), &self.bias.t(), eps)?)
    }

    /// `LayerNorm(x + residual)` in one op.
    fn forward_residual(&self, x: &Tensor, residual: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(ops::add_layer_norm(
            x,
            residual,
            &self.weight.t(),
            &self.bias.t(),
            eps,
        )?)
    }
}

/// Word, position and token-type embeddings followed by a layer norm.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `[vocab, hidden]`.
    pub word: Param,
    /// `[max_positions, hidden]`.
    pub position: Param,
    /// `[type_vocab, hidden]` (absent for DistilBERT).
    pub token_type: Option<Param>,
    /// Embedding layer norm.
    pub norm: Norm,
}

/// One post-LN transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Query, key, value, attention output, intermediate, output projections.
    pub linears: BTreeMap<LoraTarget, LoraLinear>,
    /// Layer norm after attention.
    pub attention_norm: Norm,
    /// Layer norm after the feed-forward.
    pub output_norm: Norm,
}

/// The pooler of `BertModel`: `tanh(W h_[CLS] + b)`.
#[derive(Debug, Clone)]
pub struct Pooler {
    /// `[hidden, hidden]`.
    pub weight: Param,
    /// `[hidden]`.
    pub bias: Param,
}

impl Pooler {
    /// Pools the first token's hidden state.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(ops::linear(&cls, &self.weight.t(), &self.bias.t())?.tanh()?)
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

/// A BERT-family encoder with named LoRA groups.
#[derive(Debug, Clone)]
pub struct Encoder {
    config: EncoderConfig,
    naming: Naming,
    /// Embedding layer.
    pub embeddings: Embeddings,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
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
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_config_and_bytes(config, &bytes, &path)
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
        Self::from_config_and_bytes(config, weights, path)
    }

    fn from_config_and_bytes(
        config: EncoderConfig,
        bytes: &[u8],
        path: &Path,
    ) -> Result<(Self, LoadReport)> {
        let precision = checkpoint_precision_bytes(bytes, path)?;
        if precision != Precision::F32 {
            let ckpt = read_quantized_checkpoint(bytes, path)?;
            return Self::from_tensors_with(config, ckpt.tensors, ckpt.linears, precision, path);
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
        Self::from_tensors_with(config, tensors, HashMap::new(), Precision::F32, path)
    }

    /// [`Encoder::from_tensors`] where the blocks' linear weights of a quantised checkpoint
    /// come as `quantized` (keyed `<layer>.weight`), all of `precision`.
    fn from_tensors_with(
        config: EncoderConfig,
        tensors: HashMap<String, Tensor>,
        mut quantized: HashMap<String, Arc<QuantizedLinear>>,
        precision: Precision,
        path: &Path,
    ) -> Result<(Self, LoadReport)> {
        let naming = Naming(config.model_type);
        let mut map = normalise_keys(tensors, naming);
        let mut missing = Vec::new();
        let mut shape_errors = Vec::new();
        let (mut q_missing, mut q_shape_errors) = (Vec::new(), Vec::new());
        let h = config.hidden_size;
        let mut take = |name: String, shape: &[usize]| -> Option<Param> {
            match map.remove(&name) {
                None => {
                    missing.push(name);
                    None
                }
                Some(t) if t.dims() != shape => {
                    shape_errors.push(format!("{name}: expected {shape:?}, found {:?}", t.dims()));
                    None
                }
                Some(t) => Param::new(&t).ok(),
            }
        };
        let word = take(
            "embeddings.word_embeddings.weight".into(),
            &[config.vocab_size, h],
        );
        let position = take(
            "embeddings.position_embeddings.weight".into(),
            &[config.max_position_embeddings, h],
        );
        let token_type = if config.model_type == ModelType::Bert {
            Some(take(
                "embeddings.token_type_embeddings.weight".into(),
                &[config.type_vocab_size, h],
            ))
        } else {
            None
        };
        let emb_norm = (
            take("embeddings.LayerNorm.weight".into(), &[h]),
            take("embeddings.LayerNorm.bias".into(), &[h]),
        );
        let mut raw_blocks = Vec::new();
        for i in 0..config.num_hidden_layers {
            let mut linears = Vec::new();
            for t in LoraTarget::ALL {
                let (out, inp) = linear_dims(&config, t);
                let base = naming.linear(i, t);
                let wname = format!("{base}.weight");
                let weight = if precision == Precision::F32 {
                    take(wname, &[out, inp]).map(LinearWeight::F32)
                } else {
                    match quantized.remove(&wname) {
                        Some(q) if q.dims() == (out, inp) && q.precision() == precision => {
                            Some(LinearWeight::Quantized(q))
                        }
                        Some(q) => {
                            q_shape_errors.push(format!(
                                "{wname}: expected {precision} [{out}, {inp}], found {q:?}"
                            ));
                            None
                        }
                        None => {
                            q_missing.push(format!("{wname} ({precision})"));
                            None
                        }
                    }
                };
                linears.push((t, weight, take(format!("{base}.bias"), &[out])));
            }
            let mut norms = Vec::new();
            for n in [BlockNorm::Attention, BlockNorm::Output] {
                let base = naming.norm(i, n);
                norms.push((
                    take(format!("{base}.weight"), &[h]),
                    take(format!("{base}.bias"), &[h]),
                ));
            }
            raw_blocks.push((linears, norms));
        }
        missing.append(&mut q_missing);
        shape_errors.append(&mut q_shape_errors);
        let mut report = LoadReport::default();
        let pooler = match (
            map.remove("pooler.dense.weight"),
            map.remove("pooler.dense.bias"),
        ) {
            (Some(w), Some(b)) if w.dims() == [h, h] && b.dims() == [h] => Some(Pooler {
                weight: Param::new(&w)?,
                bias: Param::new(&b)?,
            }),
            _ => {
                if config.model_type == ModelType::Bert {
                    report.missing_optional.push("pooler.dense".into());
                }
                None
            }
        };
        if !missing.is_empty() || !shape_errors.is_empty() {
            let mut reason = String::new();
            if !missing.is_empty() {
                reason += &format!(
                    "{} missing tensor(s): {}",
                    missing.len(),
                    missing.join(", ")
                );
            }
            if !shape_errors.is_empty() {
                if !reason.is_empty() {
                    reason += "; ";
                }
                reason += &format!("shape mismatch: {}", shape_errors.join(", "));
            }
            return Err(Error::Weights {
                path: path.to_path_buf(),
                reason,
            });
        }
        // Buffers that HF stores but that carry no learned weights.
        map.remove("embeddings.position_ids");
        map.remove("embeddings.token_type_ids");
        report.unexpected = map.keys().chain(quantized.keys()).cloned().collect();
        report.unexpected.sort();
        if !report.unexpected.is_empty() {
            tracing::warn!(
                "{}: {} unexpected tensor(s) ignored: {}",
                path.display(),
                report.unexpected.len(),
                report.unexpected.join(", ")
            );
        }
        let some = |p: Option<Param>| p.expect("checked above");
        let embeddings = Embeddings {
            word: some(word),
            position: some(position),
            token_type: token_type.map(some),
            norm: Norm {
                weight: some(emb_norm.0),
                bias: some(emb_norm.1),
            },
        };
        let blocks = raw_blocks
            .into_iter()
            .map(|(linears, mut norms)| {
                let (ow, ob) = norms.pop().expect("two norms");
                let (aw, ab) = norms.pop().expect("two norms");
                let linears = linears
                    .into_iter()
                    .map(|(t, w, b)| {
                        let lin = match w.expect("checked above") {
                            LinearWeight::F32(w) => LoraLinear::new(w, some(b)),
                            LinearWeight::Quantized(q) => LoraLinear::new_quantized(q, some(b))?,
                        };
                        Ok((t, lin))
                    })
                    .collect::<Result<BTreeMap<_, _>>>()?;
                Ok(Block {
                    linears,
                    attention_norm: Norm {
                        weight: some(aw),
                        bias: some(ab),
                    },
                    output_norm: Norm {
                        weight: some(ow),
                        bias: some(ob),
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((
            Self {
                config,
                naming,
                embeddings,
                blocks,
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
        let naming = Naming(config.model_type);
        let h = config.hidden_size;
        let mut tensors = HashMap::new();
        let mut put = |name: String, t: Tensor| {
            tensors.insert(name, t);
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            normal(config.vocab_size, h, 0.02, rng)?,
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            normal(config.max_position_embeddings, h, 0.02, rng)?,
        );
        if config.model_type == ModelType::Bert {
            put(
                "embeddings.token_type_embeddings.weight".into(),
                normal(config.type_vocab_size.max(1), h, 0.02, rng)?,
            );
        }
        let ones = Tensor::ones(h, DType::F32, &Device::Cpu)?;
        let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu);
        put("embeddings.LayerNorm.weight".into(), ones.clone());
        put("embeddings.LayerNorm.bias".into(), zeros(h)?);
        for i in 0..config.num_hidden_layers {
            for t in LoraTarget::ALL {
                let (out, inp) = linear_dims(&config, t);
                let base = naming.linear(i, t);
                put(format!("{base}.weight"), normal(out, inp, 0.02, rng)?);
                put(format!("{base}.bias"), zeros(out)?);
            }
            for n in [BlockNorm::Attention, BlockNorm::Output] {
                let base = naming.norm(i, n);
                put(format!("{base}.weight"), ones.clone());
                put(format!("{base}.bias"), zeros(h)?);
            }
        }
        if config.model_type == ModelType::Bert {
            put("pooler.dense.weight".into(), normal(h, h, 0.02, rng)?);
            put("pooler.dense.bias".into(), zeros(h)?);
        }
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
        let lora_trainable = self.blocks.iter().any(|b| {
            b.linears
                .values()
                .any(|l| l.loras.values().any(|p| p.a.trainable() || p.b.trainable()))
        });
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
        let cfg = &self.config;
        let mut x = self.embed(input)?;
        x = self.dropout(&x, cfg.hidden_dropout_prob, &mut fwd)?;
        for block in &self.blocks {
            x = self.block_forward(block, &x, &input.attention_mask, &mut fwd)?;
        }
        Ok(x)
    }

    /// Embeddings of a checked input: word + position (+ token type), then the layer norm.
    fn embed(&self, input: &EncoderInput) -> Result<Tensor> {
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
        if self.embeddings.token_type.is_some() {
            let tmax = input.type_ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
            if tmax >= cfg.type_vocab_size {
                return Err(Error::Input(format!(
                    "token type {tmax} outside type_vocab_size {}",
                    cfg.type_vocab_size
                )));
            }
        }
        // Word + position (+ token type) as one op, with one gradient buffer per trainable table
        // (every float weight is loaded as f32).
        let types = self.embeddings.token_type.as_ref().map(Param::t);
        let x = ops::embedding_sum(
            &self.embeddings.word.t(),
            &self.embeddings.position.t(),
            types.as_ref(),
            &input.input_ids,
            &input.type_ids,
        )?;
        self.embeddings.norm.forward(&x, cfg.layer_norm_eps)
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
            .blocks
            .iter()
            .flat_map(|bl| bl.linears.values())
            .find_map(|l| l.merged.as_deref())
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
        let mut x = self.embed(input)?;
        for block in &self.blocks {
            x = self.block_forward_mixed(block, &x, &input.attention_mask, &routes)?;
        }
        Ok(x)
    }

    fn block_forward_mixed(
        &self,
        block: &Block,
        x: &Tensor,
        mask: &Tensor,
        routes: &[MixedRoute<'_>],
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let lin = |t: LoraTarget, x: &Tensor| mixed_linear(&block.linears[&t], x, routes);
        let q = lin(LoraTarget::Query, x)?;
        let k = lin(LoraTarget::Key, x)?;
        let v = lin(LoraTarget::Value, x)?;
        let scale = 1.0 / (cfg.head_dim() as f64).sqrt();
        let ctx = ops::attention(&q, &k, &v, mask, cfg.num_attention_heads, scale, None)?;
        let attn = lin(LoraTarget::AttentionOutput, &ctx)?;
        let x = block
            .attention_norm
            .forward_residual(&attn, x, cfg.layer_norm_eps)?;
        let inter = lin(LoraTarget::Intermediate, &x)?;
        let inter = match cfg.hidden_act {
            Activation::GeluErf => ops::gelu(&inter)?,
            Activation::GeluTanh => inter.gelu()?,
            Activation::Relu => inter.relu()?,
        };
        let out = lin(LoraTarget::Output, &inter)?;
        block
            .output_norm
            .forward_residual(&out, &x, cfg.layer_norm_eps)
    }

    fn dropout(&self, x: &Tensor, p: f64, fwd: &mut Forward<'_>) -> Result<Tensor> {
        match fwd.dropout_rng.as_deref_mut() {
            Some(rng) if p > 0.0 => Ok(ops::dropout(x, p, rng)?),
            _ => Ok(x.clone()),
        }
    }

    fn lin(
        &self,
        block: &Block,
        t: LoraTarget,
        x: &Tensor,
        fwd: &mut Forward<'_>,
    ) -> Result<Tensor> {
        block.linears[&t].forward(x, fwd.group, fwd.also, fwd.dropout_rng.as_deref_mut())
    }

    fn block_forward(
        &self,
        block: &Block,
        x: &Tensor,
        mask: &Tensor,
        fwd: &mut Forward<'_>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let q = self.lin(block, LoraTarget::Query, x, fwd)?;
        let k = self.lin(block, LoraTarget::Key, x, fwd)?;
        let v = self.lin(block, LoraTarget::Value, x, fwd)?;
        let scale = 1.0 / (cfg.head_dim() as f64).sqrt();
        let p = cfg.attention_probs_dropout_prob;
        let dropout = match fwd.dropout_rng.as_deref_mut() {
            Some(rng) if p > 0.0 => Some((p, rng as &mut dyn rand::RngCore)),
            _ => None,
        };
        let ctx = ops::attention(&q, &k, &v, mask, cfg.num_attention_heads, scale, dropout)?;
        let attn = self.lin(block, LoraTarget::AttentionOutput, &ctx, fwd)?;
        let attn = self.dropout(&attn, cfg.hidden_dropout_prob, fwd)?;
        let x = block
            .attention_norm
            .forward_residual(&attn, x, cfg.layer_norm_eps)?;
        let inter = match cfg.hidden_act {
            // The activation fused into the GEMM where the layer allows it.
            Activation::GeluErf => block.linears[&LoraTarget::Intermediate].forward_gelu(
                &x,
                fwd.group,
                fwd.also,
                fwd.dropout_rng.as_deref_mut(),
            )?,
            Activation::GeluTanh => self.lin(block, LoraTarget::Intermediate, &x, fwd)?.gelu()?,
            Activation::Relu => self.lin(block, LoraTarget::Intermediate, &x, fwd)?.relu()?,
        };
        let out = self.lin(block, LoraTarget::Output, &inter, fwd)?;
        let out = self.dropout(&out, cfg.hidden_dropout_prob, fwd)?;
        block
            .output_norm
            .forward_residual(&out, &x, cfg.layer_norm_eps)
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
        for (i, block) in self.blocks.iter_mut().enumerate() {
            if !cfg.covers_layer(i) {
                continue;
            }
            for t in &cfg.targets {
                let lin = block.linears.get_mut(t).expect("all targets present");
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
        let block = self
            .blocks
            .get_mut(layer)
            .ok_or_else(|| Error::Input(format!("layer {layer} does not exist")))?;
        block
            .linears
            .get_mut(&t)
            .expect("all targets present")
            .loras
            .insert(group.to_string(), pair);
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
        for block in &mut self.blocks {
            for lin in block.linears.values_mut() {
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
        for block in &mut self.blocks {
            for lin in block.linears.values_mut() {
                lin.merge(name)?;
            }
        }
        Ok(())
    }

    /// Folds a group into the base weights for good and forgets the group (used to start full
    /// fine-tuning from a pre-finetuned adapter).
    pub fn bake_group(&mut self, name: &str) -> Result<()> {
        self.merge_group(name)?;
        for block in &mut self.blocks {
            for lin in block.linears.values_mut() {
                lin.merged = None;
                lin.loras.remove(name);
            }
        }
        self.groups.remove(name);
        Ok(())
    }

    /// Undoes [`Encoder::merge_group`].
    pub fn unmerge(&mut self) -> Result<()> {
        for block in &mut self.blocks {
            for lin in block.linears.values_mut() {
                lin.unmerge()?;
            }
        }
        Ok(())
    }

    // ----- parameters -----

    /// Every base (non-LoRA) parameter with its checkpoint name.
    pub fn base_params(&self) -> Vec<(String, &Param)> {
        let mut v: Vec<(String, &Param)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                &self.embeddings.word,
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                &self.embeddings.position,
            ),
        ];
        if let Some(tt) = &self.embeddings.token_type {
            v.push(("embeddings.token_type_embeddings.weight".into(), tt));
        }
        v.push((
            "embeddings.LayerNorm.weight".into(),
            &self.embeddings.norm.weight,
        ));
        v.push((
            "embeddings.LayerNorm.bias".into(),
            &self.embeddings.norm.bias,
        ));
        for (i, block) in self.blocks.iter().enumerate() {
            for (t, lin) in &block.linears {
                let base = self.naming.linear(i, *t);
                // A quantised weight is no parameter (see `LoraLinear::quantized`).
                if lin.quantized.is_none() {
                    v.push((format!("{base}.weight"), &lin.weight));
                }
                v.push((format!("{base}.bias"), &lin.bias));
            }
            for (n, norm) in [
                (BlockNorm::Attention, &block.attention_norm),
                (BlockNorm::Output, &block.output_norm),
            ] {
                let base = self.naming.norm(i, n);
                v.push((format!("{base}.weight"), &norm.weight));
                v.push((format!("{base}.bias"), &norm.bias));
            }
        }
        if let Some(p) = &self.pooler {
            v.push(("pooler.dense.weight".into(), &p.weight));
            v.push(("pooler.dense.bias".into(), &p.bias));
        }
        v
    }

    fn base_params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = vec![&mut self.embeddings.word, &mut self.embeddings.position];
        if let Some(tt) = &mut self.embeddings.token_type {
            v.push(tt);
        }
        v.push(&mut self.embeddings.norm.weight);
        v.push(&mut self.embeddings.norm.bias);
        for block in &mut self.blocks {
            for lin in block.linears.values_mut() {
                if lin.quantized.is_none() {
                    v.push(&mut lin.weight);
                }
                v.push(&mut lin.bias);
            }
            for norm in [&mut block.attention_norm, &mut block.output_norm] {
                v.push(&mut norm.weight);
                v.push(&mut norm.bias);
            }
        }
        if let Some(p) = &mut self.pooler {
            v.push(&mut p.weight);
            v.push(&mut p.bias);
        }
        v
    }

    /// The LoRA pairs of a group with their module paths: `(layer path, (layer, target), pair)`.
    pub fn group_pairs(&self, name: &str) -> Vec<(String, (usize, LoraTarget), &LoraPair)> {
        let mut v = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            for (t, lin) in &block.linears {
                if let Some(p) = lin.loras.get(name) {
                    v.push((self.naming.linear(i, *t), (i, *t), p));
                }
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
        for block in &mut self.blocks {
            for lin in block.linears.values_mut() {
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
            .blocks
            .iter()
            .flat_map(|b| b.linears.values())
            .filter_map(|l| l.quantized.as_ref().map(|q| q.dims().0 * q.dims().1))
            .sum();
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
        let cfg = serde_json::to_vec_pretty(&self.config.to_json()).map_err(|e| Error::Parse {
            path: dir.join("config.json"),
            reason: e.to_string(),
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
                if p.exists() {
                    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                    write_atomic(&dir.join(f), &bytes)?;
                }
            }
        }
        Ok(())
    }
}

/// The rows of a batch that run with one LoRA group (see [`Encoder::forward_mixed`]).
struct MixedRoute<'a> {
    group: &'a str,
    /// `[n]` u32 row indices.
    rows: Tensor,
    /// Whether every row of the batch uses this group.
    all: bool,
}

/// `x Wᵀ + b` for all rows, plus each route's LoRA delta on its own rows.
fn mixed_linear(lin: &LoraLinear, x: &Tensor, routes: &[MixedRoute<'_>]) -> Result<Tensor> {
    if let [route] = routes {
        if route.all {
            // One group for the whole batch: the ordinary (fused) path.
            return lin.forward(x, Some(route.group), None, None);
        }
    }
    let mut y = lin.base_forward(x)?;
    for route in routes {
        let Some(pair) = lin.loras.get(route.group) else {
            continue;
        };
        let xg = if route.all {
            x.clone()
        } else {
            x.index_select(&route.rows, 0)?
        };
        let h = ops::linear_no_bias(&xg, &pair.a.t())?;
        let d = (ops::linear_no_bias(&h, &pair.b.t())? * pair.scale)?;
        y = if route.all {
            (y + d)?
        } else {
            y.index_add(&route.rows, &d, 0)?
        };
    }
    Ok(y)
}

/// A block's linear weight as loaded: f32, or quantised.
enum LinearWeight {
    F32(Param),
    Quantized(Arc<QuantizedLinear>),
}

fn linear_dims(cfg: &EncoderConfig, t: LoraTarget) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    match t {
        LoraTarget::Intermediate => (i, h),
        LoraTarget::Output => (h, i),
        _ => (h, h),
    }
}
