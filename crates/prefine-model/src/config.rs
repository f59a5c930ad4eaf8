//! Model configuration: `config.json` of a BERT-family checkpoint, read into one canonical
//! [`EncoderConfig`] (BERT and MiniLM use `model_type: "bert"`; DistilBERT has its own keys).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The model types this crate can load.
pub const SUPPORTED_MODEL_TYPES: &[&str] =
    &["bert", "distilbert", "electra", "mobilebert", "modernbert"];

/// The checkpoint family, which fixes tensor names and a few architectural details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// BERT, MiniLM, and other `BertModel` checkpoints.
    Bert,
    /// DistilBERT (no token types, no pooler, different names).
    Distilbert,
    /// ELECTRA discriminator body (BERT blocks; embeddings of `embedding_size` projected to
    /// `hidden_size` by `embeddings_project` when the two differ; no pooler).
    Electra,
    /// ModernBERT and the Ettin encoders (pre-norm blocks, fused `Wqkv`, rotary positions,
    /// GeGLU, alternating global and sliding-window attention; see [`ModernBertConfig`]).
    #[serde(rename = "modernbert")]
    ModernBert,
    /// MobileBERT (trigram input embedding, bottlenecks, stacked feed-forwards, NoNorm; see
    /// [`MobileBertConfig`]).
    #[serde(rename = "mobilebert")]
    MobileBert,
}

/// What MobileBERT adds to the common settings (`hidden_size` is the width between blocks;
/// inside a block, attention and feed-forwards run at `true_hidden_size`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MobileBertConfig {
    /// The width inside a block: `intra_bottleneck_size` with bottlenecks, else `hidden_size`.
    pub true_hidden_size: usize,
    /// Whether each block projects its input down (and its output back up).
    pub use_bottleneck: bool,
    /// Whether attention reads the bottlenecked input for query, key and value.
    pub use_bottleneck_attention: bool,
    /// Whether query and key read one shared bottleneck of the block input.
    pub key_query_shared_bottleneck: bool,
    /// Feed-forward networks per block (the last is the block's intermediate/output pair).
    pub num_feedforward_networks: usize,
    /// Whether the input embedding concatenates each token with its neighbours.
    pub trigram_input: bool,
    /// `NoNorm` (`x * weight + bias`) instead of layer norms.
    pub no_norm: bool,
}

/// What ModernBERT adds to the common settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModernBertConfig {
    /// Per layer: whether it attends in a sliding window (`sliding_attention`) instead of
    /// globally (`full_attention`).
    pub sliding: Vec<bool>,
    /// The whole window (`local_attention`): a token sees keys at most half of it away.
    pub local_attention: usize,
    /// RoPE base of the global layers.
    pub global_rope_theta: f64,
    /// RoPE base of the sliding-window layers.
    pub local_rope_theta: f64,
    /// Whether the layer norms have a bias (`norm_bias`).
    pub norm_bias: bool,
    /// Whether `Wqkv` and the attention `Wo` have biases (`attention_bias`).
    pub attention_bias: bool,
    /// Whether `Wi` and the feed-forward `Wo` have biases (`mlp_bias`).
    pub mlp_bias: bool,
    /// Dropout after the embedding norm (`embedding_dropout`; `mlp_dropout` is the common
    /// `hidden_dropout_prob`, `attention_dropout` the common `attention_probs_dropout_prob`,
    /// which ModernBERT also applies after the attention's `Wo`).
    pub embedding_dropout: f64,
}

/// Feed-forward activation. BERT's `"gelu"` is the exact erf form (not the tanh approximation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `x * Φ(x)` with the erf-based normal CDF (HF `"gelu"`).
    #[serde(rename = "gelu")]
    GeluErf,
    /// tanh approximation (HF `"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new")]
    GeluTanh,
    /// `max(0, x)`.
    #[serde(rename = "relu")]
    Relu,
}

