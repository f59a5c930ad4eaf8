//! MobileBERT (`MobileBertModel`): a trigram input embedding projected to `hidden_size`, and
//! blocks that work at a narrower `true_hidden_size` between an input bottleneck and an output
//! bottleneck, with a shared key/query bottleneck, stacked feed-forward networks and `NoNorm`
//! (`x * weight + bias`) in place of layer norms.
//!
//! Upstream behaviour reproduced (transformers 5): the trigram embedding is `[next token |
//! token | previous token]` with zeros past the ends; attention scales by the head width of
//! `true_hidden_size`; value reads the block input (`hidden_size`) unless
//! `use_bottleneck_attention`; the attention output's residual is the bottlenecked input; each
//! extra feed-forward is `norm(dense(act(dense(x))) + x)`; the block output is `norm(dense(x) +
//! attention output)`, then the output bottleneck `norm(dense(.) + block input)`.

use candle_core::{DType, Device, Tensor, D};

use super::{FamilyNames, LinearId, Norm, Run};
use crate::config::{Activation, EncoderConfig, MobileBertConfig};
use crate::error::{Error, Result};
use crate::input::EncoderInput;
use crate::lora::{LoraLinear, LoraTarget};
use crate::params::Param;
use crate::reader::WeightReader;

/// MobileBERT's LoRA-adaptable block linear layers: target, module path, PEFT module name.
/// The bottleneck and extra feed-forward layers train in `full` mode but take no LoRA.
pub(crate) const LINEARS: &[(LoraTarget, &str, &str)] = super::bert::LINEARS;

/// MobileBERT's checkpoint names (task heads prefix `mobilebert.`).
pub static NAMES: FamilyNames = FamilyNames {
    prefix: "mobilebert.",
    layers: "encoder.layer.",
    linears: LINEARS,
    norms: super::bert::NORMS,
};

/// The MobileBERT part of a config.
fn mobile(cfg: &EncoderConfig) -> Result<&MobileBertConfig> {
    cfg.mobilebert
        .as_ref()
        .ok_or_else(|| Error::config("model_type", "a mobilebert model without its settings"))
}

/// A dense layer and its norm (a bottleneck, a feed-forward output).
#[derive(Debug, Clone)]
pub struct DenseNorm {
    /// The dense layer.
    pub dense: LoraLinear,
    /// Its norm.
    pub norm: Norm,
}

impl DenseNorm {
    fn load(r: &mut WeightReader, base: &str, out: usize, inp: usize) -> Result<Self> {
        let dense = LoraLinear::load(r, &format!("{base}.dense"), out, inp);
        let norm = Norm::load(r, &format!("{base}.LayerNorm"), out);
        Ok(Self {
            dense: dense?,
            norm: norm?,
        })
    }

    fn params<'a>(&'a self, base: &str, v: &mut Vec<(String, &'a Param)>) {
        linear_params(&self.dense, &format!("{base}.dense"), v);
        v.extend(self.norm.params(&format!("{base}.LayerNorm")));
    }

    fn params_mut<'a>(&'a mut self, v: &mut Vec<&'a mut Param>) {
        linear_params_mut(&mut self.dense, v);
        v.push(&mut self.norm.weight);
        v.push(&mut self.norm.bias);
    }
}

fn linear_params<'a>(lin: &'a LoraLinear, base: &str, v: &mut Vec<(String, &'a Param)>) {
    // A quantised weight is no parameter (see `LoraLinear::quantized`).
    if lin.quantized.is_none() {
        v.push((format!("{base}.weight"), &lin.weight));
    }
    v.push((format!("{base}.bias"), &lin.bias));
}

fn linear_params_mut<'a>(lin: &'a mut LoraLinear, v: &mut Vec<&'a mut Param>) {
    if lin.quantized.is_none() {
        v.push(&mut lin.weight);
    }
    v.push(&mut lin.bias);
}

