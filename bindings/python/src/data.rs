//! Training data given as Python objects: a directory path, or splits of rows as a `datasets`
//! `DatasetDict` gives them (`{"train": [...], "validation": [...], "test": [...]}`; rows
//! `{"tokens", "ner_tags"}` for NER, `{"text", "label"}` for TC). Rows are written to a
//! temporary task directory in the formats the readers take (CoNLL, JSONL) and read by the same
//! code as files; reader errors are mapped back to the split and row.
//!
//! Tags and labels are strings, or ints with `label_names` (index = id, as
//! `dataset.features["ner_tags"].feature.names` or `features["label"].names` give them); int
//! TC labels without `label_names` are taken as their decimal spelling, as in JSONL files.

use std::io::Write;
use std::path::{Path, PathBuf};

use prefine_train::finetune::TaskKind;
use pyo3::prelude::*;
use pyo3::types::{PyMapping, PyString};

use crate::errors::{data_error, row_error, train_error};

/// One split written from Python rows.
pub struct WrittenSplit {
    /// The key of the split in the Python object.
    key: String,
    /// The file written.
    path: PathBuf,
    /// For each line of the file (0-based), the row it came from.
    row_of_line: Vec<usize>,
}

/// Where training data comes from.
pub enum TrainingData {
    /// A task directory (train/dev/test files).
    Dir(PathBuf),
    /// Python rows written to a temporary task directory.
    Rows {
        dir: tempfile::TempDir,
        splits: Vec<WrittenSplit>,
    },
}

impl TrainingData {
    /// The task directory to read.
    pub fn dir(&self) -> &Path {
        match self {
            TrainingData::Dir(d) => d,
            TrainingData::Rows { dir, .. } => dir.path(),
        }
    }

    /// The exception for a training error, with reader errors in written files mapped back to
    /// the split and row.
    pub fn error(&self, py: Python<'_>, e: &prefine_train::Error) -> PyErr {
        use prefine_data::Error as D;
        let TrainingData::Rows { splits, .. } = self else {
            return train_error(py, e);
        };
        let prefine_train::Error::Dataset(d) = e else {
            return train_error(py, e);
        };
        let (path, line, message) = match d {
            D::Parse {
                path,
                line,
                message,
            } => (path, Some(*line), message),
            D::File { path, message } => (path, None, message),
            _ => return data_error(py, d),
        };
        let Some(s) = splits.iter().find(|s| &s.path == path) else {
            return data_error(py, d);
        };
        let row = line.and_then(|l| s.row_of_line.get(l.saturating_sub(1)).copied());
        let at = match row {
            Some(r) => format!("data[{:?}][{r}]", s.key),
            None => format!("data[{:?}]", s.key),
        };
        row_error(py, &s.key, row, format!("{at}: {message}"))
    }
}

/// The splits read from a Python mapping: (file stem the trainer reads, accepted keys).
const SPLITS: [(&str, &[&str], bool); 3] = [
    ("train", &["train"], true),
    ("dev", &["dev", "validation"], true),
    ("test", &["test"], false),
];

/// Reads `data`: a path (str or os.PathLike), or a mapping of splits to rows.
pub fn training_data(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    task: TaskKind,
    label_names: Option<&[String]>,
) -> PyResult<TrainingData> {
    if data.is_instance_of::<PyString>() || data.hasattr("__fspath__")? {
        if label_names.is_some() {
            return Err(crate::errors::config_error(
                py,
                "label_names",
                "label_names: only for data given as Python rows (files hold tag and label names)"
                    .into(),
            ));
        }
        return Ok(TrainingData::Dir(data.extract()?));
    }
    let Ok(map) = data.cast::<PyMapping>() else {
        return Err(row_error(
            py,
            "",
            None,
            "data: a directory path, or a mapping of splits to rows ({\"train\": [...], \"validation\": [...], \"test\": [...]})".into(),
        ));
    };
    let dir = tempfile::Builder::new()
        .prefix("prefine-data-")
        .tempdir()
        .map_err(|e| crate::errors::FileError::new_err(format!("temporary data directory: {e}")))?;
    let mut splits = Vec::new();
    for (stem, keys, required) in SPLITS {
        let mut found = None;
        for k in keys {
            if map.contains(*k)? {
                found = Some((k.to_string(), map.get_item(*k)?));
                break;
            }
        }
        let Some((key, rows)) = found else {
            if required {
                return Err(row_error(
                    py,
                    stem,
                    None,
                    format!(
                        "data: no {} split",
                        keys.iter()
                            .map(|k| format!("{k:?}"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                ));
            }
            continue;
        };
        let ext = match task {
            TaskKind::Ner => "conll",
            TaskKind::Tc => "jsonl",
        };
        let path = dir.path().join(format!("{stem}.{ext}"));
        let row_of_line = match task {
            TaskKind::Ner => write_ner(py, &key, &rows, label_names, &path)?,
            TaskKind::Tc => write_tc(py, &key, &rows, label_names, &path)?,
        };
        splits.push(WrittenSplit {
            key,
            path,
            row_of_line,
        });
    }
    Ok(TrainingData::Rows { dir, splits })
}

/// A field of a row (a mapping).
fn field<'py>(
    py: Python<'py>,
    key: &str,
    i: usize,
    row: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    row.get_item(name).map_err(|_| {
        row_error(
            py,
            key,
            Some(i),
            format!("data[{key:?}][{i}]: no {name:?} field"),
        )
    })
}

/// A tag or label: a str, or an int looked up in `names`.
fn name_of(
    py: Python<'_>,
    key: &str,
    i: usize,
    v: &Bound<'_, PyAny>,
    names: Option<&[String]>,
    what: &str,
    ints_as_text: bool,
) -> PyResult<String> {
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned());
    }
    let bad = |msg: String| row_error(py, key, Some(i), format!("data[{key:?}][{i}]: {msg}"));
    let Ok(id) = v.extract::<i64>() else {
        return Err(bad(format!("{what} must be a str or an int")));
    };
    match names {
        Some(n) => usize::try_from(id)
            .ok()
            .and_then(|k| n.get(k))
            .cloned()
            .ok_or_else(|| bad(format!("{what} {id} is not an index of label_names ({} names)", n.len()))),
        None if ints_as_text => Ok(id.to_string()),
        None => Err(bad(format!(
            "{what} {id} is an int: pass label_names=[...] (e.g. dataset.features[\"ner_tags\"].feature.names)"
        ))),
    }
}

