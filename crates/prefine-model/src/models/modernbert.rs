//! ModernBERT (`ModernBertModel`, also the Ettin encoders): token embeddings and a norm,
//! pre-norm blocks with a fused `Wqkv` projection, rotary position embeddings (a global and a
//! local base), alternating global and sliding-window attention, a GeGLU feed-forward, and a
//! final norm. Linear layers and norms have no biases unless the config asks for them.
//!
//! Upstream behaviour reproduced (transformers 5, eager attention): the first block has no
//! attention norm; `Wqkv`'s output is `[q | k | v]`, each split into heads; RoPE rotates the
//! halves of each head (`rotate_half`) with angles `position / theta^(2i / head_dim)` computed
//! in f32; a sliding-window layer lets query `i` see key `j` when `|i - j| <= local_attention /
//! 2`; GeGLU is `act(input) * gate` for `Wi`'s output split as `[input | gate]`; the attention
//! dropout also follows the attention's `Wo`.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use super::{FamilyNames, LinearId, Norm, Run};
use crate::config::{Activation, EncoderConfig, ModernBertConfig};
use crate::error::{Error, Result};
use crate::input::EncoderInput;
use crate::int8_table::{Int8Table, TOKEN_EMBEDDINGS};
use crate::lora::{LoraLinear, LoraTarget};
use crate::ops;
use crate::params::Param;
use crate::reader::{TableWeight, WeightReader};

/// ModernBERT's block linear layers: target, module path inside a layer, PEFT module name.
/// `Wo` is both the attention's and the feed-forward's output: PEFT's `"Wo"` selects both, the
/// paths `attn.Wo` and `mlp.Wo` one each.
pub(crate) const LINEARS: &[(LoraTarget, &str, &str)] = &[
    (LoraTarget::Qkv, "attn.Wqkv", "Wqkv"),
    (LoraTarget::AttentionOutput, "attn.Wo", "attn.Wo"),
    (LoraTarget::Intermediate, "mlp.Wi", "Wi"),
    (LoraTarget::Output, "mlp.Wo", "mlp.Wo"),
];

/// ModernBERT's checkpoint names (task heads prefix `model.`).
pub static NAMES: FamilyNames = FamilyNames {
    prefix: "model.",
    layers: "layers.",
    linears: LINEARS,
    norms: ["attn_norm", "mlp_norm"],
};

const TOK_EMBEDDINGS: &str = TOKEN_EMBEDDINGS;
const EMBEDDING_NORM: &str = "embeddings.norm";
const FINAL_NORM: &str = "final_norm";

/// The ModernBERT part of a config (present whenever the model type is ModernBERT).
fn modern(cfg: &EncoderConfig) -> Result<&ModernBertConfig> {
    cfg.modernbert
        .as_ref()
        .ok_or_else(|| Error::config("model_type", "a modernbert model without its settings"))
}

/// `(out, in)` of a block's linear layer.
fn linear_dims(cfg: &EncoderConfig, t: LoraTarget) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    match t {
        LoraTarget::Qkv => (3 * h, h),
        LoraTarget::Intermediate => (2 * i, h),
        LoraTarget::Output => (h, i),
        _ => (h, h),
    }
}

/// Whether a block linear layer has a bias under this config.
fn linear_has_bias(m: &ModernBertConfig, t: LoraTarget) -> bool {
    match t {
        LoraTarget::Intermediate | LoraTarget::Output => m.mlp_bias,
        _ => m.attention_bias,
    }
}

fn linear_path(i: usize, t: LoraTarget) -> String {
    super::Naming(crate::config::ModelType::ModernBert).linear(i, t)
}

/// The empty `[0, dim]` stand-in for a table held as int8.
fn empty_table(dim: usize) -> Result<Param> {
    Param::new(&Tensor::zeros((0, dim), DType::F32, &Device::Cpu)?)
}

/// A layer norm, with a frozen zero bias that is no parameter when the config has none.
fn load_norm(r: &mut WeightReader, base: &str, n: usize, bias: bool) -> Result<Norm> {
    if bias {
        return Norm::load(r, base, n);
    }
    Ok(Norm {
        weight: r.param(&format!("{base}.weight"), &[n])?,
        bias: Param::new(&Tensor::zeros(n, DType::F32, &Device::Cpu)?)?,
    })
}

/// A norm's parameters under `base` (its bias only when it has one).
fn norm_params<'a>(norm: &'a Norm, base: &str, bias: bool) -> Vec<(String, &'a Param)> {
    let [w, b] = norm.params(base);
    if bias {
        vec![w, b]
    } else {
        vec![w]
    }
}