/// Architecture of a BERT-family encoder, independent of the checkpoint's naming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Which family the checkpoint belongs to.
    pub model_type: ModelType,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size (d_model).
    pub hidden_size: usize,
    /// Width of the embedding tables (ELECTRA's `embedding_size`; `hidden_size` elsewhere).
    pub embedding_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Dropout on hidden states.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// Position limit.
    pub max_position_embeddings: usize,
    /// Number of token types (0 for DistilBERT).
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Padding token id.
    pub pad_token_id: u32,
    /// ModernBERT's own settings (`None` for the other families).
    #[serde(default)]
    pub modernbert: Option<ModernBertConfig>,
    /// MobileBERT's own settings (`None` for the other families).
    #[serde(default)]
    pub mobilebert: Option<MobileBertConfig>,
    /// The original `config.json`, kept so that saving writes back everything it had.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

#[derive(Deserialize)]
struct BertJson {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default = "default_pos_type")]
    position_embedding_type: String,
    /// ELECTRA only.
    #[serde(default)]
    embedding_size: Option<usize>,
}

#[derive(Deserialize)]
struct DistilbertJson {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "default_act")]
    activation: String,
    #[serde(default = "default_dropout")]
    dropout: f64,
    #[serde(default = "default_dropout")]
    attention_dropout: f64,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    sinusoidal_pos_embds: bool,
}

impl BertJson {
    /// The canonical config of a `bert` or `electra` (`electra = true`) checkpoint.
    fn into_config(
        self,
        path: &Path,
        raw: serde_json::Value,
        electra: bool,
    ) -> Result<EncoderConfig> {
        if self.position_embedding_type != "absolute" {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                reason: format!(
                    "position_embedding_type {:?} is not supported (absolute)",
                    self.position_embedding_type
                ),
            });
        }
        Ok(EncoderConfig {
            model_type: if electra {
                ModelType::Electra
            } else {
                ModelType::Bert
            },
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            embedding_size: match self.embedding_size {
                Some(e) if electra => e,
                _ => self.hidden_size,
            },
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: parse_act(path, &self.hidden_act)?,
            hidden_dropout_prob: self.hidden_dropout_prob,
            attention_probs_dropout_prob: self.attention_probs_dropout_prob,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            layer_norm_eps: self.layer_norm_eps,
            pad_token_id: self.pad_token_id.unwrap_or(0),
            modernbert: None,
            mobilebert: None,
            raw,
        })
    }
}

impl DistilbertJson {
    /// The canonical config of a `distilbert` checkpoint.
    fn into_config(self, path: &Path, raw: serde_json::Value) -> Result<EncoderConfig> {
        if self.sinusoidal_pos_embds {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                reason: "sinusoidal_pos_embds = true is not supported".into(),
            });
        }
        Ok(EncoderConfig {
            model_type: ModelType::Distilbert,
            vocab_size: self.vocab_size,
            hidden_size: self.dim,
            embedding_size: self.dim,
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            intermediate_size: self.hidden_dim,
            hidden_act: parse_act(path, &self.activation)?,
            hidden_dropout_prob: self.dropout,
            attention_probs_dropout_prob: self.attention_dropout,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: 0,
            // HF DistilBERT hard-codes eps = 1e-12.
            layer_norm_eps: 1e-12,
            pad_token_id: self.pad_token_id.unwrap_or(0),
            modernbert: None,
            mobilebert: None,
            raw,
        })
    }
}

#[derive(Deserialize)]
struct ModernBertJson {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_activation: String,
    #[serde(default)]
    mlp_dropout: f64,
    #[serde(default)]
    attention_dropout: f64,
    #[serde(default)]
    embedding_dropout: f64,
    #[serde(default = "default_modern_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_modern_eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default = "default_global_every")]
    global_attn_every_n_layers: usize,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default = "default_local_attention")]
    local_attention: usize,
    /// transformers 5: `{"full_attention": {"rope_theta": ..}, "sliding_attention": {..}}`.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    /// transformers 4.
    #[serde(default = "default_global_theta")]
    global_rope_theta: f64,
    #[serde(default = "default_local_theta")]
    local_rope_theta: f64,
}

fn default_modern_max_pos() -> usize {
    8192
}
fn default_modern_eps() -> f64 {
    1e-5
}
fn default_global_every() -> usize {
    3
}
fn default_local_attention() -> usize {
    128
}
fn default_global_theta() -> f64 {
    160_000.0
}
fn default_local_theta() -> f64 {
    10_000.0
}

