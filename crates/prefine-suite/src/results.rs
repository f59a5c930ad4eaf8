//! `OUT/results.jsonl`: one JSON line per finished cell, appended (and synced) as soon as the
//! cell ends. The latest line of a cell wins; a torn last line (a crash mid-write) is skipped
//! with a warning.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The identity of a cell.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CellKey {
    /// Variant name.
    pub variant: String,
    /// `ner/<name>` or `tc/<name>`.
    pub task: String,
    /// Training fraction, as written in the config (`1.0`, `0.1`).
    pub fraction: String,
    /// Seed.
    pub seed: u64,
}

/// One line of `results.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// Variant name.
    pub variant: String,
    /// `ner/<name>` or `tc/<name>`.
    pub task: String,
    /// `ner` or `tc`.
    pub family: String,
    /// Training fraction.
    pub fraction: f64,
    /// Seed.
    pub seed: u64,
    /// Hash of everything the cell's result depends on (config, backbone and adapter weights,
    /// data files).
    pub hash: String,
    /// `ok` or `error`.
    pub status: String,
    /// `f1` (strict, NER) or `accuracy` (TC).
    pub metric: String,
    /// Test score (dev when there is no test split); null on error.
    pub score: Option<f64>,
    /// Dev score of the selected epoch.
    pub dev_score: Option<f64>,
    /// Downstream mode.
    pub mode: String,
    /// Wall seconds of the cell.
    pub seconds: f64,
    /// The error message of a failed cell.
    pub error: Option<String>,
    /// `metrics.json` of the run.
    pub metrics: Option<serde_json::Value>,
}

/// Formats a fraction the same way everywhere (`1.0`, `0.1`, `0.25`).
pub fn fraction_label(f: f64) -> String {
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

impl CellResult {
    /// The cell this line belongs to.
    pub fn key(&self) -> CellKey {
        CellKey {
            variant: self.variant.clone(),
            task: self.task.clone(),
            fraction: fraction_label(self.fraction),
            seed: self.seed,
        }
    }

    /// Whether the cell finished without error.
    pub fn ok(&self) -> bool {
        self.status == "ok" && self.score.is_some()
    }
}

/// Reads every line; the latest line per cell wins. Unparseable lines are skipped with a warning
/// naming the file and line.
pub fn read_results(path: &Path) -> Result<BTreeMap<CellKey, CellResult>> {
    let mut out = BTreeMap::new();
    if !path.exists() {
        return Ok(out);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<CellResult>(line) {
            Ok(r) => {
                out.insert(r.key(), r);
            }
            Err(e) => tracing::warn!(
                "{}:{}: skipping an unreadable result line ({e})",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// Appends one line and syncs it to disk. A torn previous line (no trailing newline) is closed
/// first so that the new line stays readable.
pub fn append_result(path: &Path, r: &CellResult) -> Result<()> {
    let needs_newline = std::fs::read(path)
        .map(|b| !b.is_empty() && b.last() != Some(&b'\n'))
        .unwrap_or(false);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::file(path, e))?;
    let mut line = serde_json::to_string(r).expect("serialisable");
    if needs_newline {
        line.insert(0, '\n');
    }
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_data())
        .map_err(|e| Error::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(variant: &str, seed: u64, score: f64) -> CellResult {
        CellResult {
            variant: variant.into(),
            task: "tc/x".into(),
            family: "tc".into(),
            fraction: 1.0,
            seed,
            hash: "h".into(),
            status: "ok".into(),
            metric: "accuracy".into(),
            score: Some(score),
            dev_score: Some(score),
            mode: "head".into(),
            seconds: 1.0,
            error: None,
            metrics: None,
        }
    }

    #[test]
    fn latest_line_wins_and_torn_lines_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("results.jsonl");
        append_result(&p, &line("a", 1, 0.5)).unwrap();
        // A crash mid-write leaves a torn line without newline.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"variant\":\"a\",\"ta").unwrap();
        append_result(&p, &line("a", 1, 0.7)).unwrap();
        append_result(&p, &line("b", 1, 0.6)).unwrap();
        let r = read_results(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[&line("a", 1, 0.0).key()].score, Some(0.7));
    }

    #[test]
    fn fraction_labels_are_stable() {
        assert_eq!(fraction_label(1.0), "1.0");
        assert_eq!(fraction_label(0.1), "0.1");
        assert_eq!(fraction_label(0.25), "0.25");
    }
}
