//! The error type of `prefine-model`.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error (not a `source`, so that chained reports do not repeat it).
        cause: std::io::Error,
    },
    /// A JSON/TOML file is malformed.
    #[error("{path}: {reason}")]
    Parse {
        /// The file involved.
        path: PathBuf,
        /// What the parser said (with line and column where known).
        reason: String,
    },
    /// A JSON file could not be parsed or written (the parser's error is the source).
    #[error("{}", path.display())]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file could not be serialised (the library's error is the source).
    #[error("{}", path.display())]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// The library's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// `config.json` names a `model_type` this crate does not implement.
    #[error("{path}: unsupported model_type {found:?}; supported: {supported}")]
    UnsupportedModel {
        /// The config file.
        path: PathBuf,
        /// The model type found.
        found: String,
        /// The model types that are supported.
        supported: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The offending key.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The weights file does not match the configuration.
    #[error("{path}: {reason}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// Missing tensors, shape mismatches, ...
        reason: String,
    },
    /// An adapter directory is malformed or does not fit the model.
    #[error("adapter {path}: {reason}")]
    Adapter {
        /// The adapter directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A named LoRA group does not exist.
    #[error("no LoRA group named {0:?}")]
    UnknownGroup(String),
    /// Inputs to a forward pass are inconsistent.
    #[error("bad input: {0}")]
    Input(String),
    /// Something that needs trainable f32 weights (training, gradients, merging, a Hugging
    /// Face checkpoint) was asked of a quantised or packed encoder.
    #[error(
        "the backbone is prepared for inference ({precision}, quantised or packed): {what} is \
         not supported; such encoders are inference-only (train on the f32 model as loaded, \
         quantise or pack afterwards)"
    )]
    InferenceOnly {
        /// The encoder's precision.
        precision: crate::precision::Precision,
        /// What was asked.
        what: String,
    },
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            cause: source,
        }
    }
    /// Builds an [`Error::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