fn norm_params_mut(norm: &mut Norm, bias: bool) -> Vec<&mut Param> {
    if bias {
        vec![&mut norm.weight, &mut norm.bias]
    } else {
        vec![&mut norm.weight]
    }
}

/// The rotary tables of one RoPE base: `cos` and `sin` as `[max_positions, head_dim]` (each
/// half repeats the other's frequencies, as `cat(freqs, freqs)` upstream).
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(theta: f64, head_dim: usize, positions: usize) -> Result<Self> {
        let half = head_dim / 2;
        // f32 throughout, as upstream: inv_freq = 1 / theta^(2i / dim), angle = pos * inv_freq.
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(positions * head_dim);
        let mut sin = Vec::with_capacity(positions * head_dim);
        for p in 0..positions {
            for _ in 0..2 {
                for f in &inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (positions, head_dim), &Device::Cpu)?,
            sin: Tensor::from_vec(sin, (positions, head_dim), &Device::Cpu)?,
        })
    }

    /// `x · cos + rotate_half(x) · sin` for every head of `x` `[batch, seq, heads · head_dim]`.
    fn apply(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let dh = h / heads;
        if s > self.cos.dim(0)? {
            return Err(Error::Input(format!(
                "{s} positions, the rotary tables have {}",
                self.cos.dim(0)?
            )));
        }
        let x4 = x.reshape((b, s, heads, dh))?;
        let x1 = x4.narrow(D::Minus1, 0, dh / 2)?;
        let x2 = x4.narrow(D::Minus1, dh / 2, dh / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let cos = self.cos.narrow(0, 0, s)?.reshape((s, 1, dh))?;
        let sin = self.sin.narrow(0, 0, s)?.reshape((s, 1, dh))?;
        let y = (x4.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
        Ok(y.reshape((b, s, h))?)
    }
}

/// Token embeddings and their norm.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `[vocab, hidden]` (empty, `[0, hidden]`, once the table is int8: see `tok_int8`).
    pub tok: Param,
    /// The int8 token table used instead of `tok` (inference only), if any.
    pub tok_int8: Option<Arc<Int8Table>>,
    /// The embedding norm.
    pub norm: Norm,
}

impl Embeddings {
    /// Reads the embedding table and norm.
    pub(crate) fn load(cfg: &EncoderConfig, r: &mut WeightReader) -> Result<Self> {
        let m = modern(cfg)?;
        let h = cfg.hidden_size;
        let (tok, tok_int8) = match r.table(TOK_EMBEDDINGS, cfg.vocab_size, h)? {
            TableWeight::F32(p) => (p, None),
            TableWeight::Int8(t) => (empty_table(h)?, Some(t)),
        };
        let norm = load_norm(r, EMBEDDING_NORM, h, m.norm_bias)?;
        Ok(Self {
            tok,
            tok_int8,
            norm,
        })
    }

    /// Replaces the f32 token table by its int8 form (inference only).
    pub(crate) fn quantize_tables(&mut self) -> Result<()> {
        if self.tok_int8.is_none() {
            let q = Int8Table::quantize(&self.tok.t().detach())?;
            self.tok = empty_table(q.dims().1)?;
            self.tok_int8 = Some(Arc::new(q));
        }
        Ok(())
    }

    /// The int8 table with its checkpoint name, if the table is int8.
    pub(crate) fn int8_tables(&self) -> Vec<(String, &Int8Table)> {
        self.tok_int8
            .as_deref()
            .map(|t| (TOK_EMBEDDINGS.to_string(), t))
            .into_iter()
            .collect()
    }

    fn forward(&self, cfg: &EncoderConfig, input: &EncoderInput) -> Result<Tensor> {
        let (b, s) = input.input_ids.dims2()?;
        let ids = input.input_ids.flatten_all()?;
        let x = match &self.tok_int8 {
            None => self.tok.t().embedding(&ids)?,
            Some(table) => table.gather(&ids.to_vec1::<u32>()?)?,
        }
        .reshape((b, s, cfg.hidden_size))?;
        self.norm.forward(&x, cfg.layer_norm_eps)
    }
}

/// One pre-norm block.
#[derive(Debug, Clone)]
pub struct Block {
    /// The norm before attention (none in the first block).
    pub attn_norm: Option<Norm>,
    /// The fused query/key/value projection `[3 · hidden, hidden]`.
    pub wqkv: LoraLinear,
    /// The attention output projection.
    pub attn_wo: LoraLinear,
    /// The norm before the feed-forward.
    pub mlp_norm: Norm,
    /// The GeGLU input projection `[2 · intermediate, hidden]` (`[input | gate]`).
    pub wi: LoraLinear,
    /// The feed-forward output projection.
    pub mlp_wo: LoraLinear,
    /// Sliding-window attention (a local layer) rather than global.
    pub sliding: bool,
}