fn create(path: &Path) -> PyResult<std::io::BufWriter<std::fs::File>> {
    std::fs::File::create(path)
        .map(std::io::BufWriter::new)
        .map_err(|e| crate::errors::FileError::new_err(format!("{}: {e}", path.display())))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> PyErr + '_ {
    move |e| crate::errors::FileError::new_err(format!("{}: {e}", path.display()))
}

/// Writes NER rows as CoNLL (`token<TAB>tag`, a blank line after each sentence).
fn write_ner(
    py: Python<'_>,
    key: &str,
    rows: &Bound<'_, PyAny>,
    names: Option<&[String]>,
    path: &Path,
) -> PyResult<Vec<usize>> {
    let mut f = create(path)?;
    let mut row_of_line = Vec::new();
    for (i, row) in rows.try_iter()?.enumerate() {
        let row = row?;
        let bad = |msg: String| row_error(py, key, Some(i), format!("data[{key:?}][{i}]: {msg}"));
        let tokens: Vec<String> = field(py, key, i, &row, "tokens")?
            .extract()
            .map_err(|_| bad("\"tokens\" must be a list of str".into()))?;
        let tags = field(py, key, i, &row, "ner_tags")?;
        let tags: Vec<String> = tags
            .try_iter()
            .map_err(|_| bad("\"ner_tags\" must be a list".into()))?
            .map(|t| name_of(py, key, i, &t?, names, "tag", false))
            .collect::<PyResult<_>>()?;
        if tokens.len() != tags.len() {
            return Err(bad(format!(
                "{} tokens but {} ner_tags",
                tokens.len(),
                tags.len()
            )));
        }
        if tokens.is_empty() {
            continue;
        }
        for (t, tag) in tokens.iter().zip(&tags) {
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                return Err(bad(format!("token {t:?} is empty or contains whitespace")));
            }
            writeln!(f, "{t}\t{tag}").map_err(io_err(path))?;
            row_of_line.push(i);
        }
        writeln!(f).map_err(io_err(path))?;
        row_of_line.push(i);
    }
    f.flush().map_err(io_err(path))?;
    Ok(row_of_line)
}

/// Writes TC rows as JSON lines (`{"text", "label"}`).
fn write_tc(
    py: Python<'_>,
    key: &str,
    rows: &Bound<'_, PyAny>,
    names: Option<&[String]>,
    path: &Path,
) -> PyResult<Vec<usize>> {
    let mut f = create(path)?;
    let mut row_of_line = Vec::new();
    for (i, row) in rows.try_iter()?.enumerate() {
        let row = row?;
        let text: String = field(py, key, i, &row, "text")?.extract().map_err(|_| {
            row_error(
                py,
                key,
                Some(i),
                format!("data[{key:?}][{i}]: \"text\" must be a str"),
            )
        })?;
        let label = name_of(
            py,
            key,
            i,
            &field(py, key, i, &row, "label")?,
            names,
            "label",
            true,
        )?;
        let line = serde_json::json!({"text": text, "label": label});
        writeln!(f, "{line}").map_err(io_err(path))?;
        row_of_line.push(i);
    }
    f.flush().map_err(io_err(path))?;
    Ok(row_of_line)
}
