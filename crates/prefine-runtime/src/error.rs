//! The error type of `prefine-runtime`.

use std::path::PathBuf;

/// Everything that can go wrong while loading a backbone or adapters, or predicting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request names an adapter that is not registered.
    #[error("unknown adapter {0:?}")]
    UnknownAdapter(String),
    /// An adapter of that name is already registered.
    #[error("adapter {0:?} is already registered")]
    AdapterExists(String),
    /// A request that cannot be served as sent (empty text, bad name, ...).
    #[error("{0}")]
    BadRequest(String),
    /// An adapter that cannot be used with the shared backbone.
    #[error("{path}: {reason}")]
    Adapter {
        /// The adapter directory or file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// An adapter the model crate refused to load (its error is the source).
    #[error("{}", path.display())]
    AdapterLoad {
        /// The adapter directory or file.
        path: PathBuf,
        /// The model crate's error.
        #[source]
        source: prefine_model::Error,
    },
    /// A file whose contents are wrong (or missing from an in-memory adapter).
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A bundle that is malformed or fails its checksums.
    #[error("bundle {path}: {reason}")]
    Bundle {
        /// The bundle directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A forward pass failed.
    #[error("{0}")]
    Inference(String),
    /// An invalid setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An error from the model crate.
    #[error(transparent)]
    Model(#[from] prefine_model::Error),
    /// A tokenizer error.
    #[error(transparent)]
    Tokenize(#[from] prefine_tokenize::Error),
    /// A metrics error (zero-shot evaluation, entity decoding).
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

    /// An I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// An error and its chain of sources as one line (`outer: cause: root cause`), for boundaries
/// that hand a message to another language (C, JavaScript, Python, HTTP). A source whose text
/// the previous message already contains is not repeated.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        next = s.source();
    }
    out
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_walks_the_sources_without_repeating_them() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        // A variant that shows its source in its own text: not repeated.
        assert_eq!(report(&Error::io("a.bin", io())), "a.bin: no such file");
        // One that leaves it to the chain: appended.
        let e = Error::Model(prefine_model::Error::Json {
            path: "c.json".into(),
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        });
        assert_eq!(report(&e), "c.json: expected value at line 1 column 1");
    }
}
