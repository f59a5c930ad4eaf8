//! The output directory of `prefine finetune`, and loading it back.
//!
//! ```text
//! OUT/adapter.json                 what this is: task, mode, base model, pooling, windows
//! OUT/labels.json                  the label list (index = class id)
//! OUT/head.safetensors             classifier (+ pooler) with HF names
//! OUT/adapter_config.json          PEFT LoRA adapter (lora mode, or head mode on an init adapter),
//! OUT/adapter_model.safetensors      head included as PEFT `modules_to_save`
//! OUT/model/                       the whole fine-tuned backbone (full mode), HF layout
//! OUT/config.toml                  the resolved FinetuneConfig
//! OUT/metrics.json, log.jsonl, curves.svg
//! ```

use std::path::Path;

use prefine_data::LabelSet;
use prefine_model::peft::{load_adapter, save_adapter, PeftTaskType};
use prefine_model::weights::{load_safetensors, save_safetensors, write_atomic};
use prefine_model::Encoder;
use prefine_tokenize::{TextTokenizer, TokenizeConfig};
use serde::Serialize;

use super::config::{FinetuneConfig, Mode, TaskKind};
use super::model::{TaskModel, APP_GROUP};
use crate::error::{Error, Result};

pub use prefine_runtime::ArtifactManifest;

fn json_write<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(v).expect("serialisable");
    Ok(write_atomic(path, &text)?)
}

/// Writes everything but the metrics and logs.
pub fn save_artifact(
    out: &Path,
    model: &TaskModel,
    cfg: &FinetuneConfig,
    labels: &LabelSet,
    base_model: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let head = model.head_tensors();
    save_safetensors(&out.join("head.safetensors"), &head)?;
    if let Some(g) = &model.group {
        let tt = match cfg.task {
            TaskKind::Ner => PeftTaskType::TokenCls,
            TaskKind::Tc => PeftTaskType::SeqCls,
        };
        save_adapter(
            &model.encoder,
            g,
            tt,
            &head,
            &base_model.display().to_string(),
            out,
        )?;
    }
    if cfg.mode == Mode::Full {
        model
            .encoder
            .save_pretrained(&out.join("model"), Some(base_model))?;
    }
    json_write(&out.join("labels.json"), labels)?;
    write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let manifest = ArtifactManifest {
        format: "prefine-adapter".into(),
        version: 1,
        task: cfg.task,
        mode: cfg.mode,
        base_model: std::fs::canonicalize(base_model).unwrap_or_else(|_| base_model.to_path_buf()),
        has_lora: model.group.is_some(),
        pooling: cfg.pooling,
        max_length: cfg.max_length,
        stride: cfg.stride,
    };
    json_write(&out.join("adapter.json"), &manifest)
}

/// A loaded application: model, tokenizer and labels.
pub struct LoadedArtifact {
    /// The model, ready for evaluation.
    pub model: TaskModel,
    /// The tokenizer of its backbone.
    pub tokenizer: TextTokenizer,
    /// Class labels.
    pub labels: LabelSet,
    /// `adapter.json`.
    pub manifest: ArtifactManifest,
}

/// Loads `OUT` on top of `model_dir` (or the base model recorded in `adapter.json`).
pub fn load_artifact(adapter_dir: &Path, model_dir: Option<&Path>) -> Result<LoadedArtifact> {
    let mpath = adapter_dir.join("adapter.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
    let manifest: ArtifactManifest =
        serde_json::from_str(&text).map_err(|e| Error::json(&mpath, e))?;
    let lpath = adapter_dir.join("labels.json");
    let ltext = std::fs::read_to_string(&lpath).map_err(|e| Error::io(&lpath, e))?;
    let labels: LabelSet = serde_json::from_str(&ltext).map_err(|e| Error::json(&lpath, e))?;
    let base = if manifest.mode == Mode::Full {
        adapter_dir.join("model")
    } else {
        model_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| manifest.base_model.clone())
    };
    let (mut encoder, _) = Encoder::from_model_dir(&base)?;
    let mut group = None;
    if manifest.has_lora {
        load_adapter(&mut encoder, adapter_dir, APP_GROUP)?;
        group = Some(APP_GROUP.to_string());
    }
    let hpath = adapter_dir.join("head.safetensors");
    let head_tensors = load_safetensors(&hpath)?.into_iter().collect();
    let head =
        TaskModel::head_from_tensors(manifest.task, &head_tensors, manifest.pooling, &hpath)?;
    let model = TaskModel {
        encoder,
        head,
        group,
        cache: None,
    };
    if model.num_labels() != labels.len() {
        return Err(Error::File {
            path: lpath,
            reason: format!(
                "{} labels but the head has {} classes",
                labels.len(),
                model.num_labels()
            ),
        });
    }
    let tokenizer = TextTokenizer::from_model_dir(
        &base,
        TokenizeConfig {
            max_length: manifest.max_length,
            ..Default::default()
        },
    )?;
    Ok(LoadedArtifact {
        model,
        tokenizer,
        labels,
        manifest,
    })
}
