//! The error type of `prefine-serve`: the runtime's request and file errors, kept apart so
//! that each maps to its HTTP status, plus the server's own.

use std::path::PathBuf;

/// Everything that can go wrong while serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request names an adapter that is not registered (404).
    #[error("unknown adapter {0:?}")]
    UnknownAdapter(String),
    /// An adapter of that name is already registered (409).
    #[error("adapter {0:?} is already registered")]
    AdapterExists(String),
    /// A request that cannot be served as sent (400).
    #[error("{0}")]
    BadRequest(String),
    /// An adapter directory that cannot be used with the shared backbone (422).
    #[error("{path}: {reason}")]
    Adapter {
        /// The adapter directory or file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// An adapter the model crate refused to load (422; its error is the source).
    #[error("{}", path.display())]
    AdapterLoad {
        /// The adapter directory or file.
        path: PathBuf,
        /// The model crate's error.
        #[source]
        source: prefine_model::Error,
    },
    /// A file that cannot be read (422; the operating system's error is the source).
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file that is wrong or cannot be read (422).
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A malformed bundle (422).
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
    /// A weights or adapter-weights error from the model (422).
    #[error(transparent)]
    Model(prefine_model::Error),
    /// Any other runtime error (500).
    #[error(transparent)]
    Runtime(prefine_runtime::Error),
}

impl From<prefine_runtime::Error> for Error {
    fn from(e: prefine_runtime::Error) -> Self {
        use prefine_runtime::Error as R;
        match e {
            R::UnknownAdapter(n) => Self::UnknownAdapter(n),
            R::AdapterExists(n) => Self::AdapterExists(n),
            R::BadRequest(m) => Self::BadRequest(m),
            R::Adapter { path, reason } => Self::Adapter { path, reason },
            R::File { path, reason } => Self::File { path, reason },
            R::AdapterLoad { path, source } => Self::AdapterLoad { path, source },
            R::Io { path, source } => Self::Io { path, source },
            R::Bundle { path, reason } => Self::Bundle { path, reason },
            R::Model(m) => Self::Model(m),
            other => Self::Runtime(other),
        }
    }
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