/// `norm(x + residual)`: `NoNorm` (`(x + residual) * weight + bias`) or a layer norm.
fn norm_residual(
    norm: &Norm,
    x: &Tensor,
    residual: Option<&Tensor>,
    no_norm: bool,
    eps: f64,
) -> Result<Tensor> {
    if no_norm {
        let x = match residual {
            Some(r) => (x + r)?,
            None => x.clone(),
        };
        return Ok(x
            .broadcast_mul(&norm.weight.t())?
            .broadcast_add(&norm.bias.t())?);
    }
    match residual {
        Some(r) => norm.forward_residual(x, r, eps),
        None => norm.forward(x, eps),
    }
}

fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::GeluErf => crate::ops::gelu(&x.contiguous()?)?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

/// The trigram word embedding, its projection, positions, token types and the norm.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `[vocab, embedding]`.
    pub word: Param,
    /// `[max_positions, hidden]`.
    pub position: Param,
    /// `[type_vocab, hidden]`.
    pub token_type: Param,
    /// `embedding_transformation`: `[hidden, 3 · embedding]` (trigram) or `[hidden, embedding]`.
    pub transformation: Option<LoraLinear>,
    /// The embedding norm.
    pub norm: Norm,
}

impl Embeddings {
    fn load(cfg: &EncoderConfig, m: &MobileBertConfig, r: &mut WeightReader) -> Result<Self> {
        let (e, h) = (cfg.embedding_size, cfg.hidden_size);
        let word = r.param("embeddings.word_embeddings.weight", &[cfg.vocab_size, e]);
        let position = r.param(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        );
        let token_type = r.param(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        );
        let width = if m.trigram_input { 3 * e } else { e };
        let transformation = if m.trigram_input || e != h {
            Some(LoraLinear::load(
                r,
                "embeddings.embedding_transformation",
                h,
                width,
            )?)
        } else {
            None
        };
        let norm = Norm::load(r, "embeddings.LayerNorm", h);
        r.ignore("embeddings.position_ids");
        r.ignore("embeddings.token_type_ids");
        Ok(Self {
            word: word?,
            position: position?,
            token_type: token_type?,
            transformation,
            norm: norm?,
        })
    }

    fn forward(
        &self,
        cfg: &EncoderConfig,
        m: &MobileBertConfig,
        input: &EncoderInput,
        run: &mut Run<'_, '_>,
    ) -> Result<Tensor> {
        let (b, s) = input.input_ids.dims2()?;
        let e = cfg.embedding_size;
        if s > cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "{s} positions, the position table has {}",
                cfg.max_position_embeddings
            )));
        }
        let tmax = input.type_ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if tmax >= cfg.type_vocab_size {
            return Err(Error::Input(format!(
                "token type {tmax} outside type_vocab_size {}",
                cfg.type_vocab_size
            )));
        }
        let ids = input.input_ids.flatten_all()?;
        let x = self.word.t().embedding(&ids)?;
        // `padding_idx`: the pad row takes no gradient (the trigram window reads pad tokens
        // next to real ones, so their embeddings reach the loss).
        let pad = ids
            .eq(cfg.pad_token_id)?
            .to_dtype(DType::F32)?
            .unsqueeze(1)?;
        let keep = (1.0 - &pad)?;
        let x = (x.broadcast_mul(&keep)? + x.detach().broadcast_mul(&pad)?)?.reshape((b, s, e))?;
        let x = if m.trigram_input {
            let zero = Tensor::zeros((b, 1, e), DType::F32, &Device::Cpu)?;
            let (next, prev) = if s > 1 {
                (
                    Tensor::cat(&[&x.narrow(1, 1, s - 1)?, &zero], 1)?,
                    Tensor::cat(&[&zero, &x.narrow(1, 0, s - 1)?], 1)?,
                )
            } else {
                (zero.clone(), zero)
            };
            Tensor::cat(&[&next, &x, &prev], D::Minus1)?
        } else {
            x
        };
        let x = match &self.transformation {
            Some(t) => run.linear(t, &x)?,
            None => x,
        };
        let types = self
            .token_type
            .t()
            .embedding(&input.type_ids.flatten_all()?)?
            .reshape((b, s, cfg.hidden_size))?;
        let x = x
            .broadcast_add(&self.position.t().narrow(0, 0, s)?)?
            .add(&types)?;
        norm_residual(&self.norm, &x, None, m.no_norm, cfg.layer_norm_eps)
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let mut v: Vec<(String, &Param)> = vec![
            ("embeddings.word_embeddings.weight".into(), &self.word),
            (
                "embeddings.position_embeddings.weight".into(),
                &self.position,
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                &self.token_type,
            ),
        ];
        if let Some(t) = &self.transformation {
            linear_params(t, "embeddings.embedding_transformation", &mut v);
        }
        v.extend(self.norm.params("embeddings.LayerNorm"));
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = vec![&mut self.word, &mut self.position, &mut self.token_type];
        if let Some(t) = &mut self.transformation {
            linear_params_mut(t, &mut v);
        }
        v.push(&mut self.norm.weight);
        v.push(&mut self.norm.bias);
        v
    }
}

