//! The model families. Each family is one file here, in the candle-transformers shape
//! (`Embeddings::load`, `Block::load`, a `Model` with `load` and `forward`), plus its naming map
//! (a [`FamilyNames`]: checkpoint tensor names and PEFT module names). The generic
//! [`crate::Encoder`] owns LoRA groups, parameters, precision and checkpoint I/O and reaches a
//! family's model only through [`Body`].
//!
//! Adding a family: write `models/<family>.rs` with its `NAMES` and a `Model` that implements
//! the methods [`Body`] dispatches to, add a [`crate::ModelType`] variant with its
//! `config.json` keys, and one arm to each `match` in this file.

pub mod bert;
pub mod distilbert;
pub mod electra;
pub mod mobilebert;
pub mod modernbert;
mod naming;

pub use naming::{normalise_keys, Naming};

use candle_core::Tensor;

use crate::config::{EncoderConfig, ModelType};
use crate::error::Result;
use crate::input::{EncoderInput, Forward};
use crate::lora::{LoraLinear, LoraTarget};
use crate::ops;
use crate::params::Param;
use crate::reader::WeightReader;

/// A family's checkpoint names (after the task-model prefix is stripped) and PEFT names.
#[derive(Debug)]
pub struct FamilyNames {
    /// The prefix the task-head classes add (`bert.`).
    pub prefix: &'static str,
    /// The module path of layer `i` is `{layers}{i}` (`encoder.layer.`).
    pub layers: &'static str,
    /// Every LoRA-adaptable linear layer: the target, its module path inside a layer
    /// (`attention.self.query`) and the module name PEFT's `target_modules` uses (`query`).
    pub linears: &'static [(LoraTarget, &'static str, &'static str)],
    /// The two block layer norms, inside a layer: after attention, after the feed-forward.
    pub norms: [&'static str; 2],
}

/// The naming map of a model type.
pub fn names(model_type: ModelType) -> &'static FamilyNames {
    match model_type {
        ModelType::Bert => &bert::NAMES,
        ModelType::Distilbert => &distilbert::NAMES,
        ModelType::Electra => &electra::NAMES,
        ModelType::ModernBert => &modernbert::NAMES,
        ModelType::MobileBert => &mobilebert::NAMES,
    }
}

/// Where a LoRA-adaptable linear layer sits: its layer and target.
pub type LinearId = (usize, LoraTarget);