impl Block {
    /// Reads layer `i`.
    pub(crate) fn load(cfg: &EncoderConfig, r: &mut WeightReader, i: usize) -> Result<Self> {
        let m = modern(cfg)?;
        let mut lin = |t: LoraTarget| {
            let (out, inp) = linear_dims(cfg, t);
            LoraLinear::load_with_bias(r, &linear_path(i, t), out, inp, linear_has_bias(m, t))
        };
        let wqkv = lin(LoraTarget::Qkv)?;
        let attn_wo = lin(LoraTarget::AttentionOutput)?;
        let wi = lin(LoraTarget::Intermediate)?;
        let mlp_wo = lin(LoraTarget::Output)?;
        let layer = format!("{}{i}", NAMES.layers);
        let h = cfg.hidden_size;
        let attn_norm = if i == 0 {
            None
        } else {
            Some(load_norm(r, &format!("{layer}.attn_norm"), h, m.norm_bias)?)
        };
        Ok(Self {
            attn_norm,
            wqkv,
            attn_wo,
            mlp_norm: load_norm(r, &format!("{layer}.mlp_norm"), h, m.norm_bias)?,
            wi,
            mlp_wo,
            sliding: m.sliding.get(i).copied().unwrap_or(false),
        })
    }

    /// The four linear layers in block order.
    pub fn linears(&self) -> [(LoraTarget, &LoraLinear); 4] {
        [
            (LoraTarget::Qkv, &self.wqkv),
            (LoraTarget::AttentionOutput, &self.attn_wo),
            (LoraTarget::Intermediate, &self.wi),
            (LoraTarget::Output, &self.mlp_wo),
        ]
    }

    /// The four linear layers in block order, mutable.
    pub fn linears_mut(&mut self) -> [(LoraTarget, &mut LoraLinear); 4] {
        [
            (LoraTarget::Qkv, &mut self.wqkv),
            (LoraTarget::AttentionOutput, &mut self.attn_wo),
            (LoraTarget::Intermediate, &mut self.wi),
            (LoraTarget::Output, &mut self.mlp_wo),
        ]
    }

    fn forward(
        &self,
        cfg: &EncoderConfig,
        m: &ModernBertConfig,
        rotary: &Rotary,
        x: &Tensor,
        mask: &Tensor,
        run: &mut Run<'_, '_>,
    ) -> Result<Tensor> {
        let h = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let normed = match &self.attn_norm {
            Some(n) => n.forward(x, cfg.layer_norm_eps)?,
            None => x.clone(),
        };
        let qkv = run.linear(&self.wqkv, &normed)?;
        let q = rotary.apply(&qkv.narrow(D::Minus1, 0, h)?, heads)?;
        let k = rotary.apply(&qkv.narrow(D::Minus1, h, h)?, heads)?;
        let v = qkv.narrow(D::Minus1, 2 * h, h)?.contiguous()?;
        let scale = 1.0 / (cfg.head_dim() as f64).sqrt();
        let window = self.sliding.then_some(m.local_attention / 2);
        let dropout = run.attention_dropout(cfg.attention_probs_dropout_prob);
        let ctx = ops::windowed_attention(&q, &k, &v, mask, window, heads, scale, dropout)?;
        let attn = run.linear(&self.attn_wo, &ctx)?;
        let attn = run.dropout(&attn, cfg.attention_probs_dropout_prob)?;
        let x = (x + attn)?;
        let normed = self.mlp_norm.forward(&x, cfg.layer_norm_eps)?;
        let wi = run.linear(&self.wi, &normed)?;
        let i = cfg.intermediate_size;
        let (input, gate) = (wi.narrow(D::Minus1, 0, i)?, wi.narrow(D::Minus1, i, i)?);
        let act = match cfg.hidden_act {
            Activation::GeluErf => ops::gelu(&input.contiguous()?)?,
            Activation::GeluTanh => input.gelu()?,
            Activation::Relu => input.relu()?,
        };
        let inner = run.dropout(&(act * gate)?, cfg.hidden_dropout_prob)?;
        let out = run.linear(&self.mlp_wo, &inner)?;
        Ok((x + out)?)
    }
}

