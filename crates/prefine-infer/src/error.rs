//! The error type of `prefine-infer`.

/// Everything that can go wrong while running inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Tokenizer failure (bad text, unreadable tokenizer).
    #[error(transparent)]
    Tokenize(#[from] prefine_tokenize::Error),
    /// Model failure.
    #[error(transparent)]
    Model(#[from] prefine_model::Error),
    /// Tensor failure.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An invalid setting.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
