//! BERT (and MiniLM): embeddings, post-LN transformer blocks. DistilBERT ([`super::distilbert`])
//! and ELECTRA ([`super::electra`]) run this same model under their own names.
//!
//! Upstream behaviour reproduced: GELU is the exact erf form for `"gelu"`; layer norms use
//! biased variance with eps inside the square root; padding keys get zero attention weight
//! (HF adds `finfo(f32).min`, which underflows to exactly 0 after `exp`).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{names, FamilyNames, LinearId, Norm, Run};
use crate::config::{Activation, EncoderConfig, ModelType};
use crate::error::{Error, Result};
use crate::input::EncoderInput;
use crate::int8_table::{Int8Table, POSITION_EMBEDDINGS, WORD_EMBEDDINGS};
use crate::lora::{LoraLinear, LoraTarget};
use crate::ops;
use crate::params::{normal, Param, SeedRng};
use crate::reader::{TableWeight, WeightReader};

/// The empty `[0, dim]` stand-in for a word table held as int8.
fn released_table(dim: usize) -> Result<Param> {
    Param::new(&Tensor::zeros((0, dim), DType::F32, &Device::Cpu)?)
}

/// BERT's block linear layers: target, module path inside a layer, PEFT module name.
pub(crate) const LINEARS: &[(LoraTarget, &str, &str)] = &[
    (LoraTarget::Query, "attention.self.query", "query"),
    (LoraTarget::Key, "attention.self.key", "key"),
    (LoraTarget::Value, "attention.self.value", "value"),
    (
        LoraTarget::AttentionOutput,
        "attention.output.dense",
        "attention.output.dense",
    ),
    (
        LoraTarget::Intermediate,
        "intermediate.dense",
        "intermediate.dense",
    ),
    (LoraTarget::Output, "output.dense", "output.dense"),
];

/// BERT's block layer norms.
pub(crate) const NORMS: [&str; 2] = ["attention.output.LayerNorm", "output.LayerNorm"];

/// BERT's checkpoint names (`BertModel`, task heads prefix `bert.`).
pub static NAMES: FamilyNames = FamilyNames {
    prefix: "bert.",
    layers: "encoder.layer.",
    linears: LINEARS,
    norms: NORMS,
};

/// The module path of a linear layer of a BERT-shaped family.
fn linear_path(n: &FamilyNames, i: usize, t: LoraTarget) -> String {
    let suffix = n
        .linears
        .iter()
        .find_map(|(tt, s, _)| (*tt == t).then_some(*s))
        .unwrap_or("?");
    format!("{}{i}.{suffix}", n.layers)
}

/// `(out, in)` of a block's linear layer.
fn linear_dims(cfg: &EncoderConfig, t: LoraTarget) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    match t {
        LoraTarget::Intermediate => (i, h),
        LoraTarget::Output => (h, i),
        _ => (h, h),
    }
}

/// ELECTRA's `embeddings_project`: `[hidden, embedding]` weight and `[hidden]` bias.
#[derive(Debug, Clone)]
pub struct Projection {
    /// `[hidden, embedding]`.
    pub weight: Param,
    /// `[hidden]`.
    pub bias: Param,
}

/// Word, position and token-type embeddings followed by a layer norm (and, for ELECTRA with
/// `embedding_size != hidden_size`, a projection to the hidden size).
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `[vocab, embedding]` (empty, `[0, embedding]`, once the table is int8: see `word_int8`).
    pub word: Param,
    /// The int8 word table used instead of `word` (inference only), if any.
    pub word_int8: Option<Arc<Int8Table>>,
    /// `[max_positions, embedding]` (empty once the table is int8: see `position_int8`).
    pub position: Param,
    /// The int8 position table used instead of `position` (inference only), if any.
    pub position_int8: Option<Arc<Int8Table>>,
    /// `[type_vocab, embedding]` (absent for DistilBERT).
    pub token_type: Option<Param>,
    /// Embedding layer norm.
    pub norm: Norm,
    /// ELECTRA's `embeddings_project`.
    pub project: Option<Projection>,
}

