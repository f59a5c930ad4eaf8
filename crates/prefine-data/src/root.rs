//! Locating the shared data directory and the files of a task.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lines::read_bytes;

/// Environment variable that points at the data root when no explicit path is given.
pub const DATA_ENV: &str = "PREFINE_DATA";

/// The data root used when neither an explicit path nor [`DATA_ENV`] is given, relative to the
/// current directory.
pub const DEFAULT_DATA_ROOT: &str = "../shared/data";

/// The two task families of the data root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskFamily {
    /// Named-entity recognition: `ner/<name>/{train,dev,test}.conll`.
    Ner,
    /// Text classification: `tc/<name>/{train,dev,test}.jsonl`.
    Tc,
}

impl TaskFamily {
    /// The sub-directory of the data root holding this family.
    pub fn dir_name(self) -> &'static str {
        match self {
            TaskFamily::Ner => "ner",
            TaskFamily::Tc => "tc",
        }
    }

    /// The file extension of this family's split files.
    pub fn extension(self) -> &'static str {
        match self {
            TaskFamily::Ner => "conll",
            TaskFamily::Tc => "jsonl",
        }
    }
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training split.
    Train,
    /// The development (validation) split.
    Dev,
    /// The test split.
    Test,
}

impl Split {
    /// All splits, in train, dev, test order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    /// The split's file stem (`train`, `dev`, `test`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The files of one task. Paths are not checked for existence (the readers report missing files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPaths {
    /// The task's family.
    pub family: TaskFamily,
    /// The task's name (its directory name).
    pub name: String,
    /// The task's directory.
    pub dir: PathBuf,
    /// The training file.
    pub train: PathBuf,
    /// The development file.
    pub dev: PathBuf,
    /// The test file.
    pub test: PathBuf,
}

impl TaskPaths {
    /// The file of `split`.
    pub fn split(&self, split: Split) -> &Path {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }
}

/// One entry of the data root's `manifest.json` (only the fields prefine uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Task name.
    pub name: String,
    /// Family: `ner`, `tc`, `pretrain-ner` or `pretrain-tc`.
    pub family: String,
    /// Number of sentences / examples per split name.
    #[serde(default)]
    pub splits: BTreeMap<String, usize>,
    /// Label names (entity types for NER).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Reads a `manifest.json` (a JSON list of task entries).
pub fn read_manifest(path: impl AsRef<Path>) -> Result<Vec<ManifestEntry>> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("invalid manifest: {e}"),
    })
}

/// The directory holding the datasets (`ner/`, `tc/`, `manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRoot {
    root: PathBuf,
}

