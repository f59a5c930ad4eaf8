//! The error type of `prefine-data`.

use std::path::PathBuf;

/// Everything that can go wrong while locating or reading a dataset.
///
/// Every variant that concerns a file names it, and parse errors also give the 1-based line
/// number, so a message can be pasted straight into an editor's "go to line".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the file is malformed (bad tag, missing field, invalid JSON, non-UTF-8 bytes...).
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file that failed.
        path: PathBuf,
        /// 1-based line number of the offending line.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The file as a whole is unusable (empty, no sentences, no examples, no header row).
    #[error("{path}: {message}")]
    File {
        /// The file that failed.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A delimited file has no column with the requested name.
    #[error("{path}:1: no column named '{column}'; the header has: {}", header.join(", "))]
    UnknownColumn {
        /// The file that failed.
        path: PathBuf,
        /// The column that was asked for.
        column: String,
        /// The column names found in the header row.
        header: Vec<String>,
    },
    /// The data root or a task directory could not be found.
    #[error("data root: {0}")]
    DataRoot(String),
    /// A caller-supplied argument is out of range (e.g. a subsampling fraction).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// Builds a [`Error::Parse`] for `path` at 1-based `line`.
    pub(crate) fn parse(path: &std::path::Path, line: usize, message: impl Into<String>) -> Self {
        Error::Parse {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// Builds a [`Error::File`] for `path`.
    pub(crate) fn file(path: &std::path::Path, message: impl Into<String>) -> Self {
        Error::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// Builds a [`Error::Io`] for `path`.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
