//! LoRA: low-rank adapters `W x + (alpha / r) · B A x` on the encoder's linear layers, in named
//! groups (one per task family, or per application), PEFT-compatible.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops;
use crate::params::{uniform, Param, SeedRng};
use crate::quant::{Precision, QuantizedLinear};
use crate::reader::{LinearWeight, WeightReader};

/// A linear layer of a transformer block that LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// Attention query projection (`attention.self.query`).
    Query,
    /// Attention key projection (`attention.self.key`).
    Key,
    /// Attention value projection (`attention.self.value`).
    Value,
    /// The fused query, key and value projection of families that have one (ModernBERT's
    /// `attn.Wqkv`). On such a family `query`, `key` and `value` name it too.
    Qkv,
    /// Attention output projection (`attention.output.dense`).
    AttentionOutput,
    /// Feed-forward up projection (`intermediate.dense`).
    Intermediate,
    /// Feed-forward down projection (`output.dense`).
    Output,
}

impl LoraTarget {
    /// Every target of a BERT block, in block order (on a fused family, the first three name
    /// its fused projection).
    pub const ALL: [LoraTarget; 6] = [
        Self::Query,
        Self::Key,
        Self::Value,
        Self::AttentionOutput,
        Self::Intermediate,
        Self::Output,
    ];

    /// Parses a target from our names or PEFT's module names (`query`, `q_lin`, `attention.output.dense`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "query" | "q_lin" => Self::Query,
            "key" | "k_lin" => Self::Key,
            "value" | "v_lin" => Self::Value,
            "qkv" | "Wqkv" => Self::Qkv,
            "attention_output" | "attention.output.dense" | "out_lin" | "attn.Wo" => {
                Self::AttentionOutput
            }
            "intermediate" | "intermediate.dense" | "lin1" | "Wi" => Self::Intermediate,
            "output" | "output.dense" | "lin2" | "mlp.Wo" => Self::Output,
            _ => return None,
        })
    }
}

fn default_rank() -> usize {
    16
}
fn default_alpha() -> f64 {
    32.0
}
fn default_targets() -> Vec<LoraTarget> {
    vec![LoraTarget::Query, LoraTarget::Value]
}

/// Hyper-parameters of one LoRA group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r.
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// Scaling numerator: the update is scaled by `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the LoRA input during training.
    #[serde(default)]
    pub dropout: f64,
    /// Which linear layers to adapt.
    #[serde(default = "default_targets")]
    pub targets: Vec<LoraTarget>,
    /// Which layers to adapt (0-based); `None` means all.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: 0.0,
            targets: default_targets(),
            layers: None,
            use_rslora: false,
        }
    }
}

/// A partial `[lora]` table: the keys it gives replace those of a base config (see
/// [`LoraConfig::deserialize_over`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoraPatch {
    rank: Option<usize>,
    alpha: Option<f64>,
    dropout: Option<f64>,
    targets: Option<Vec<LoraTarget>>,
    layers: Option<Vec<usize>>,
    use_rslora: Option<bool>,
}

impl LoraConfig {
    /// Deserialises a possibly partial table over `base`: the keys present replace `base`'s
    /// values, the others keep them. Each config that holds a LoRA group declares its own
    /// defaults once and reads its table with this (`#[serde(deserialize_with = ..)]`), so that
    /// `[lora] dropout = 0.2` keeps that config's rank and alpha.
    pub fn deserialize_over<'de, D: serde::Deserializer<'de>>(
        base: LoraConfig,
        d: D,
    ) -> std::result::Result<LoraConfig, D::Error> {
        let p = LoraPatch::deserialize(d)?;
        Ok(LoraConfig {
            rank: p.rank.unwrap_or(base.rank),
            alpha: p.alpha.unwrap_or(base.alpha),
            dropout: p.dropout.unwrap_or(base.dropout),
            targets: p.targets.unwrap_or(base.targets),
            layers: p.layers.or(base.layers),
            use_rslora: p.use_rslora.unwrap_or(base.use_rslora),
        })
    }

    /// A config adapting the last `k` of `num_layers` layers.
    pub fn last_layers(mut self, k: usize, num_layers: usize) -> Self {
        self.layers = Some((num_layers.saturating_sub(k)..num_layers).collect());
        self
    }

    /// The scale applied to `B A x`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Whether layer `i` is adapted.
    pub fn covers_layer(&self, i: usize) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&i))
    }

    /// Checks values against a model with `num_layers` layers.
    pub fn validate(&self, num_layers: usize) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::config("lora.rank", "must be positive"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::config("lora.alpha", "must be a positive number"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config("lora.dropout", "must be in [0, 1)"));
        }
        if self.targets.is_empty() {
            return Err(Error::config(
                "lora.targets",
                "must name at least one layer type",
            ));
        }
        if let Some(layers) = &self.layers {
            if layers.is_empty() {
                return Err(Error::config("lora.layers", "is empty"));
            }
            if let Some(bad) = layers.iter().find(|&&l| l >= num_layers) {
                return Err(Error::config(
                    "lora.layers",
                    format!("layer {bad} does not exist (the model has {num_layers})"),
                ));
            }
        }
        Ok(())
    }
}