/// The ModernBERT model: embeddings, blocks, final norm and the two rotary tables.
#[derive(Debug, Clone)]
pub struct Model {
    /// Embedding layer.
    pub embeddings: Embeddings,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
    /// The norm after the last block.
    pub final_norm: Norm,
    /// The config's ModernBERT settings (which norms and linears have biases, windows).
    pub settings: ModernBertConfig,
    global_rotary: Rotary,
    local_rotary: Rotary,
}

impl Model {
    /// Reads every weight of the model.
    pub(crate) fn load(cfg: &EncoderConfig, r: &mut WeightReader) -> Result<Self> {
        let m = modern(cfg)?;
        let embeddings = Embeddings::load(cfg, r)?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(cfg, r, i))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = load_norm(r, FINAL_NORM, cfg.hidden_size, m.norm_bias)?;
        let (dh, n) = (cfg.head_dim(), cfg.max_position_embeddings);
        Ok(Self {
            embeddings,
            blocks,
            final_norm,
            settings: m.clone(),
            global_rotary: Rotary::new(m.global_rope_theta, dh, n)?,
            local_rotary: Rotary::new(m.local_rope_theta, dh, n)?,
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
        let x = self.embeddings.forward(cfg, input)?;
        let mut x = run.dropout(&x, m.embedding_dropout)?;
        for block in &self.blocks {
            let rotary = if block.sliding {
                &self.local_rotary
            } else {
                &self.global_rotary
            };
            x = block.forward(cfg, m, rotary, &x, &input.attention_mask, run)?;
        }
        self.final_norm.forward(&x, cfg.layer_norm_eps)
    }

    pub(crate) fn linears(&self) -> Vec<(LinearId, &LoraLinear)> {
        super::stack_linears(&self.blocks, Block::linears)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<(LinearId, &mut LoraLinear)> {
        super::stack_linears_mut(&mut self.blocks, Block::linears_mut)
    }

    pub(crate) fn params(&self) -> Vec<(String, &Param)> {
        let m = &self.settings;
        let nb = m.norm_bias;
        let mut v: Vec<(String, &Param)> = Vec::new();
        // A table held as int8 is no parameter (like a quantised linear weight).
        if self.embeddings.tok_int8.is_none() {
            v.push((TOK_EMBEDDINGS.into(), &self.embeddings.tok));
        }
        v.extend(norm_params(&self.embeddings.norm, EMBEDDING_NORM, nb));
        for (i, block) in self.blocks.iter().enumerate() {
            let layer = format!("{}{i}", NAMES.layers);
            if let Some(n) = &block.attn_norm {
                v.extend(norm_params(n, &format!("{layer}.attn_norm"), nb));
            }
            for (t, lin) in block.linears() {
                let base = linear_path(i, t);
                // A quantised weight is no parameter (see `LoraLinear::quantized`).
                if lin.quantized.is_none() {
                    v.push((format!("{base}.weight"), &lin.weight));
                }
                if linear_has_bias(m, t) {
                    v.push((format!("{base}.bias"), &lin.bias));
                }
            }
            v.extend(norm_params(
                &block.mlp_norm,
                &format!("{layer}.mlp_norm"),
                nb,
            ));
        }
        v.extend(norm_params(&self.final_norm, FINAL_NORM, nb));
        v
    }

    pub(crate) fn params_mut(&mut self) -> Vec<&mut Param> {
        let m = self.settings.clone();
        let nb = m.norm_bias;
        let mut v: Vec<&mut Param> = Vec::new();
        if self.embeddings.tok_int8.is_none() {
            v.push(&mut self.embeddings.tok);
        }
        v.extend(norm_params_mut(&mut self.embeddings.norm, nb));
        for block in &mut self.blocks {
            let Block {
                attn_norm,
                wqkv,
                attn_wo,
                mlp_norm,
                wi,
                mlp_wo,
                ..
            } = block;
            if let Some(n) = attn_norm {
                v.extend(norm_params_mut(n, nb));
            }
            for (t, lin) in [
                (LoraTarget::Qkv, wqkv),
                (LoraTarget::AttentionOutput, attn_wo),
                (LoraTarget::Intermediate, wi),
                (LoraTarget::Output, mlp_wo),
            ] {
                if lin.quantized.is_none() {
                    v.push(&mut lin.weight);
                }
                if linear_has_bias(&m, t) {
                    v.push(&mut lin.bias);
                }
            }
            v.extend(norm_params_mut(mlp_norm, nb));
        }
        v.extend(norm_params_mut(&mut self.final_norm, nb));
        v
    }
}
