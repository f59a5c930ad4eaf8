//! The error type of `prefine-train`.

/// Everything that can go wrong in a training step or benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid hyper-parameter.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The offending key.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The loss or a gradient is not finite.
    #[error("non-finite {what} at step {step}")]
    NonFinite {
        /// `loss` or the parameter name.
        what: String,
        /// The optimizer step.
        step: u64,
    },
    /// Stopped on request (Ctrl-C) after writing a checkpoint.
    #[error("interrupted at step {step}; checkpoint written under {checkpoint} (continue with --resume)")]
    Interrupted {
        /// The optimizer step reached.
        step: u64,
        /// The checkpoint directory.
        checkpoint: std::path::PathBuf,
    },
    /// Unusable training or evaluation data.
    #[error("data: {0}")]
    Data(String),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A dataset reader error (names file and line).
    #[error(transparent)]
    Dataset(#[from] prefine_data::Error),
    /// A metrics error.
    #[error(transparent)]
    Metrics(#[from] prefine_eval::Error),
    /// A tokenizer error.
    #[error(transparent)]
    Tokenize(#[from] prefine_tokenize::Error),
    /// An error from the model crate.
    #[error(transparent)]
    Model(#[from] prefine_model::Error),
    /// An error from the inference runtime (adapter files, heads).
    #[error(transparent)]
    Runtime(#[from] prefine_runtime::Error),
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
