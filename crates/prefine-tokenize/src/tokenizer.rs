//! [`TextTokenizer`]: loads `tokenizer.json` and encodes texts into padded batches.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// What to do with a text longer than the model's position limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Keep the first `max_length` tokens (including special tokens) and log a warning.
    #[default]
    TruncateWithWarning,
    /// Refuse the text with an error that names it.
    Error,
    /// Keep the first `max_length` tokens silently (the caller counts truncations through
    /// [`EncodedText::truncated`]).
    Truncate,
}

/// Settings of the tokenizer wrapper.
#[derive(Debug, Clone)]
pub struct TokenizeConfig {
    /// Maximum sequence length in subword tokens, special tokens included
    /// (the model's `max_position_embeddings`).
    pub max_length: usize,
    /// Policy for over-long texts.
    pub overflow: Overflow,
    /// Whether to add `[CLS]`/`[SEP]` (the model's post-processor).
    pub add_special_tokens: bool,
}

impl Default for TokenizeConfig {
    fn default() -> Self {
        Self {
            max_length: 512,
            overflow: Overflow::TruncateWithWarning,
            add_special_tokens: true,
        }
    }
}

/// One encoded text, unpadded.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedText {
    /// Subword ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment ids (all zero for single texts).
    pub type_ids: Vec<u32>,
    /// For each subword, the index of the word it came from (`None` for special tokens).
    pub word_ids: Vec<Option<u32>>,
    /// For each subword, its `(start, end)` byte offsets in the original text.
    pub offsets: Vec<(usize, usize)>,
    /// Whether the text was cut to `max_length`.
    pub truncated: bool,
}

/// A padded batch ready for the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedBatch {
    /// `[batch][seq]` token ids, padded with the pad id.
    pub input_ids: Vec<Vec<u32>>,
    /// `[batch][seq]` segment ids.
    pub type_ids: Vec<Vec<u32>>,
    /// `[batch][seq]` 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// The unpadded encodings (word ids and offsets for alignment).
    pub texts: Vec<EncodedText>,
}

impl EncodedBatch {
    /// Number of texts.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    /// Padded sequence length.
    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }
}

/// A Hugging Face tokenizer loaded from a local `tokenizer.json`.
pub struct TextTokenizer {
    inner: Tokenizer,
    config: TokenizeConfig,
    pad_id: u32,
    path: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `<dir>/tokenizer.json`.
    pub fn from_model_dir(dir: impl AsRef<Path>, config: TokenizeConfig) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"), config)
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>, config: TokenizeConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_bytes(&bytes, &path, config)
    }

    /// Loads a `tokenizer.json` held in memory; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path, config: TokenizeConfig) -> Result<Self> {
        let path = path.to_path_buf();
        let mut inner = Tokenizer::from_bytes(bytes).map_err(|source| Error::Parse {
            path: path.clone(),
            source,
        })?;
        // We pad and truncate ourselves, so that over-long texts are reported, not hidden.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::Encode(e.to_string()))?;
        let pad_id = inner
            .token_to_id("[PAD]")
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        Ok(Self {
            inner,
            config,
            pad_id,
            path,
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &TokenizeConfig {
        &self.config
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Encodes one raw text. Empty (or whitespace-only) text is an error.
    pub fn encode(&self, index: usize, text: &str) -> Result<EncodedText> {
        if text.trim().is_empty() {
            return Err(Error::BadText {
                index,
                reason: "empty text".into(),
            });
        }
        let enc = self
            .inner
            .encode(text, self.config.add_special_tokens)
            .map_err(|e| Error::Encode(e.to_string()))?;
        self.finish(index, enc)
    }

    /// Encodes a text given as pre-split words (for NER): word ids refer to these words.
    pub fn encode_words(&self, index: usize, words: &[&str]) -> Result<EncodedText> {
        if words.is_empty() {
            return Err(Error::BadText {
                index,
                reason: "no words".into(),
            });
        }
        let enc = self
            .inner
            .encode(words.to_vec(), self.config.add_special_tokens)
            .map_err(|e| Error::Encode(e.to_string()))?;
        self.finish(index, enc)
    }

    fn finish(&self, index: usize, enc: tokenizers::Encoding) -> Result<EncodedText> {
        let mut text = EncodedText {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            word_ids: enc.get_word_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
            truncated: false,
        };
        let max = self.config.max_length;
        if text.ids.len() > max {
            match self.config.overflow {
                Overflow::Error => {
                    return Err(Error::BadText {
                        index,
                        reason: format!(
                            "{} tokens, more than the model limit of {max}",
                            text.ids.len()
                        ),
                    })
                }
                Overflow::TruncateWithWarning | Overflow::Truncate => {
                    if self.config.overflow == Overflow::TruncateWithWarning {
                        tracing::warn!(
                            "text #{index} has {} tokens; truncated to the model limit of {max}",
                            text.ids.len()
                        );
                    }
                    let last = *text.ids.last().unwrap_or(&0);
                    let ends_with_special = self.config.add_special_tokens
                        && text.word_ids.last().is_some_and(|w| w.is_none());
                    text.ids.truncate(max);
                    text.type_ids.truncate(max);
                    text.word_ids.truncate(max);
                    text.offsets.truncate(max);
                    if ends_with_special {
                        // Keep the closing special token ([SEP]) as the model saw it in training.
                        text.ids[max - 1] = last;
                        text.word_ids[max - 1] = None;
                        text.offsets[max - 1] = (0, 0);
                    }
                    text.truncated = true;
                }
            }
        }
        Ok(text)
    }

    /// Encodes texts and pads them to the longest one.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<EncodedBatch> {
        let encoded = texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.encode(i, t.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.pad(encoded))
    }

    /// Pads already-encoded texts into a batch.
    pub fn pad(&self, texts: Vec<EncodedText>) -> EncodedBatch {
        let seq = texts.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        let mut batch = EncodedBatch {
            input_ids: Vec::with_capacity(texts.len()),
            type_ids: Vec::with_capacity(texts.len()),
            attention_mask: Vec::with_capacity(texts.len()),
            texts: Vec::new(),
        };
        for t in &texts {
            let pad = seq - t.ids.len();
            let mut ids = t.ids.clone();
            ids.extend(std::iter::repeat_n(self.pad_id, pad));
            let mut types = t.type_ids.clone();
            types.extend(std::iter::repeat_n(0, pad));
            let mut mask = vec![1u32; t.ids.len()];
            mask.extend(std::iter::repeat_n(0, pad));
            batch.input_ids.push(ids);
            batch.type_ids.push(types);
            batch.attention_mask.push(mask);
        }
        batch.texts = texts;
        batch
    }
}
