//! The Python exceptions and the mapping of the Rust error enums onto them, variant by variant
//! (messages are the Rust ones, which name the file and line, the key or the adapter).
//!
//! ```text
//! PrefineError
//! ├── ConfigError    an invalid setting (`.key`)
//! ├── DataError      unusable training data (`.path` and `.line`, or `.split` and `.row`)
//! ├── AdapterError   an adapter that cannot be loaded, or an unknown adapter name
//! ├── ModelError     a backbone, bundle or tokenizer that cannot be loaded
//! ├── InputError     a request that cannot be served (empty text, bad name, ...)
//! ├── FileError      a file that cannot be read or written (`.path`)
//! └── TrainingError  a run that diverged (non-finite loss or gradient)
//! ```
//! Ctrl-C during training is `KeyboardInterrupt`, raised after the checkpoint is written.

use std::path::Path;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;

create_exception!(
    prefine,
    PrefineError,
    PyException,
    "Base class of every error raised by prefine."
);
create_exception!(
    prefine,
    ConfigError,
    PrefineError,
    "An invalid setting; `.key` names it."
);
create_exception!(
    prefine,
    DataError,
    PrefineError,
    "Unusable training or evaluation data; `.path` and `.line` (files) or `.split` and `.row` \
     (Python lists) say where."
);
create_exception!(
    prefine,
    AdapterError,
    PrefineError,
    "An adapter that cannot be loaded, or an unknown adapter name."
);
create_exception!(
    prefine,
    ModelError,
    PrefineError,
    "A backbone, bundle or tokenizer that cannot be loaded."
);
create_exception!(
    prefine,
    InputError,
    PrefineError,
    "A request that cannot be served as sent (empty text, bad adapter name, ...)."
);
create_exception!(
    prefine,
    FileError,
    PrefineError,
    "A file that cannot be read or written; `.path` names it."
);
create_exception!(
    prefine,
    TrainingError,
    PrefineError,
    "A training run that cannot go on (non-finite loss or gradient)."
);

/// What was being done when a runtime error happened: decides where errors of files, weights
/// and the tokenizer belong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    /// Loading the backbone.
    LoadBackbone,
    /// Loading an adapter.
    LoadAdapter,
    /// Predicting or embedding.
    Infer,
}

/// Sets attributes on a new exception; a failure to set one keeps the exception as it is.
fn with_attrs(py: Python<'_>, err: PyErr, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let value = err.value(py);
    for (k, v) in attrs {
        let _ = value.setattr(*k, v.bind(py));
    }
    err
}

fn path_obj(py: Python<'_>, p: &Path) -> Py<PyAny> {
    p.to_string_lossy()
        .into_owned()
        .into_pyobject(py)
        .map(|s| s.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}

fn int_obj(py: Python<'_>, n: usize) -> Py<PyAny> {
    n.into_pyobject(py)
        .map(|s| s.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}

/// A [`ConfigError`] with its `key`.
pub fn config_error(py: Python<'_>, key: &str, msg: String) -> PyErr {
    let key = key.into_pyobject(py).map(|s| s.into_any().unbind());
    let err = ConfigError::new_err(msg);
    match key {
        Ok(k) => with_attrs(py, err, &[("key", k)]),
        Err(_) => err,
    }
}

/// A [`DataError`] about row `row` of split `split` of Python data.
pub fn row_error(py: Python<'_>, split: &str, row: Option<usize>, msg: String) -> PyErr {
    let split_obj = split
        .into_pyobject(py)
        .map(|s| s.into_any().unbind())
        .unwrap_or_else(|_| py.None());
    let row_obj = row.map_or_else(|| py.None(), |r| int_obj(py, r));
    with_attrs(
        py,
        DataError::new_err(msg),
        &[("split", split_obj), ("row", row_obj)],
    )
}

/// The exception for an error of the dataset readers.
pub fn data_error(py: Python<'_>, e: &prefine_data::Error) -> PyErr {
    use prefine_data::Error as E;
    let msg = prefine_runtime::report(e);
    match e {
        E::Parse { path, line, .. } => with_attrs(
            py,
            DataError::new_err(msg),
            &[("path", path_obj(py, path)), ("line", int_obj(py, *line))],
        ),
        E::UnknownColumn { path, .. } => with_attrs(
            py,
            DataError::new_err(msg),
            &[("path", path_obj(py, path)), ("line", int_obj(py, 1))],
        ),
        E::Io { path, .. } | E::File { path, .. } => with_attrs(
            py,
            DataError::new_err(msg),
            &[("path", path_obj(py, path)), ("line", py.None())],
        ),
        E::DataRoot(_) => DataError::new_err(msg),
        E::InvalidArgument(_) => ConfigError::new_err(msg),
    }
}

/// The exception for an error of the inference runtime.
pub fn runtime_error(py: Python<'_>, e: &prefine_runtime::Error, doing: Doing) -> PyErr {
    use prefine_runtime::Error as E;
    let msg = prefine_runtime::report(e);
    // Where the errors of files, weights and the tokenizer belong.
    let of_files = |msg: String| match doing {
        Doing::LoadBackbone => ModelError::new_err(msg),
        Doing::LoadAdapter => AdapterError::new_err(msg),
        Doing::Infer => PrefineError::new_err(msg),
    };
    match e {
        E::UnknownAdapter(_) | E::AdapterExists(_) | E::Adapter { .. } | E::AdapterLoad { .. } => {
            AdapterError::new_err(msg)
        }
        E::BadRequest(_) => InputError::new_err(msg),
        E::File { .. } | E::Model(_) => of_files(msg),
        E::Tokenize(_) => match doing {
            Doing::Infer => InputError::new_err(msg),
            _ => of_files(msg),
        },
        E::Io { path, .. } => {
            with_attrs(py, FileError::new_err(msg), &[("path", path_obj(py, path))])
        }
        E::Bundle { .. } => ModelError::new_err(msg),
        E::Config(_) => ConfigError::new_err(msg),
        E::Inference(_) | E::Metrics(_) | E::Candle(_) => PrefineError::new_err(msg),
    }
}

/// The exception for an error of the training crate (`Interrupted` is `KeyboardInterrupt`).
pub fn train_error(py: Python<'_>, e: &prefine_train::Error) -> PyErr {
    use prefine_train::Error as E;
    let msg = prefine_runtime::report(e);
    match e {
        E::Config { field, .. } => config_error(py, field, msg),
        E::NonFinite { .. } => TrainingError::new_err(msg),
        E::Interrupted { step, checkpoint } => PyKeyboardInterrupt::new_err(format!(
            "interrupted at step {step}; checkpoint written under {} (continue with resume=True)",
            checkpoint.display()
        )),
        E::Data(_) => DataError::new_err(msg),
        E::File { path, .. }
        | E::Io { path, .. }
        | E::Json { path, .. }
        | E::Chart { path, .. } => {
            with_attrs(py, FileError::new_err(msg), &[("path", path_obj(py, path))])
        }
        E::Dataset(d) => data_error(py, d),
        E::Metrics(_) | E::Candle(_) => PrefineError::new_err(msg),
        E::Tokenize(_) | E::Model(_) => ModelError::new_err(msg),
        E::Runtime(r) => runtime_error(py, r, Doing::LoadAdapter),
    }
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("PrefineError", py.get_type::<PrefineError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("AdapterError", py.get_type::<AdapterError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("FileError", py.get_type::<FileError>())?;
    m.add("TrainingError", py.get_type::<TrainingError>())?;
    Ok(())
}