/// One extra feed-forward network (`ffn.N`): `norm(output(act(intermediate(x))) + x)`.
#[derive(Debug, Clone)]
pub struct Ffn {
    /// `ffn.N.intermediate.dense`.
    pub intermediate: LoraLinear,
    /// `ffn.N.output.dense` and `ffn.N.output.LayerNorm`.
    pub output: DenseNorm,
}

/// One MobileBERT block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Attention query projection (`true_hidden` wide).
    pub query: LoraLinear,
    /// Attention key projection.
    pub key: LoraLinear,
    /// Attention value projection.
    pub value: LoraLinear,
    /// Attention output projection.
    pub attention_output: LoraLinear,
    /// The norm after attention.
    pub attention_norm: Norm,
    /// The last feed-forward's up projection.
    pub intermediate: LoraLinear,
    /// The last feed-forward's down projection.
    pub output: LoraLinear,
    /// The norm after the last feed-forward.
    pub output_norm: Norm,
    /// The bottleneck of the block input (`bottleneck.input`).
    pub input_bottleneck: Option<DenseNorm>,
    /// The shared key/query bottleneck (`bottleneck.attention`).
    pub attention_bottleneck: Option<DenseNorm>,
    /// The output bottleneck back to `hidden_size` (`output.bottleneck`).
    pub output_bottleneck: Option<DenseNorm>,
    /// The extra feed-forward networks, in order.
    pub ffn: Vec<Ffn>,
}

