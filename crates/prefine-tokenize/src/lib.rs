//! Tokenization for prefine: a thin, typed layer over the Hugging Face `tokenizers` crate that
//! keeps what later stages need (subword ids, attention masks, word ids for label alignment,
//! character offsets for span prediction) and reports over-long inputs instead of hiding them.
//!
//! ```no_run
//! use prefine_tokenize::{TextTokenizer, TokenizeConfig};
//! let tok = TextTokenizer::from_model_dir("models/all-MiniLM-L6-v2", TokenizeConfig::default()).unwrap();
//! let batch = tok.encode_batch(&["hello world"]).unwrap();
//! assert_eq!(batch.input_ids[0][0], 101);
//! ```

#![forbid(unsafe_code)]

pub mod align;
mod error;
mod tokenizer;

pub use align::{
    split_words, subwords_with_offsets, windows, windows_and_subwords, Subwords, WindowConfig,
    WordWindow,
};
pub use error::{Error, Result};
pub use tokenizer::{EncodedBatch, EncodedText, Overflow, TextTokenizer, TokenizeConfig};