impl ModernBertJson {
    /// The canonical config, with the per-layer attention kinds and RoPE bases resolved from
    /// either transformers 5 keys (`layer_types`, `rope_parameters`) or 4 keys.
    fn into_config(self, path: &Path, raw: serde_json::Value) -> Result<EncoderConfig> {
        let bad = |reason: String| Error::Parse {
            path: path.to_path_buf(),
            reason,
        };
        let sliding = match &self.layer_types {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(false),
                    "sliding_attention" => Ok(true),
                    other => Err(bad(format!(
                        "layer_types: {other:?} is neither full_attention nor sliding_attention"
                    ))),
                })
                .collect::<Result<Vec<_>>>()?,
            None => (0..self.num_hidden_layers)
                .map(|i| i % self.global_attn_every_n_layers.max(1) != 0)
                .collect(),
        };
        if sliding.len() != self.num_hidden_layers {
            return Err(bad(format!(
                "layer_types has {} entries for {} layers",
                sliding.len(),
                self.num_hidden_layers
            )));
        }
        let theta = |kind: &str, fallback: f64| -> Result<f64> {
            let Some(p) = self.rope_parameters.as_ref().and_then(|r| r.get(kind)) else {
                return Ok(fallback);
            };
            if let Some(t) = p.get("rope_type").and_then(|t| t.as_str()) {
                if t != "default" {
                    return Err(bad(format!(
                        "rope_parameters.{kind}.rope_type {t:?} is not supported (default)"
                    )));
                }
            }
            Ok(p.get("rope_theta")
                .and_then(|t| t.as_f64())
                .unwrap_or(fallback))
        };
        let modern = ModernBertConfig {
            sliding,
            local_attention: self.local_attention,
            global_rope_theta: theta("full_attention", self.global_rope_theta)?,
            local_rope_theta: theta("sliding_attention", self.local_rope_theta)?,
            norm_bias: self.norm_bias,
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            embedding_dropout: self.embedding_dropout,
        };
        Ok(EncoderConfig {
            model_type: ModelType::ModernBert,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            embedding_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: parse_act(path, &self.hidden_activation)?,
            hidden_dropout_prob: self.mlp_dropout,
            attention_probs_dropout_prob: self.attention_dropout,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: 0,
            layer_norm_eps: self.norm_eps,
            pad_token_id: self.pad_token_id.unwrap_or(0),
            modernbert: Some(modern),
            mobilebert: None,
            raw,
        })
    }
}

#[derive(Deserialize)]
struct MobileBertJson {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_mobile_act")]
    hidden_act: String,
    #[serde(default)]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default = "default_mobile_width")]
    embedding_size: usize,
    #[serde(default = "default_true")]
    trigram_input: bool,
    #[serde(default = "default_true")]
    use_bottleneck: bool,
    #[serde(default = "default_mobile_width")]
    intra_bottleneck_size: usize,
    #[serde(default)]
    use_bottleneck_attention: bool,
    #[serde(default = "default_true")]
    key_query_shared_bottleneck: bool,
    #[serde(default = "default_mobile_ffns")]
    num_feedforward_networks: usize,
    #[serde(default = "default_mobile_norm")]
    normalization_type: String,
}

fn default_mobile_act() -> String {
    "relu".into()
}
fn default_mobile_width() -> usize {
    128
}
fn default_mobile_ffns() -> usize {
    4
}
fn default_mobile_norm() -> String {
    "no_norm".into()
}
fn default_true() -> bool {
    true
}

