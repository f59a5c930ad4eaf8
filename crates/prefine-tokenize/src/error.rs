//! The error type of `prefine-tokenize`.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer or encoding text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tokenizer file is missing or unreadable.
    #[error("cannot read tokenizer file {}", path.display())]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The tokenizer file exists but is not a valid `tokenizer.json`.
    #[error("invalid tokenizer file {}", path.display())]
    Parse {
        /// The file that failed.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: tokenizers::Error,
    },
    /// The text to encode is unusable (empty, or too long with `Overflow::Error`).
    #[error("text #{index}: {reason}")]
    BadText {
        /// Position of the text in the input batch.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The tokenizer itself failed on an input.
    #[error("tokenizer failed: {0}")]
    Encode(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
