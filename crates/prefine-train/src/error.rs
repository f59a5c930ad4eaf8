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
    /// A file could not be read or written (the OS error is the source).
    #[error("{}", path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (e.g. a checkpoint's `state.json`) does not hold what it should.
    #[error("{}", path.display())]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A chart could not be drawn (the plotting library's error is the source).
    #[error("chart {}", path.display())]
    Chart {
        /// The chart file.
        path: std::path::PathBuf,
        /// The plotting library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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

impl Error {
    /// An I/O error on `path`, keeping the OS error as the source.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A JSON error in `path`, keeping the parse error as the source.
    pub fn json(path: &std::path::Path, source: serde_json::Error) -> Self {
        Error::Json {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
