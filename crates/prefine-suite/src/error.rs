//! The error type of `prefine-suite`.

/// Everything that can stop the suite as a whole (a failing cell is recorded, not raised).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid suite configuration.
    #[error("invalid suite configuration: {field}: {reason}")]
    Config {
        /// The offending key (with file and line where known).
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file could not be read, written or parsed (the underlying error is the source).
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A training or pre-finetuning error.
    #[error(transparent)]
    Train(#[from] prefine_train::Error),
    /// A data-root error.
    #[error(transparent)]
    Data(#[from] prefine_data::Error),
    /// A model error.
    #[error(transparent)]
    Model(#[from] prefine_model::Error),
    /// A chart could not be drawn.
    #[error("chart {}", path.display())]
    Chart {
        /// The chart file.
        path: std::path::PathBuf,
        /// The plotting or PNG library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// A file error that keeps its cause as the source (I/O, JSON, ...).
    pub fn file(path: &std::path::Path, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source: Box::new(e),
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;