impl MobileBertJson {
    /// The canonical config (`true_hidden_size` derived as transformers does).
    fn into_config(self, path: &Path, raw: serde_json::Value) -> Result<EncoderConfig> {
        let no_norm = match self.normalization_type.as_str() {
            "no_norm" => true,
            "layer_norm" => false,
            other => {
                return Err(Error::Parse {
                    path: path.to_path_buf(),
                    reason: format!(
                        "normalization_type {other:?} is not supported (no_norm, layer_norm)"
                    ),
                })
            }
        };
        let true_hidden_size = if self.use_bottleneck {
            self.intra_bottleneck_size
        } else {
            self.hidden_size
        };
        if self.num_feedforward_networks == 0 || true_hidden_size % self.num_attention_heads != 0 {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                reason: format!(
                    "num_feedforward_networks must be positive and the block width {true_hidden_size} a multiple of num_attention_heads"
                ),
            });
        }
        Ok(EncoderConfig {
            model_type: ModelType::MobileBert,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            embedding_size: self.embedding_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: parse_act(path, &self.hidden_act)?,
            hidden_dropout_prob: self.hidden_dropout_prob,
            attention_probs_dropout_prob: self.attention_probs_dropout_prob,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            layer_norm_eps: self.layer_norm_eps,
            pad_token_id: self.pad_token_id.unwrap_or(0),
            modernbert: None,
            mobilebert: Some(MobileBertConfig {
                true_hidden_size,
                use_bottleneck: self.use_bottleneck,
                use_bottleneck_attention: self.use_bottleneck_attention,
                key_query_shared_bottleneck: self.key_query_shared_bottleneck,
                num_feedforward_networks: self.num_feedforward_networks,
                trigram_input: self.trigram_input,
                no_norm,
            }),
            raw,
        })
    }
}

/// The keys `ModernBertJson` and `MobileBertJson` cannot do without.
const MODERNBERT_REQUIRED: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
];

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

fn parse_act(path: &Path, s: &str) -> Result<Activation> {
    match s {
        "gelu" => Ok(Activation::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(Error::Parse {
            path: path.to_path_buf(),
            reason: format!(
                "hidden_act {other:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"
            ),
        }),
    }
}

/// The keys `BertJson` cannot do without.
const BERT_REQUIRED: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
];
/// The keys `DistilbertJson` cannot do without.
const DISTILBERT_REQUIRED: &[&str] = &["vocab_size", "dim", "n_layers", "n_heads", "hidden_dim"];

/// Deserialises a `config.json` object; a value of the wrong type is reported with its key
/// (`field hidden_size: invalid type: string "sixteen", expected usize`), which `serde_json`'s
/// `from_value` alone does not say.
fn from_fields<T: serde::de::DeserializeOwned>(
    raw: &serde_json::Value,
    required: &[&str],
    path: &Path,
) -> Result<T> {
    let e = match serde_json::from_value::<T>(raw.clone()) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    // Try each key alone on top of placeholder values for the required ones: the key whose
    // value fails is the culprit.
    let culprit = raw.as_object().and_then(|obj| {
        obj.iter().find_map(|(k, v)| {
            let mut probe: serde_json::Map<String, serde_json::Value> = required
                .iter()
                .map(|r| (r.to_string(), serde_json::json!(1)))
                .collect();
            probe.insert(k.clone(), v.clone());
            serde_json::from_value::<T>(serde_json::Value::Object(probe))
                .is_err()
                .then(|| k.clone())
        })
    });
    Err(Error::Parse {
        path: path.to_path_buf(),
        reason: match culprit {
            Some(k) => format!("field {k}: {e}"),
            None => e.to_string(),
        },
    })
}

