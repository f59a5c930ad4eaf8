//! The error type of `prefine-serve`.

use std::path::PathBuf;

/// Everything that can go wrong while loading, serving or exporting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request names an adapter that is not registered.
    #[error("unknown adapter {0:?}")]
    UnknownAdapter(String),
    /// An adapter of that name is already registered.
    #[error("adapter {0:?} is already registered")]
    AdapterExists(String),
    /// A request that cannot be served as sent (empty text, too many texts, bad name, ...).
    #[error("{0}")]
    BadRequest(String),
    /// An adapter directory that cannot be used with the shared backbone.
    #[error("{path}: {reason}")]
    Adapter {
        /// The adapter directory or file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A bundle that is malformed or fails its checksums.
    #[error("bundle {path}: {reason}")]
    Bundle {
        /// The bundle directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The server could not start or stopped with an error.
    #[error("server: {0}")]
    Server(String),
    /// An error from the model crate.
    #[error(transparent)]
    Model(#[from] prefine_model::Error),
    /// An error from the training crate (artifact and head loading).
    #[error(transparent)]
    Train(#[from] prefine_train::Error),
    /// A tokenizer error.
    #[error(transparent)]
    Tokenize(#[from] prefine_tokenize::Error),
    /// A metrics (entity decoding) error.
    #[error(transparent)]
    Metrics(#[from] prefine_eval::Error),
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// A file error with its path.
    pub fn file(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Self::File {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