/// The two LoRA matrices of one adapted linear layer: `A: [r, in]`, `B: [out, r]`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Down projection `A`.
    pub a: Param,
    /// Up projection `B`.
    pub b: Param,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout on the input of `A` in training.
    pub dropout: f64,
}

impl LoraPair {
    /// PEFT initialisation: `A` Kaiming-uniform (a = sqrt 5, i.e. bound 1/sqrt(in)), `B` zeros.
    pub fn init(
        in_features: usize,
        out_features: usize,
        cfg: &LoraConfig,
        rng: &mut SeedRng,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let a = uniform(cfg.rank, in_features, bound, rng)?;
        let b = Tensor::zeros(
            (out_features, cfg.rank),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        Ok(Self {
            a: Param::new(&a)?,
            b: Param::new(&b)?,
            scale: cfg.scale(),
            dropout: cfg.dropout,
        })
    }

    /// `scale · B A` as a `[out, in]` matrix.
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.t().detach().matmul(&self.a.t().detach())? * self.scale)?)
    }
}

/// A linear layer with a frozen-or-trainable base and any number of named LoRA pairs.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// Base weight `[out, in]` (empty, `[0, in]`, once the layer is quantised: see `quantized`).
    pub weight: Param,
    /// Base bias `[out]`.
    pub bias: Param,
    /// LoRA pairs by group name.
    pub loras: BTreeMap<String, LoraPair>,
    /// The group whose delta is currently folded into `weight`, if any.
    pub merged: Option<String>,
    /// The quantised base weight used instead of `weight` (inference only), if any.
    pub quantized: Option<Arc<QuantizedLinear>>,
}

impl LoraLinear {
    /// A plain linear layer.
    pub fn new(weight: Param, bias: Param) -> Self {
        Self {
            weight,
            bias,
            loras: BTreeMap::new(),
            merged: None,
            quantized: None,
        }
    }

    /// Reads `{base}.weight` (`[out, in]`, f32 or quantised) and `{base}.bias` (`[out]`).
    pub(crate) fn load(r: &mut WeightReader, base: &str, out: usize, inp: usize) -> Result<Self> {
        Self::load_with_bias(r, base, out, inp, true)
    }

    /// [`LoraLinear::load`], or for a layer without a bias (`has_bias = false`) a frozen zero
    /// bias that is no parameter: the family leaves it out of its parameter lists, so it is
    /// neither trained nor saved.
    pub(crate) fn load_with_bias(
        r: &mut WeightReader,
        base: &str,
        out: usize,
        inp: usize,
        has_bias: bool,
    ) -> Result<Self> {
        let weight = r.linear_weight(&format!("{base}.weight"), out, inp)?;
        let bias = if has_bias {
            r.param(&format!("{base}.bias"), &[out])?
        } else {
            Param::new(&Tensor::zeros(
                out,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?)?
        };
        match weight {
            LinearWeight::F32(w) => Ok(Self::new(w, bias)),
            LinearWeight::Quantized(q) => Self::new_quantized(q, bias),
        }
    }

    /// A layer whose base weight is quantised (`bias` stays f32).
    pub fn new_quantized(quantized: Arc<QuantizedLinear>, bias: Param) -> Result<Self> {
        let mut lin = Self::new(released_weight(quantized.dims().1)?, bias);
        lin.quantized = Some(quantized);
        Ok(lin)
    }

    /// `(out, in)` of the base weight.
    pub fn dims(&self) -> (usize, usize) {
        if let Some(q) = &self.quantized {
            return q.dims();
        }
        let d = self.weight.dims();
        (d[0], d[1])
    }

    /// Replaces the f32 base weight by its quantised form (see [`crate::quant`]).
    pub(crate) fn quantize(&mut self, precision: Precision) -> Result<()> {
        if self.merged.is_some() || self.quantized.is_some() {
            return Err(Error::Input(
                "a merged or already quantised layer cannot be quantised".into(),
            ));
        }
        let q = QuantizedLinear::quantize(&self.weight.t().detach(), precision)?;
        self.weight = released_weight(q.dims().1)?;
        self.quantized = Some(Arc::new(q));
        Ok(())
    }

    /// `x Wᵀ + b` without any LoRA delta, with the quantised weight when there is one.
    pub fn base_forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.quantized {
            Some(q) => q.forward(x, &self.bias.t()),
            None => self.plain_forward(x),
        }
    }