/// Every LoRA-adaptable linear layer of a stack of blocks, with its `(layer, target)`.
pub(crate) fn stack_linears<'a, B, I>(
    blocks: &'a [B],
    per_block: impl Fn(&'a B) -> I,
) -> Vec<(LinearId, &'a LoraLinear)>
where
    I: IntoIterator<Item = (LoraTarget, &'a LoraLinear)>,
{
    blocks
        .iter()
        .enumerate()
        .flat_map(|(i, b)| per_block(b).into_iter().map(move |(t, l)| ((i, t), l)))
        .collect()
}

/// [`stack_linears`], mutable.
pub(crate) fn stack_linears_mut<'a, B, I>(
    blocks: &'a mut [B],
    per_block: impl Fn(&'a mut B) -> I,
) -> Vec<(LinearId, &'a mut LoraLinear)>
where
    I: IntoIterator<Item = (LoraTarget, &'a mut LoraLinear)>,
{
    blocks
        .iter_mut()
        .enumerate()
        .flat_map(|(i, b)| per_block(b).into_iter().map(move |(t, l)| ((i, t), l)))
        .collect()
}

/// The rows of a batch that run with one LoRA group (see [`crate::Encoder::forward_mixed`]).
pub(crate) struct MixedRoute<'a> {
    pub(crate) group: &'a str,
    /// `[n]` u32 row indices.
    pub(crate) rows: Tensor,
    /// Whether every row of the batch uses this group.
    pub(crate) all: bool,
}

/// How the linear layers of one forward pass run: with one (or two) active groups and optional
/// dropout, or with a LoRA group per row and no dropout.
pub(crate) enum Run<'f, 'a> {
    /// [`crate::Encoder::forward`].
    Single(&'f mut Forward<'a>),
    /// [`crate::Encoder::forward_mixed`].
    Mixed(&'f [MixedRoute<'a>]),
}

impl Run<'_, '_> {
    /// A LoRA-adaptable linear layer.
    pub(crate) fn linear(&mut self, lin: &LoraLinear, x: &Tensor) -> Result<Tensor> {
        match self {
            Run::Single(f) => lin.forward(x, f.group, f.also, f.dropout_rng.as_deref_mut()),
            Run::Mixed(routes) => mixed_linear(lin, x, routes),
        }
    }

    /// `GELU(linear(x))` (exact GELU), fused into the GEMM where the layer allows it.
    pub(crate) fn linear_gelu(&mut self, lin: &LoraLinear, x: &Tensor) -> Result<Tensor> {
        match self {
            Run::Single(f) => lin.forward_gelu(x, f.group, f.also, f.dropout_rng.as_deref_mut()),
            Run::Mixed(routes) => Ok(ops::gelu(&mixed_linear(lin, x, routes)?)?),
        }
    }

    /// Dropout with probability `p` in training, the identity otherwise.
    pub(crate) fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self {
            Run::Single(f) => match f.dropout_rng.as_deref_mut() {
                Some(rng) if p > 0.0 => Ok(ops::dropout(x, p, rng)?),
                _ => Ok(x.clone()),
            },
            Run::Mixed(_) => Ok(x.clone()),
        }
    }

    /// The attention-probability dropout to pass to [`ops::attention`].
    pub(crate) fn attention_dropout(&mut self, p: f64) -> Option<(f64, &mut dyn rand::RngCore)> {
        match self {
            Run::Single(f) => match f.dropout_rng.as_deref_mut() {
                Some(rng) if p > 0.0 => Some((p, rng as &mut dyn rand::RngCore)),
                _ => None,
            },
            Run::Mixed(_) => None,
        }
    }
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

/// One family's model behind the generic encoder.
#[derive(Debug, Clone)]
pub enum Body {
    /// BERT, MiniLM, DistilBERT and ELECTRA (post-LN BERT blocks; see [`bert`]).
    Bert(bert::Model),
    /// ModernBERT and the Ettin encoders (see [`modernbert`]).
    ModernBert(modernbert::Model),
    /// MobileBERT (see [`mobilebert`]).
    MobileBert(mobilebert::Model),
}

/// Random weights for a family under its checkpoint names (N(0, 0.02) matrices, unit norm
/// weights, zero biases), named and shaped by the parameters `load` lists for a model loaded
/// from an empty reader (each tensor a zero placeholder): no second list of names to keep.
pub(crate) fn random_like_loaded<M>(
    config: &EncoderConfig,
    rng: &mut crate::params::SeedRng,
    load: impl FnOnce(&EncoderConfig, &mut WeightReader) -> Result<M>,
    params: impl Fn(&M) -> Vec<(String, &Param)>,
) -> Result<Vec<(String, Tensor)>> {
    use candle_core::{DType, Device};
    let mut r = WeightReader::new(
        Default::default(),
        Default::default(),
        std::path::Path::new("<random>"),
    );
    let model = load(config, &mut r)?;
    params(&model)
        .into_iter()
        .map(|(name, p)| {
            let t = match p.dims() {
                [o, i] => crate::params::normal(*o, *i, 0.02, rng)?,
                [n] if name.ends_with("orm.weight") => Tensor::ones(*n, DType::F32, &Device::Cpu)?,
                dims => Tensor::zeros(dims, DType::F32, &Device::Cpu)?,
            };
            Ok((name, t))
        })
        .collect()
}

impl Body {
    /// Reads a family's weights (every problem is collected by `r`).
    pub(crate) fn load(config: &EncoderConfig, r: &mut WeightReader) -> Result<Self> {
        match config.model_type {
            ModelType::Bert | ModelType::Distilbert | ModelType::Electra => {
                Ok(Body::Bert(bert::Model::load(config, r)?))
            }
            ModelType::ModernBert => Ok(Body::ModernBert(modernbert::Model::load(config, r)?)),
            ModelType::MobileBert => Ok(Body::MobileBert(mobilebert::Model::load(config, r)?)),
        }
    }

    /// Random weights under checkpoint names, for [`crate::Encoder::random`].
    pub(crate) fn random_tensors(
        config: &EncoderConfig,
        rng: &mut crate::params::SeedRng,
    ) -> Result<Vec<(String, Tensor)>> {
        match config.model_type {
            ModelType::Bert | ModelType::Distilbert | ModelType::Electra => {
                bert::random_tensors(config, rng)
            }
            ModelType::ModernBert => random_like_loaded(
                config,
                rng,
                modernbert::Model::load,
                modernbert::Model::params,
            ),
            ModelType::MobileBert => random_like_loaded(
                config,
                rng,
                mobilebert::Model::load,
                mobilebert::Model::params,
            ),
        }
    }

    /// `[batch, seq, hidden]` last hidden states of a checked input.
    pub(crate) fn forward(
        &self,
        config: &EncoderConfig,
        input: &EncoderInput,
        run: &mut Run<'_, '_>,
    ) -> Result<Tensor> {
        match self {
            Body::Bert(m) => m.forward(config, input, run),
            Body::ModernBert(m) => m.forward(config, input, run),
            Body::MobileBert(m) => m.forward(config, input, run),
        }
    }

    /// Every LoRA-adaptable linear layer.
    pub fn linears(&self) -> Vec<(LinearId, &LoraLinear)> {
        match self {
            Body::Bert(m) => m.linears(),
            Body::ModernBert(m) => m.linears(),
            Body::MobileBert(m) => m.linears(),
        }
    }

    /// Every LoRA-adaptable linear layer, mutable.
    pub fn linears_mut(&mut self) -> Vec<(LinearId, &mut LoraLinear)> {
        match self {
            Body::Bert(m) => m.linears_mut(),
            Body::ModernBert(m) => m.linears_mut(),
            Body::MobileBert(m) => m.linears_mut(),
        }
    }

    /// The linear layer at `id`, if the model has it.
    pub fn linear_mut(&mut self, id: LinearId) -> Option<&mut LoraLinear> {
        self.linears_mut()
            .into_iter()
            .find_map(|(i, l)| (i == id).then_some(l))
    }

    /// Turns the word- and position-embedding tables (ModernBERT: the token table) to int8
    /// (inference only; MobileBERT's narrow tables stay f32).
    pub(crate) fn quantize_tables(&mut self) -> Result<()> {
        match self {
            Body::Bert(m) => m.embeddings.quantize_tables(),
            Body::ModernBert(m) => m.embeddings.quantize_tables(),
            Body::MobileBert(_) => Ok(()),
        }
    }

    /// Every int8 table with its checkpoint name.
    pub(crate) fn int8_tables(&self) -> Vec<(String, &crate::int8_table::Int8Table)> {
        match self {
            Body::Bert(m) => m.embeddings.int8_tables(),
            Body::ModernBert(m) => m.embeddings.int8_tables(),
            Body::MobileBert(_) => Vec::new(),
        }
    }

    /// Every base parameter with its checkpoint name (quantised linear weights excluded).
    pub(crate) fn params(&self, config: &EncoderConfig) -> Vec<(String, &Param)> {
        match self {
            Body::Bert(m) => m.params(config),
            Body::ModernBert(m) => m.params(),
            Body::MobileBert(m) => m.params(),
        }
    }

    /// Every base parameter, mutable (quantised linear weights excluded).
    pub(crate) fn params_mut(&mut self) -> Vec<&mut Param> {
        match self {
            Body::Bert(m) => m.params_mut(),
            Body::ModernBert(m) => m.params_mut(),
            Body::MobileBert(m) => m.params_mut(),
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
    /// Reads `{base}.weight` and `{base}.bias` of width `n`.
    pub(crate) fn load(r: &mut WeightReader, base: &str, n: usize) -> Result<Self> {
        Ok(Self {
            weight: r.param(&format!("{base}.weight"), &[n])?,
            bias: r.param(&format!("{base}.bias"), &[n])?,
        })
    }

    /// `LayerNorm(x)`.
    pub(crate) fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(ops::layer_norm(x, &self.weight.t(), &self.bias.t(), eps)?)
    }

    /// `LayerNorm(x + residual)` in one op.
    pub(crate) fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        Ok(ops::add_layer_norm(
            x,
            residual,
            &self.weight.t(),
            &self.bias.t(),
            eps,
        )?)
    }

    /// `(name, param)` under `base`.
    pub(crate) fn params(&self, base: &str) -> [(String, &Param); 2] {
        [
            (format!("{base}.weight"), &self.weight),
            (format!("{base}.bias"), &self.bias),
        ]
    }
}
