//! Shared fixtures: tiny random BERTs with the real tokenizer, real tasks cut to a few records.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prefine_model::peft::{save_adapter, PeftTaskType};
use prefine_model::{seed_rng, Encoder, EncoderConfig, LoraConfig};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn real_model() -> PathBuf {
    let d = std::env::var_os("PREFINE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/all-MiniLM-L6-v2"));
    assert!(
        d.join("tokenizer.json").exists(),
        "run scripts/setup.sh first ({})",
        d.display()
    );
    d
}

pub fn shared_data() -> PathBuf {
    let d = std::env::var_os("PREFINE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    assert!(
        d.join("ner").is_dir(),
        "shared data missing at {}",
        d.display()
    );
    d
}

/// Copies the first `n` records of each split of a real task into `dst`.
pub fn cut_task(family: &str, task: &str, n: usize, dst: &Path) {
    let src = shared_data().join(family).join(task);
    let dir = dst.join(family).join(task);
    std::fs::create_dir_all(&dir).unwrap();
    for split in ["train", "dev", "test"] {
        let ext = if family == "ner" { "conll" } else { "jsonl" };
        let name = format!("{split}.{ext}");
        let text = std::fs::read_to_string(src.join(&name)).unwrap();
        let cut = if family == "ner" {
            let s: Vec<&str> = text
                .split("\n\n")
                .filter(|s| !s.trim().is_empty())
                .take(n)
                .collect();
            s.join("\n\n") + "\n"
        } else {
            let l: Vec<&str> = text.lines().take(n).collect();
            l.join("\n") + "\n"
        };
        std::fs::write(dir.join(name), cut).unwrap();
    }
}

/// A tiny random BERT with the real tokenizer; with `ner_adapter`, laid out as a TPL output.
pub fn tiny_variant(dir: &Path, seed: u64, ner_adapter: bool) {
    let mut rng = seed_rng(seed);
    let mut enc = Encoder::random(EncoderConfig::tiny_bert_with_vocab(30522), &mut rng).unwrap();
    if !ner_adapter {
        enc.save_pretrained(dir, Some(&real_model())).unwrap();
        return;
    }
    let backbone = dir.join("backbone");
    enc.save_pretrained(&backbone, Some(&real_model())).unwrap();
    let cfg = LoraConfig {
        rank: 2,
        ..Default::default()
    };
    enc.add_lora_group("ner", &cfg, &mut rng).unwrap();
    save_adapter(
        &enc,
        "ner",
        PeftTaskType::FeatureExtraction,
        &BTreeMap::new(),
        &backbone.display().to_string(),
        &dir.join("adapters").join("ner"),
    )
    .unwrap();
}
