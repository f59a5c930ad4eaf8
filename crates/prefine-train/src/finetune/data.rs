//! Locating and reading the train/dev/test files of a task directory.

use std::path::{Path, PathBuf};

use prefine_data::{read_conll, read_delimited, read_jsonl, ConllOptions, NerSentence, TcExample};

use super::config::TaskKind;
use crate::error::{Error, Result};

/// The examples of one split.
#[derive(Debug, Clone)]
pub enum SplitData {
    /// NER sentences (IOB2 tags).
    Ner(Vec<NerSentence>),
    /// TC examples.
    Tc(Vec<TcExample>),
}

impl SplitData {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            SplitData::Ner(v) => v.len(),
            SplitData::Tc(v) => v.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Finds `<dir>/<split>.<ext>` for the task's accepted extensions.
pub fn split_file(dir: &Path, task: TaskKind, split: &str) -> Result<PathBuf> {
    let exts: &[&str] = match task {
        TaskKind::Ner => &["conll", "txt", "bio", "iob"],
        TaskKind::Tc => &["jsonl", "csv", "tsv"],
    };
    for e in exts {
        let p = dir.join(format!("{split}.{e}"));
        if p.exists() {
            return Ok(p);
        }
    }
    Err(Error::File {
        path: dir.to_path_buf(),
        reason: format!(
            "no {split} file ({})",
            exts.iter()
                .map(|e| format!("{split}.{e}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Reads one data file of the task (format from the extension; CSV/TSV need `text` and `label`
/// columns).
pub fn read_file(
    path: &Path,
    task: TaskKind,
    repair_iob: bool,
    scheme: prefine_data::TagScheme,
) -> Result<SplitData> {
    Ok(match task {
        TaskKind::Ner => {
            let opts = ConllOptions {
                repair: repair_iob,
                scheme,
            };
            SplitData::Ner(read_conll(path, &opts)?.sentences)
        }
        TaskKind::Tc => {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            SplitData::Tc(match ext {
                "csv" => read_delimited(path, b',', "text", "label")?,
                "tsv" => read_delimited(path, b'\t', "text", "label")?,
                _ => read_jsonl(path)?,
            })
        }
    })
}