impl Embeddings {
    /// Reads the embedding tables.
    pub(crate) fn load(cfg: &EncoderConfig, r: &mut WeightReader) -> Result<Self> {
        let e = cfg.embedding_size;
        let (word, word_int8) = match r.table(WORD_EMBEDDINGS, cfg.vocab_size, e)? {
            TableWeight::F32(p) => (p, None),
            TableWeight::Int8(t) => (released_table(e)?, Some(t)),
        };
        let (position, position_int8) =
            match r.table(POSITION_EMBEDDINGS, cfg.max_position_embeddings, e)? {
                TableWeight::F32(p) => (p, None),
                TableWeight::Int8(t) => (released_table(e)?, Some(t)),
            };
        let token_type = match cfg.model_type {
            ModelType::Distilbert | ModelType::ModernBert | ModelType::MobileBert => None,
            ModelType::Bert | ModelType::Electra => Some(r.param(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, e],
            )?),
        };
        let norm = Norm::load(r, "embeddings.LayerNorm", e);
        let project = if cfg.model_type == ModelType::Electra && e != cfg.hidden_size {
            Some(Projection {
                weight: r.param("embeddings_project.weight", &[cfg.hidden_size, e])?,
                bias: r.param("embeddings_project.bias", &[cfg.hidden_size])?,
            })
        } else {
            None
        };
        // Buffers that HF stores but that carry no learned weights.
        r.ignore("embeddings.position_ids");
        r.ignore("embeddings.token_type_ids");
        Ok(Self {
            word,
            word_int8,
            position,
            position_int8,
            token_type,
            norm: norm?,
            project,
        })
    }

    /// Word + position (+ token type), the layer norm, then the projection if any.
    fn forward(&self, cfg: &EncoderConfig, input: &EncoderInput) -> Result<Tensor> {
        if self.token_type.is_some() {
            let tmax = input.type_ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
            if tmax >= cfg.type_vocab_size {
                return Err(Error::Input(format!(
                    "token type {tmax} outside type_vocab_size {}",
                    cfg.type_vocab_size
                )));
            }
        }
        // One op, with one gradient buffer per trainable table.
        let types = self.token_type.as_ref().map(Param::t);
        let (batch, seq) = input.input_ids.dims2()?;
        let position = match &self.position_int8 {
            None => self.position.t(),
            // Rows 0..seq, the only ones the batch reads.
            Some(table) if seq <= table.dims().0 => {
                table.gather(&(0..seq as u32).collect::<Vec<_>>())?
            }
            Some(table) => {
                return Err(Error::Input(format!(
                    "{seq} positions, the position table has {}",
                    table.dims().0
                )))
            }
        };
        let x = match &self.word_int8 {
            None => ops::embedding_sum(
                &self.word.t(),
                &position,
                types.as_ref(),
                &input.input_ids,
                &input.type_ids,
            )?,
            Some(table) => {
                // The rows the batch reads, dequantised in token order; token t reads row t.
                let rows = table.gather(&input.input_ids.flatten_all()?.to_vec1::<u32>()?)?;
                let ids = Tensor::arange(0u32, (batch * seq) as u32, rows.device())?
                    .reshape((batch, seq))?;
                ops::embedding_sum(&rows, &position, types.as_ref(), &ids, &input.type_ids)?
            }
        };
        let x = self.norm.forward(&x, cfg.layer_norm_eps)?;
        match &self.project {
            Some(p) => Ok(ops::linear(&x, &p.weight.t(), &p.bias.t())?),
            None => Ok(x),
        }
    }

    /// Replaces the f32 word and position tables by their int8 forms (inference only).
    pub(crate) fn quantize_tables(&mut self) -> Result<()> {
        for (table, int8) in [
            (&mut self.word, &mut self.word_int8),
            (&mut self.position, &mut self.position_int8),
        ] {
            if int8.is_none() {
                let q = Int8Table::quantize(&table.t().detach())?;
                *table = released_table(q.dims().1)?;
                *int8 = Some(Arc::new(q));
            }
        }
        Ok(())
    }

    /// The int8 tables with their checkpoint names.
    pub(crate) fn int8_tables(&self) -> Vec<(String, &Int8Table)> {
        [
            (WORD_EMBEDDINGS, &self.word_int8),
            (POSITION_EMBEDDINGS, &self.position_int8),
        ]
        .into_iter()
        .filter_map(|(n, t)| t.as_deref().map(|t| (n.to_string(), t)))
        .collect()
    }

    /// The parameters, without a table held as int8 (like a quantised linear weight, it is
    /// no parameter).
    fn params(&self) -> Vec<(String, &Param)> {
        let mut v: Vec<(String, &Param)> = Vec::new();
        if self.word_int8.is_none() {
            v.push((WORD_EMBEDDINGS.into(), &self.word));
        }
        if self.position_int8.is_none() {
            v.push((POSITION_EMBEDDINGS.into(), &self.position));
        }
        if let Some(tt) = &self.token_type {
            v.push(("embeddings.token_type_embeddings.weight".into(), tt));
        }
        v.extend(self.norm.params("embeddings.LayerNorm"));
        if let Some(p) = &self.project {
            v.push(("embeddings_project.weight".into(), &p.weight));
            v.push(("embeddings_project.bias".into(), &p.bias));
        }
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = Vec::new();
        if self.word_int8.is_none() {
            v.push(&mut self.word);
        }
        if self.position_int8.is_none() {
            v.push(&mut self.position);
        }
        if let Some(tt) = &mut self.token_type {
            v.push(tt);
        }
        v.push(&mut self.norm.weight);
        v.push(&mut self.norm.bias);
        if let Some(p) = &mut self.project {
            v.push(&mut p.weight);
            v.push(&mut p.bias);
        }
        v
    }
}