impl DataRoot {
    /// Uses `path` as the data root; it must be an existing directory.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self> {
        let root = path.into();
        if !root.is_dir() {
            return Err(Error::DataRoot(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(Self { root })
    }

    /// Finds the data root: `explicit` if given, else the `PREFINE_DATA` environment variable
    /// (when set and non-empty), else `../shared/data` relative to the current directory.
    /// The chosen directory must exist; the error says which source it came from.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        let env = std::env::var_os(DATA_ENV).filter(|v| !v.is_empty());
        let (path, source) = match (explicit, env) {
            (Some(p), _) => (p.to_path_buf(), "the explicit path".to_string()),
            (None, Some(v)) => (PathBuf::from(v), format!("${DATA_ENV}")),
            (None, None) => {
                let cwd = std::env::current_dir().map_err(|e| {
                    Error::DataRoot(format!("cannot read the current directory: {e}"))
                })?;
                (
                    cwd.join(DEFAULT_DATA_ROOT),
                    format!("the default {DEFAULT_DATA_ROOT} (set ${DATA_ENV} or pass a path)"),
                )
            }
        };
        if !path.is_dir() {
            return Err(Error::DataRoot(format!(
                "{} (from {source}) is not a directory",
                path.display()
            )));
        }
        Ok(Self { root: path })
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The path of `manifest.json`.
    pub fn manifest_path(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    /// Reads `manifest.json`.
    pub fn manifest(&self) -> Result<Vec<ManifestEntry>> {
        read_manifest(self.manifest_path())
    }

    /// The files of NER task `name` (`ner/<name>/{train,dev,test}.conll`).
    pub fn ner_task(&self, name: &str) -> Result<TaskPaths> {
        self.task(TaskFamily::Ner, name)
    }

    /// The files of text-classification task `name` (`tc/<name>/{train,dev,test}.jsonl`).
    pub fn tc_task(&self, name: &str) -> Result<TaskPaths> {
        self.task(TaskFamily::Tc, name)
    }

    /// The files of task `name` of `family`; the task directory must exist (the error lists the
    /// tasks that do).
    pub fn task(&self, family: TaskFamily, name: &str) -> Result<TaskPaths> {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(Error::DataRoot(format!("invalid task name '{name}'")));
        }
        let dir = self.root.join(family.dir_name()).join(name);
        if !dir.is_dir() {
            let known = self.tasks(family).unwrap_or_default();
            return Err(Error::DataRoot(format!(
                "no {} task '{name}' under {} (available: {})",
                family.dir_name(),
                self.root.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let file = |split: Split| dir.join(format!("{}.{}", split.name(), family.extension()));
        Ok(TaskPaths {
            family,
            name: name.to_string(),
            train: file(Split::Train),
            dev: file(Split::Dev),
            test: file(Split::Test),
            dir,
        })
    }

    /// The NER task names (directories under `ner/`), sorted.
    pub fn ner_tasks(&self) -> Result<Vec<String>> {
        self.tasks(TaskFamily::Ner)
    }

    /// The text-classification task names (directories under `tc/`), sorted.
    pub fn tc_tasks(&self) -> Result<Vec<String>> {
        self.tasks(TaskFamily::Tc)
    }

    /// The task names of `family` (directories under its folder), sorted; none if the folder
    /// is missing.
    pub fn tasks(&self, family: TaskFamily) -> Result<Vec<String>> {
        let dir = self.root.join(family.dir_name());
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            if entry.path().is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for p in ["ner/beta", "ner/alpha", "tc/sst"] {
            std::fs::create_dir_all(dir.path().join(p)).unwrap();
        }
        std::fs::write(dir.path().join("ner/README"), "not a task").unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"[{"name": "sst", "family": "tc", "splits": {"train": 2, "dev": 1, "test": 1}, "labels": ["a", "b"], "notes": "x"}]"#,
        )
        .unwrap();
        dir
    }

    #[test]
    fn lists_tasks_and_builds_paths() {
        let dir = make_root();
        let root = DataRoot::new(dir.path()).unwrap();
        assert_eq!(root.ner_tasks().unwrap(), ["alpha", "beta"]);
        assert_eq!(root.tc_tasks().unwrap(), ["sst"]);
        let t = root.tc_task("sst").unwrap();
        assert_eq!(t.dev, dir.path().join("tc/sst/dev.jsonl"));
        assert_eq!(t.split(Split::Test), dir.path().join("tc/sst/test.jsonl"));
        let n = root.ner_task("alpha").unwrap();
        assert_eq!(n.train, dir.path().join("ner/alpha/train.conll"));
        let m = root.manifest().unwrap();
        assert_eq!(m[0].splits["train"], 2);
        assert_eq!(m[0].labels, ["a", "b"]);
    }

    #[test]
    fn unknown_task_lists_available_ones() {
        let dir = make_root();
        let root = DataRoot::new(dir.path()).unwrap();
        let msg = root.ner_task("gamma").unwrap_err().to_string();
        assert!(
            msg.contains("'gamma'") && msg.contains("alpha, beta"),
            "{msg}"
        );
        assert!(root.ner_task("../tc").is_err());
    }

    #[test]
    fn explicit_path_wins_and_missing_root_is_an_error() {
        let dir = make_root();
        let root = DataRoot::resolve(Some(dir.path())).unwrap();
        assert_eq!(root.path(), dir.path());
        let msg = DataRoot::resolve(Some(Path::new("/nonexistent/data")))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/data"), "{msg}");
        assert!(DataRoot::new("/nonexistent/data").is_err());
    }

    #[test]
    fn bad_manifest_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.json");
        std::fs::write(&p, "[{\"name\": 1}]").unwrap();
        let msg = read_manifest(&p).unwrap_err().to_string();
        assert!(msg.contains("manifest.json:1:"), "{msg}");
    }
}
