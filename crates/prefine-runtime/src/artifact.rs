//! The adapter formats the runtime reads: a `prefine finetune` output (`adapter.json`,
//! `labels.json`, `head.safetensors`, optional PEFT LoRA files) or a bare PEFT LoRA adapter with
//! a `labels.json`, from a directory or from files held in memory.
//!
//! ```text
//! adapter.json                 what this is: task, mode, base model, pooling, windows
//! labels.json                  the label list (index = class id)
//! head.safetensors             classifier (+ pooler) with HF names
//! adapter_config.json          PEFT LoRA adapter (lora mode, or head mode on an init adapter),
//! adapter_model.safetensors      head included as PEFT `modules_to_save`
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use prefine_data::LabelSet;
use prefine_model::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use prefine_model::weights::load_safetensors_bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::head::TaskHead;

/// The file name of the manifest of a `prefine finetune` output.
pub const MANIFEST_FILE: &str = "adapter.json";
/// The label list of an adapter.
pub const LABELS_FILE: &str = "labels.json";
/// The head tensors of a `prefine finetune` output.
pub const HEAD_FILE: &str = "head.safetensors";

pub use crate::task::{Mode, TaskKind, TcPooling};

/// `adapter.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactManifest {
    /// Always `prefine-adapter`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Task family.
    pub task: TaskKind,
    /// How it was trained.
    pub mode: Mode,
    /// The backbone directory it was trained on.
    pub base_model: PathBuf,
    /// Whether a LoRA group is part of the artifact.
    pub has_lora: bool,
    /// TC pooling.
    pub pooling: TcPooling,
    /// Window length (subwords).
    pub max_length: usize,
    /// Window overlap (subwords).
    pub stride: usize,
}

/// Window length and overlap given to PEFT adapters, which do not record them (the
/// `prefine finetune` defaults).
pub const PEFT_MAX_LENGTH: usize = 128;
/// See [`PEFT_MAX_LENGTH`].
pub const PEFT_STRIDE: usize = 32;

/// The files of one adapter, by file name, read from a directory or handed in as bytes (an
/// app's bundled assets, a `fetch` in the browser, a buffer across the C ABI). `origin` names
/// the adapter in error messages (its directory, or a label for in-memory files).
#[derive(Debug, Clone, Default)]
pub struct AdapterFiles {
    /// Where the files come from (used in messages only).
    pub origin: PathBuf,
    /// File name -> contents.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// The file names an adapter may consist of.
pub const ADAPTER_FILE_NAMES: [&str; 5] = [
    MANIFEST_FILE,
    LABELS_FILE,
    HEAD_FILE,
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
];

impl AdapterFiles {
    /// Reads the adapter files present in `dir`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Adapter {
                path: dir.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        if !dir.join(ADAPTER_WEIGHTS).exists() && dir.join("adapter_model.bin").exists() {
            return Err(Error::Adapter {
                path: dir.join(ADAPTER_WEIGHTS),
                reason: "only safetensors adapters are supported (found adapter_model.bin)".into(),
            });
        }
        let mut files = BTreeMap::new();
        for name in ADAPTER_FILE_NAMES {
            let p = dir.join(name);
            if p.is_file() {
                let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                files.insert(name.to_string(), bytes);
            }
        }
        Ok(Self {
            origin: dir.to_path_buf(),
            files,
        })
    }