/// One post-LN transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Attention query projection.
    pub query: LoraLinear,
    /// Attention key projection.
    pub key: LoraLinear,
    /// Attention value projection.
    pub value: LoraLinear,
    /// Attention output projection.
    pub attention_output: LoraLinear,
    /// Feed-forward up projection.
    pub intermediate: LoraLinear,
    /// Feed-forward down projection.
    pub output: LoraLinear,
    /// Layer norm after attention.
    pub attention_norm: Norm,
    /// Layer norm after the feed-forward.
    pub output_norm: Norm,
}

impl Block {
    /// Reads layer `i`.
    pub(crate) fn load(cfg: &EncoderConfig, r: &mut WeightReader, i: usize) -> Result<Self> {
        let n = names(cfg.model_type);
        let mut lin = |t: LoraTarget| {
            let (out, inp) = linear_dims(cfg, t);
            LoraLinear::load(r, &linear_path(n, i, t), out, inp)
        };
        let query = lin(LoraTarget::Query)?;
        let key = lin(LoraTarget::Key)?;
        let value = lin(LoraTarget::Value)?;
        let attention_output = lin(LoraTarget::AttentionOutput)?;
        let intermediate = lin(LoraTarget::Intermediate)?;
        let output = lin(LoraTarget::Output)?;
        let h = cfg.hidden_size;
        let layer = format!("{}{i}", n.layers);
        Ok(Self {
            query,
            key,
            value,
            attention_output,
            intermediate,
            output,
            attention_norm: Norm::load(r, &format!("{layer}.{}", n.norms[0]), h)?,
            output_norm: Norm::load(r, &format!("{layer}.{}", n.norms[1]), h)?,
        })
    }

    /// The six linear layers in block order.
    pub fn linears(&self) -> [(LoraTarget, &LoraLinear); 6] {
        [
            (LoraTarget::Query, &self.query),
            (LoraTarget::Key, &self.key),
            (LoraTarget::Value, &self.value),
            (LoraTarget::AttentionOutput, &self.attention_output),
            (LoraTarget::Intermediate, &self.intermediate),
            (LoraTarget::Output, &self.output),
        ]
    }

    /// The six linear layers in block order, mutable.
    pub fn linears_mut(&mut self) -> [(LoraTarget, &mut LoraLinear); 6] {
        [
            (LoraTarget::Query, &mut self.query),
            (LoraTarget::Key, &mut self.key),
            (LoraTarget::Value, &mut self.value),
            (LoraTarget::AttentionOutput, &mut self.attention_output),
            (LoraTarget::Intermediate, &mut self.intermediate),
            (LoraTarget::Output, &mut self.output),
        ]
    }

    fn forward(
        &self,
        cfg: &EncoderConfig,
        x: &Tensor,
        mask: &Tensor,
        run: &mut Run<'_, '_>,
    ) -> Result<Tensor> {
        let q = run.linear(&self.query, x)?;
        let k = run.linear(&self.key, x)?;
        let v = run.linear(&self.value, x)?;
        let scale = 1.0 / (cfg.head_dim() as f64).sqrt();
        let dropout = run.attention_dropout(cfg.attention_probs_dropout_prob);
        let ctx = ops::attention(&q, &k, &v, mask, cfg.num_attention_heads, scale, dropout)?;
        let attn = run.linear(&self.attention_output, &ctx)?;
        let attn = run.dropout(&attn, cfg.hidden_dropout_prob)?;
        let x = self
            .attention_norm
            .forward_residual(&attn, x, cfg.layer_norm_eps)?;
        let inter = match cfg.hidden_act {
            // The activation fused into the GEMM where the layer allows it.
            Activation::GeluErf => run.linear_gelu(&self.intermediate, &x)?,
            Activation::GeluTanh => run.linear(&self.intermediate, &x)?.gelu()?,
            Activation::Relu => run.linear(&self.intermediate, &x)?.relu()?,
        };
        let out = run.linear(&self.output, &inter)?;
        let out = run.dropout(&out, cfg.hidden_dropout_prob)?;
        self.output_norm
            .forward_residual(&out, &x, cfg.layer_norm_eps)
    }
}

/// The BERT-shaped model: embeddings and blocks.
#[derive(Debug, Clone)]
pub struct Model {
    /// Embedding layer.
    pub embeddings: Embeddings,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
}