impl EncoderConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("config.json"))
    }

    /// Reads a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a `config.json`; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let parse_err = |source| Error::Json {
            path: path.to_path_buf(),
            source,
        };
        let raw: serde_json::Value = serde_json::from_str(text).map_err(parse_err)?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let cfg = match model_type.as_str() {
            "bert" | "electra" => {
                let j: BertJson = from_fields(&raw, BERT_REQUIRED, path)?;
                j.into_config(path, raw, model_type == "electra")?
            }
            "modernbert" => {
                let j: ModernBertJson = from_fields(&raw, MODERNBERT_REQUIRED, path)?;
                j.into_config(path, raw)?
            }
            "mobilebert" => {
                let j: MobileBertJson = from_fields(&raw, MODERNBERT_REQUIRED, path)?;
                j.into_config(path, raw)?
            }
            "distilbert" => {
                let j: DistilbertJson = from_fields(&raw, DISTILBERT_REQUIRED, path)?;
                j.into_config(path, raw)?
            }
            other => {
                return Err(Error::UnsupportedModel {
                    path: path.to_path_buf(),
                    found: other.to_string(),
                    supported: SUPPORTED_MODEL_TYPES.join(", "),
                })
            }
        };
        // Name the file in value errors too ("config.json: field num_attention_heads: ...").
        cfg.validate().map_err(|e| match e {
            Error::Config { field, reason } => Error::Parse {
                path: path.to_path_buf(),
                reason: format!("field {field}: {reason}"),
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Checks the values for consistency before any tensor is allocated.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("embedding_size", self.embedding_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::config(name, "must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::config(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not a multiple of {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(Error::config(
                "layer_norm_eps",
                format!("{} is not a positive number", self.layer_norm_eps),
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::config(name, format!("{p} is not in [0, 1)")));
            }
        }
        Ok(())
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// A small BERT config with a real vocabulary size (to pair with a real tokenizer in tests).
    pub fn tiny_bert_with_vocab(vocab_size: usize) -> Self {
        let mut raw = Self::tiny_bert().raw;
        raw["vocab_size"] = serde_json::json!(vocab_size);
        raw["max_position_embeddings"] = serde_json::json!(512);
        Self::from_json_str(&raw.to_string(), Path::new("<tiny_bert>")).expect("valid tiny config")
    }

    /// A small random-initialisable BERT config for tests.
    pub fn tiny_bert() -> Self {
        let raw = serde_json::json!({
            "model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 32, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": 32, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
            "pad_token_id": 0, "architectures": ["BertModel"]
        });
        Self::from_json_str(&raw.to_string(), Path::new("<tiny_bert>")).expect("valid tiny config")
    }

    /// The `config.json` to write next to saved weights.
    pub fn to_json(&self) -> serde_json::Value {
        self.raw.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_model_type_lists_supported() {
        let err = EncoderConfig::from_json_str(r#"{"model_type":"gpt2"}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpt2") && err.contains("bert, distilbert") && err.contains("c.json"));
    }

    #[test]
    fn malformed_json_names_file_and_line() {
        let e = EncoderConfig::from_json_str(
            "{\n\"model_type\": \"bert\",\n oops",
            Path::new("x/config.json"),
        )
        .unwrap_err();
        // The file is the error's text, the parser's line its source.
        let source = std::error::Error::source(&e).expect("the parser error is kept");
        let err = format!("{e}: {source}");
        assert!(
            err.contains("x/config.json") && err.contains("line 3"),
            "{err}"
        );
    }

    #[test]
    fn wrong_value_types_name_the_key() {
        let bad = r#"{"model_type":"bert","vocab_size":10,"hidden_size":"sixteen","num_hidden_layers":1,
            "num_attention_heads":2,"intermediate_size":8}"#;
        let err = EncoderConfig::from_json_str(bad, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.json: field hidden_size: invalid type: string \"sixteen\""),
            "{err}"
        );
        let bad = r#"{"model_type":"distilbert","vocab_size":10,"dim":8,"n_layers":-1,
            "n_heads":2,"hidden_dim":8}"#;
        let err = EncoderConfig::from_json_str(bad, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.json: field n_layers: invalid value"),
            "{err}"
        );
        // A missing key is named by serde itself.
        let err = EncoderConfig::from_json_str(r#"{"model_type":"bert"}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `vocab_size`"), "{err}");
    }

    #[test]
    fn heads_must_divide_hidden() {
        let bad = r#"{"model_type":"bert","vocab_size":10,"hidden_size":10,"num_hidden_layers":1,
            "num_attention_heads":3,"intermediate_size":8}"#;
        let err = EncoderConfig::from_json_str(bad, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "c.json: field num_attention_heads: hidden_size 10 is not a multiple of 3"
            ),
            "{err}"
        );
    }

    #[test]
    fn distilbert_keys_are_mapped() {
        let j = r#"{"model_type":"distilbert","vocab_size":100,"dim":32,"n_layers":2,"n_heads":4,
            "hidden_dim":64,"activation":"gelu"}"#;
        let c = EncoderConfig::from_json_str(j, Path::new("c.json")).unwrap();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.type_vocab_size),
            (32, 2, 0)
        );
    }
}