impl Block {
    fn load(
        cfg: &EncoderConfig,
        m: &MobileBertConfig,
        r: &mut WeightReader,
        i: usize,
    ) -> Result<Self> {
        let layer = format!("{}{i}", NAMES.layers);
        let (h, t, n) = (cfg.hidden_size, m.true_hidden_size, cfg.intermediate_size);
        let value_in = if m.use_bottleneck_attention { t } else { h };
        // Query and key read a bottleneck (width t) or the block input (width h).
        let bottlenecked = m.use_bottleneck_attention || m.key_query_shared_bottleneck;
        let qk_in = if m.use_bottleneck && bottlenecked {
            t
        } else {
            h
        };
        let mut lin =
            |path: &str, out, inp| LoraLinear::load(r, &format!("{layer}.{path}"), out, inp);
        let query = lin("attention.self.query", t, qk_in)?;
        let key = lin("attention.self.key", t, qk_in)?;
        let value = lin("attention.self.value", t, value_in)?;
        let attention_output = lin("attention.output.dense", t, t)?;
        let intermediate = lin("intermediate.dense", n, t)?;
        let output = lin("output.dense", t, n)?;
        let attention_norm = Norm::load(r, &format!("{layer}.attention.output.LayerNorm"), t)?;
        let output_norm = Norm::load(r, &format!("{layer}.output.LayerNorm"), t)?;
        let (mut input_bottleneck, mut attention_bottleneck, mut output_bottleneck) =
            (None, None, None);
        if m.use_bottleneck {
            input_bottleneck = Some(DenseNorm::load(
                r,
                &format!("{layer}.bottleneck.input"),
                t,
                h,
            )?);
            if m.key_query_shared_bottleneck && !m.use_bottleneck_attention {
                attention_bottleneck = Some(DenseNorm::load(
                    r,
                    &format!("{layer}.bottleneck.attention"),
                    t,
                    h,
                )?);
            }
            output_bottleneck = Some(DenseNorm::load(
                r,
                &format!("{layer}.output.bottleneck"),
                h,
                t,
            )?);
        }
        let ffn = (0..m.num_feedforward_networks - 1)
            .map(|f| {
                Ok(Ffn {
                    intermediate: LoraLinear::load(
                        r,
                        &format!("{layer}.ffn.{f}.intermediate.dense"),
                        n,
                        t,
                    )?,
                    output: DenseNorm::load(r, &format!("{layer}.ffn.{f}.output"), t, n)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            query,
            key,
            value,
            attention_output,
            attention_norm,
            intermediate,
            output,
            output_norm,
            input_bottleneck,
            attention_bottleneck,
            output_bottleneck,
            ffn,
        })
    }

    /// The six LoRA-adaptable linear layers in block order.
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

    /// The six LoRA-adaptable linear layers in block order, mutable.
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
        m: &MobileBertConfig,
        x: &Tensor,
        mask: &Tensor,
        run: &mut Run<'_, '_>,
    ) -> Result<Tensor> {
        let (nn, eps) = (m.no_norm, cfg.layer_norm_eps);
        let dense_norm = |d: &DenseNorm, x: &Tensor, residual: Option<&Tensor>, run: &mut Run| {
            let y = run.linear(&d.dense, x)?;
            norm_residual(&d.norm, &y, residual, nn, eps)
        };
        // (query input, key input, value input, the attention's residual).
        let (qk, v_in, layer_input) = match &self.input_bottleneck {
            Some(b) => {
                let bottlenecked = dense_norm(b, x, None, run)?;
                if m.use_bottleneck_attention {
                    (bottlenecked.clone(), bottlenecked.clone(), bottlenecked)
                } else if let Some(a) = &self.attention_bottleneck {
                    (dense_norm(a, x, None, run)?, x.clone(), bottlenecked)
                } else {
                    (x.clone(), x.clone(), bottlenecked)
                }
            }
            None => (x.clone(), x.clone(), x.clone()),
        };
        let q = run.linear(&self.query, &qk)?;
        let k = run.linear(&self.key, &qk)?;
        let v = run.linear(&self.value, &v_in)?;
        let heads = cfg.num_attention_heads;
        let scale = 1.0 / ((m.true_hidden_size / heads) as f64).sqrt();
        let dropout = run.attention_dropout(cfg.attention_probs_dropout_prob);
        let ctx = crate::ops::attention(&q, &k, &v, mask, heads, scale, dropout)?;
        let mut attn = run.linear(&self.attention_output, &ctx)?;
        if !m.use_bottleneck {
            attn = run.dropout(&attn, cfg.hidden_dropout_prob)?;
        }
        let mut a = norm_residual(&self.attention_norm, &attn, Some(&layer_input), nn, eps)?;
        for f in &self.ffn {
            let i = activation(cfg.hidden_act, &run.linear(&f.intermediate, &a)?)?;
            a = dense_norm(&f.output, &i, Some(&a), run)?;
        }
        let i = activation(cfg.hidden_act, &run.linear(&self.intermediate, &a)?)?;
        let mut out = run.linear(&self.output, &i)?;
        if !m.use_bottleneck {
            out = run.dropout(&out, cfg.hidden_dropout_prob)?;
        }
        let out = norm_residual(&self.output_norm, &out, Some(&a), nn, eps)?;
        match &self.output_bottleneck {
            Some(b) => {
                let y = run.linear(&b.dense, &out)?;
                let y = run.dropout(&y, cfg.hidden_dropout_prob)?;
                norm_residual(&b.norm, &y, Some(x), nn, eps)
            }
            None => Ok(out),
        }
    }

    fn params<'a>(&'a self, i: usize, v: &mut Vec<(String, &'a Param)>) {
        let layer = format!("{}{i}", NAMES.layers);
        for ((_, path, _), (_, lin)) in LINEARS.iter().zip(self.linears()) {
            linear_params(lin, &format!("{layer}.{path}"), v);
        }
        v.extend(
            self.attention_norm
                .params(&format!("{layer}.attention.output.LayerNorm")),
        );
        v.extend(
            self.output_norm
                .params(&format!("{layer}.output.LayerNorm")),
        );
        for (d, path) in [
            (&self.input_bottleneck, "bottleneck.input"),
            (&self.attention_bottleneck, "bottleneck.attention"),
            (&self.output_bottleneck, "output.bottleneck"),
        ] {
            if let Some(d) = d {
                d.params(&format!("{layer}.{path}"), v);
            }
        }
        for (f, ffn) in self.ffn.iter().enumerate() {
            let base = format!("{layer}.ffn.{f}");
            linear_params(&ffn.intermediate, &format!("{base}.intermediate.dense"), v);
            ffn.output.params(&format!("{base}.output"), v);
        }
    }

    fn params_mut<'a>(&'a mut self, v: &mut Vec<&'a mut Param>) {
        let Block {
            query,
            key,
            value,
            attention_output,
            attention_norm,
            intermediate,
            output,
            output_norm,
            input_bottleneck,
            attention_bottleneck,
            output_bottleneck,
            ffn,
        } = self;
        for lin in [query, key, value, attention_output, intermediate, output] {
            linear_params_mut(lin, v);
        }
        for n in [attention_norm, output_norm] {
            v.push(&mut n.weight);
            v.push(&mut n.bias);
        }
        for d in [input_bottleneck, attention_bottleneck, output_bottleneck]
            .into_iter()
            .flatten()
        {
            d.params_mut(v);
        }
        for f in ffn {
            linear_params_mut(&mut f.intermediate, v);
            f.output.params_mut(v);
        }
    }
}