impl Model {
    /// Reads every weight of the model.
    pub(crate) fn load(cfg: &EncoderConfig, r: &mut WeightReader) -> Result<Self> {
        let embeddings = Embeddings::load(cfg, r)?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(cfg, r, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, blocks })
    }

    /// `[batch, seq, hidden]` last hidden states.
    pub(crate) fn forward(
        &self,
        cfg: &EncoderConfig,
        input: &EncoderInput,
        run: &mut Run<'_, '_>,
    ) -> Result<Tensor> {
        let x = self.embeddings.forward(cfg, input)?;
        let mut x = run.dropout(&x, cfg.hidden_dropout_prob)?;
        for block in &self.blocks {
            x = block.forward(cfg, &x, &input.attention_mask, run)?;
        }
        Ok(x)
    }

    pub(crate) fn linears(&self) -> Vec<(LinearId, &LoraLinear)> {
        super::stack_linears(&self.blocks, Block::linears)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<(LinearId, &mut LoraLinear)> {
        super::stack_linears_mut(&mut self.blocks, Block::linears_mut)
    }

    pub(crate) fn params(&self, cfg: &EncoderConfig) -> Vec<(String, &Param)> {
        let n = names(cfg.model_type);
        let mut v = self.embeddings.params();
        for (i, block) in self.blocks.iter().enumerate() {
            for (t, lin) in block.linears() {
                let base = linear_path(n, i, t);
                // A quantised weight is no parameter (see `LoraLinear::quantized`).
                if lin.quantized.is_none() {
                    v.push((format!("{base}.weight"), &lin.weight));
                }
                v.push((format!("{base}.bias"), &lin.bias));
            }
            let layer = format!("{}{i}", n.layers);
            v.extend(
                block
                    .attention_norm
                    .params(&format!("{layer}.{}", n.norms[0])),
            );
            v.extend(block.output_norm.params(&format!("{layer}.{}", n.norms[1])));
        }
        v
    }

    pub(crate) fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.embeddings.params_mut();
        for block in &mut self.blocks {
            let Block {
                query,
                key,
                value,
                attention_output,
                intermediate,
                output,
                attention_norm,
                output_norm,
            } = block;
            for lin in [query, key, value, attention_output, intermediate, output] {
                if lin.quantized.is_none() {
                    v.push(&mut lin.weight);
                }
                v.push(&mut lin.bias);
            }
            for norm in [attention_norm, output_norm] {
                v.push(&mut norm.weight);
                v.push(&mut norm.bias);
            }
        }
        v
    }
}

/// Random weights (BERT's N(0, 0.02) init, unit norms, zero biases) under checkpoint names.
pub(crate) fn random_tensors(
    cfg: &EncoderConfig,
    rng: &mut SeedRng,
) -> Result<Vec<(String, Tensor)>> {
    let n = names(cfg.model_type);
    let (h, e) = (cfg.hidden_size, cfg.embedding_size);
    let mut v: Vec<(String, Tensor)> = Vec::new();
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu);
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu);
    v.push((
        "embeddings.word_embeddings.weight".into(),
        normal(cfg.vocab_size, e, 0.02, rng)?,
    ));
    v.push((
        "embeddings.position_embeddings.weight".into(),
        normal(cfg.max_position_embeddings, e, 0.02, rng)?,
    ));
    if cfg.model_type != ModelType::Distilbert {
        v.push((
            "embeddings.token_type_embeddings.weight".into(),
            normal(cfg.type_vocab_size.max(1), e, 0.02, rng)?,
        ));
    }
    v.push(("embeddings.LayerNorm.weight".into(), ones(e)?));
    v.push(("embeddings.LayerNorm.bias".into(), zeros(e)?));
    for i in 0..cfg.num_hidden_layers {
        for t in LoraTarget::ALL {
            let (out, inp) = linear_dims(cfg, t);
            let base = linear_path(n, i, t);
            v.push((format!("{base}.weight"), normal(out, inp, 0.02, rng)?));
            v.push((format!("{base}.bias"), zeros(out)?));
        }
        for norm in n.norms {
            let base = format!("{}{i}.{norm}", n.layers);
            v.push((format!("{base}.weight"), ones(h)?));
            v.push((format!("{base}.bias"), zeros(h)?));
        }
    }
    if cfg.model_type == ModelType::Electra && e != h {
        v.push(("embeddings_project.weight".into(), normal(h, e, 0.02, rng)?));
        v.push(("embeddings_project.bias".into(), zeros(h)?));
    }
    if cfg.model_type == ModelType::Bert {
        v.push(("pooler.dense.weight".into(), normal(h, h, 0.02, rng)?));
        v.push(("pooler.dense.bias".into(), zeros(h)?));
    }
    Ok(v)
}