    /// `x Wᵀ + b` with the f32 weight: a frozen weight multiplies as panels packed once
    /// ([`Param::frozen_packs`]), a trainable one through [`ops::linear`].
    fn plain_forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.bias.trainable() && ops::matmul_precision() == ops::MatmulPrecision::F32 {
            if let Some(packs) = self.weight.frozen_packs()? {
                return Ok(ops::frozen_packed_linear(x, packs, &self.bias.t())?);
            }
        }
        Ok(ops::linear(x, &self.weight.t(), &self.bias.t())?)
    }

    /// `GELU(forward(x, group, also, rng))` (exact GELU). A quantised or packed base with no
    /// LoRA pair active here applies the activation inside its GEMM (no pass of its own);
    /// otherwise this is [`Self::forward`] followed by [`ops::gelu`].
    pub fn forward_gelu(
        &self,
        x: &Tensor,
        group: Option<&str>,
        also: Option<&str>,
        rng: Option<&mut SeedRng>,
    ) -> Result<Tensor> {
        let active = [group, also]
            .into_iter()
            .flatten()
            .any(|g| self.loras.contains_key(g));
        if let (Some(q), None, false) = (&self.quantized, &self.merged, active) {
            return q.forward_gelu(x, &self.bias.t());
        }
        Ok(ops::gelu(&self.forward(x, group, also, rng)?)?)
    }

    /// Forward with the LoRA pair of `group` added (if this layer has one), and that of `also`
    /// (a second active group, e.g. the frozen other family in MTPF-TPL).
    pub fn forward(
        &self,
        x: &Tensor,
        group: Option<&str>,
        also: Option<&str>,
        mut rng: Option<&mut SeedRng>,
    ) -> Result<Tensor> {
        if let Some(m) = &self.merged {
            if group != Some(m.as_str()) || also.is_some() {
                return Err(Error::Input(format!(
                    "LoRA group {m:?} is merged into the base weights; unmerge it before running with {group:?}"
                )));
            }
            return self.plain_forward(x);
        }
        if self.quantized.is_some() {
            // Quantised base, f32 LoRA deltas beside it.
            let mut y = self.base_forward(x)?;
            for g in [group, also].into_iter().flatten() {
                if let Some(pair) = self.loras.get(g) {
                    let h = ops::linear_no_bias(x, &pair.a.t())?;
                    let d = ops::linear_no_bias(&h, &pair.b.t())?;
                    y = (y + (d * pair.scale)?)?;
                }
            }
            return Ok(y);
        }
        let active: Vec<&LoraPair> = [group, also]
            .into_iter()
            .flatten()
            .filter_map(|g| self.loras.get(g))
            .collect();
        // A frozen base with one pair and no dropout: one fused op (the common LoRA fine-tuning case).
        if let [pair] = active.as_slice() {
            let no_dropout = pair.dropout == 0.0 || rng.is_none();
            if no_dropout
                && !self.weight.trainable()
                && !self.bias.trainable()
                && pair.a.trainable() == pair.b.trainable()
            {
                return Ok(ops::frozen_lora_linear(
                    x,
                    &self.weight.t(),
                    &self.bias.t(),
                    &pair.a.t(),
                    &pair.b.t(),
                    pair.scale,
                )?);
            }
        }
        let mut y = self.plain_forward(x)?;
        for g in [group, also].into_iter().flatten() {
            let Some(pair) = self.loras.get(g) else {
                continue;
            };
            let xin = match rng.as_deref_mut() {
                Some(rng) if pair.dropout > 0.0 => ops::dropout(x, pair.dropout, rng)?,
                _ => x.clone(),
            };
            let h = ops::linear_no_bias(&xin, &pair.a.t())?;
            let d = ops::linear_no_bias(&h, &pair.b.t())?;
            y = (y + (d * pair.scale)?)?;
        }
        Ok(y)
    }

    /// Folds `group`'s delta into the base weight.
    pub fn merge(&mut self, group: &str) -> Result<()> {
        if let Some(q) = &self.quantized {
            return Err(Error::InferenceOnly {
                precision: q.precision(),
                what: "merging a LoRA group into the base weights".into(),
            });
        }
        if let Some(m) = &self.merged {
            return Err(Error::Input(format!("group {m:?} is already merged")));
        }
        if let Some(pair) = self.loras.get(group) {
            let w = (self.weight.t().detach() + pair.delta_weight()?)?;
            self.weight.set(&w)?;
            self.merged = Some(group.to_string());
        }
        Ok(())
    }

    /// Removes the merged delta from the base weight.
    pub fn unmerge(&mut self) -> Result<()> {
        if let Some(m) = self.merged.take() {
            let pair = self
                .loras
                .get(&m)
                .ok_or_else(|| Error::UnknownGroup(m.clone()))?;
            let w = (self.weight.t().detach() - pair.delta_weight()?)?;
            self.weight.set(&w)?;
        }
        Ok(())
    }
}

/// The empty `[0, in]` placeholder left in `LoraLinear::weight` once the f32 weight is
/// released for a quantised one.
fn released_weight(inp: usize) -> Result<Param> {
    Param::new(&Tensor::zeros(
        (0, inp),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?)
}