    /// In-memory files; `origin` labels them in messages.
    pub fn from_memory(origin: impl Into<PathBuf>, files: BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            origin: origin.into(),
            files,
        }
    }

    /// The path a file would have (for messages).
    pub fn path(&self, name: &str) -> PathBuf {
        self.origin.join(name)
    }

    /// A file's bytes, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&[u8]> {
        self.files
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| Error::file(self.path(name), "missing"))
    }

    /// Whether the file is present.
    pub fn has(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// A JSON file parsed, or an error naming it.
    pub fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        serde_json::from_slice(self.get(name)?).map_err(|e| Error::file(self.path(name), e))
    }

    /// Whether these are the files of a `prefine finetune` output (else a bare PEFT adapter).
    pub fn is_finetune_output(&self) -> bool {
        self.has(MANIFEST_FILE)
    }

    /// Checks that the files are an adapter of one of the two formats.
    pub fn check_format(&self) -> Result<()> {
        if self.has(MANIFEST_FILE) || self.has(ADAPTER_CONFIG) {
            Ok(())
        } else {
            Err(Error::Adapter {
                path: self.origin.clone(),
                reason: "neither adapter.json (prefine finetune output) nor adapter_config.json \
                         (PEFT adapter) found"
                    .into(),
            })
        }
    }
}

/// The parts of a `prefine finetune` output read and checked (without touching any encoder).
#[derive(Debug, Clone)]
pub struct AdapterParts {
    /// `adapter.json` (synthesised for a bare PEFT adapter).
    pub manifest: ArtifactManifest,
    /// The class labels.
    pub labels: LabelSet,
    /// The head.
    pub head: TaskHead,
}

/// Reads `adapter.json`, `labels.json` and `head.safetensors` of a `prefine finetune` output
/// (a `full` one is refused: it has its own backbone).
pub fn read_finetune_parts(files: &AdapterFiles) -> Result<AdapterParts> {
    read_finetune_parts_with(files, false)
}

/// [`read_finetune_parts`]; `own_backbone` accepts a `full` output, for an engine whose
/// backbone is that output's `model/`.
pub fn read_finetune_parts_with(files: &AdapterFiles, own_backbone: bool) -> Result<AdapterParts> {
    let manifest: ArtifactManifest = files.json(MANIFEST_FILE)?;
    if manifest.mode == Mode::Full && !own_backbone {
        return Err(Error::Adapter {
            path: files.origin.clone(),
            reason: "a `full` fine-tuning output has its own backbone and cannot share this one; \
                     serve it with --model DIR/model"
                .into(),
        });
    }
    let labels: LabelSet = files.json(LABELS_FILE)?;
    let hpath = files.path(HEAD_FILE);
    let head_tensors = load_safetensors_bytes(files.get(HEAD_FILE)?, &hpath)?
        .into_iter()
        .collect();
    let head = TaskHead::from_tensors(manifest.task, &head_tensors, manifest.pooling, &hpath)?;
    check_classes(&head, &labels, &files.path(LABELS_FILE))?;
    Ok(AdapterParts {
        manifest,
        labels,
        head,
    })
}

/// Reads a `prefine finetune` output directory's parts (see [`read_finetune_parts`]).
pub fn read_adapter_dir(dir: &Path) -> Result<AdapterParts> {
    read_finetune_parts(&AdapterFiles::read_dir(dir)?)
}

/// Checks that the head has one class per label.
pub fn check_classes(head: &TaskHead, labels: &LabelSet, lpath: &Path) -> Result<()> {
    let classes = head.num_classes();
    if classes != labels.len() {
        return Err(Error::file(
            lpath,
            format!("{} labels but the head has {classes} classes", labels.len()),
        ));
    }
    Ok(())
}

/// The manifest given to a bare PEFT adapter (`TOKEN_CLS` / `SEQ_CLS` through the pooler).
pub fn peft_manifest(task: TaskKind, origin: &Path) -> ArtifactManifest {
    ArtifactManifest {
        format: "peft".into(),
        version: 1,
        task,
        mode: Mode::Lora,
        base_model: origin.to_path_buf(),
        has_lora: true,
        pooling: TcPooling::Pooler,
        max_length: PEFT_MAX_LENGTH,
        stride: PEFT_STRIDE,
    }
}

/// PEFT keeps `modules_to_save` under `<module>.modules_to_save.default.`; this strips it.
pub fn peft_head_tensors(extra: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    extra
        .into_iter()
        .map(|(k, v)| (k.replace(".modules_to_save.default.", "."), v))
        .collect()
}