/// The MobileBERT model: embeddings and blocks.
#[derive(Debug, Clone)]
pub struct Model {
    /// Embedding layer.
    pub embeddings: Embeddings,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
    /// The config's MobileBERT settings.
    pub settings: MobileBertConfig,
}

impl Model {
    /// Reads every weight of the model.
    pub(crate) fn load(cfg: &EncoderConfig, r: &mut WeightReader) -> Result<Self> {
        let m = mobile(cfg)?.clone();
        let embeddings = Embeddings::load(cfg, &m, r)?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(cfg, &m, r, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            blocks,
            settings: m,
        })
    }

    /// `[batch, seq, hidden]` last hidden states.
    pub(crate) fn forward(
        &self,
        cfg: &EncoderConfig,
        input: &EncoderInput,
        run: &mut Run<'_, '_>,
    ) -> Result<Tensor> {
        let m = &self.settings;
        let x = self.embeddings.forward(cfg, m, input, run)?;
        let mut x = run.dropout(&x, cfg.hidden_dropout_prob)?;
        for block in &self.blocks {
            x = block.forward(cfg, m, &x, &input.attention_mask, run)?;
        }
        Ok(x)
    }

    pub(crate) fn linears(&self) -> Vec<(LinearId, &LoraLinear)> {
        super::stack_linears(&self.blocks, Block::linears)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<(LinearId, &mut LoraLinear)> {
        super::stack_linears_mut(&mut self.blocks, Block::linears_mut)
    }

    pub(crate) fn params(&self) -> Vec<(String, &Param)> {
        let mut v = self.embeddings.params();
        for (i, block) in self.blocks.iter().enumerate() {
            block.params(i, &mut v);
        }
        v
    }

    pub(crate) fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.embeddings.params_mut();
        for block in &mut self.blocks {
            block.params_mut(&mut v);
        }
        v
    }
}
