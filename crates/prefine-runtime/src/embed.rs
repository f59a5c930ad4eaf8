//! [`Embedder`]: sentence embeddings with sentence-transformers semantics (mean pooling over the
//! attention mask, then L2 normalisation, by default).

use std::path::Path;

use prefine_model::heads::{l2_normalize, pool};
use prefine_model::{Encoder, EncoderInput, Forward, Pooling};
use prefine_tokenize::{TextTokenizer, TokenizeConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn default_batch() -> usize {
    32
}
fn default_true() -> bool {
    true
}

/// Settings of the embedder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderConfig {
    /// Pooling over token states.
    #[serde(default)]
    pub pooling: Pooling,
    /// L2-normalise each embedding.
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Texts per forward pass.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// LoRA group to apply, if any.
    #[serde(default)]
    pub group: Option<String>,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            pooling: Pooling::Mean,
            normalize: true,
            batch_size: default_batch(),
            group: None,
        }
    }
}

/// A tokenizer and an encoder that turn texts into vectors.
pub struct Embedder {
    tokenizer: TextTokenizer,
    encoder: Encoder,
    config: EmbedderConfig,
}

impl Embedder {
    /// Loads the encoder and tokenizer from a Hugging Face model directory.
    pub fn from_model_dir(dir: &Path, config: EmbedderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::Config("batch_size must be positive".into()));
        }
        let (encoder, _) = Encoder::from_model_dir(dir)?;
        let tok_cfg = TokenizeConfig {
            max_length: encoder.config().max_position_embeddings,
            ..Default::default()
        };
        let tokenizer = TextTokenizer::from_model_dir(dir, tok_cfg)?;
        Ok(Self {
            tokenizer,
            encoder,
            config,
        })
    }

    /// The encoder (to add adapters).
    pub fn encoder_mut(&mut self) -> &mut Encoder {
        &mut self.encoder
    }

    /// One embedding per text, in order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        embed_texts(&self.encoder, &self.tokenizer, texts, &self.config)
    }
}

/// Embeddings of `texts` through `encoder` (with `config.group` active), in batches of
/// `config.batch_size`: pooled over the attention mask, L2-normalised if asked.
pub fn embed_texts<S: AsRef<str>>(
    encoder: &Encoder,
    tokenizer: &TextTokenizer,
    texts: &[S],
    config: &EmbedderConfig,
) -> Result<Vec<Vec<f32>>> {
    let _span = tracing::debug_span!("embed", texts = texts.len()).entered();
    let batch_size = config.batch_size.max(1);
    let mut out = Vec::with_capacity(texts.len());
    for (chunk_idx, chunk) in texts.chunks(batch_size).enumerate() {
        let encoded = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| tokenizer.encode(chunk_idx * batch_size + i, t.as_ref()))
            .collect::<prefine_tokenize::Result<Vec<_>>>()?;
        let batch = tokenizer.pad(encoded);
        let input =
            EncoderInput::from_vecs(&batch.input_ids, &batch.type_ids, &batch.attention_mask)?;
        let h = encoder.forward(&input, Forward::eval(config.group.as_deref()))?;
        let mut e = pool(&h, &input.attention_mask, config.pooling)?;
        if config.normalize {
            e = l2_normalize(&e)?;
        }
        out.extend(e.to_vec2::<f32>()?);
    }
    Ok(out)
}
