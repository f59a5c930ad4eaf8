//! Shared helpers of the integration tests: the default model, slices of the shared data, and
//! small in-memory pre-finetuning pools.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use prefine_data::{NerSentence, TcExample};
use prefine_train::pretrain::ner_objective::{NerPool, Source};
use prefine_train::pretrain::tc_objective::TcPool;
use prefine_train::pretrain::{PretrainConfig, Strategy};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn model_dir() -> PathBuf {
    let d = std::env::var_os("PREFINE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/all-MiniLM-L6-v2"));
    assert!(
        d.join("model.safetensors").exists(),
        "run scripts/setup.sh first ({})",
        d.display()
    );
    d
}

pub fn data_root() -> PathBuf {
    let d = std::env::var_os("PREFINE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    assert!(
        d.join("manifest.json").exists(),
        "shared data missing at {}",
        d.display()
    );
    d
}

/// Copies the first `n` CoNLL sentences of each split into a temporary task directory.
pub fn ner_slice(dir: &Path, task: &str, n: usize) {
    for split in ["train", "dev", "test"] {
        let text = std::fs::read_to_string(
            data_root()
                .join("ner")
                .join(task)
                .join(format!("{split}.conll")),
        )
        .unwrap();
        let sents: Vec<&str> = text
            .split("\n\n")
            .filter(|s| !s.trim().is_empty())
            .take(n)
            .collect();
        std::fs::write(
            dir.join(format!("{split}.conll")),
            sents.join("\n\n") + "\n",
        )
        .unwrap();
    }
}

/// Copies the first `n` JSONL lines of each split.
pub fn tc_slice(dir: &Path, task: &str, n: usize) {
    for split in ["train", "dev", "test"] {
        let text = std::fs::read_to_string(
            data_root()
                .join("tc")
                .join(task)
                .join(format!("{split}.jsonl")),
        )
        .unwrap();
        let lines: Vec<&str> = text.lines().take(n).collect();
        std::fs::write(dir.join(format!("{split}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
}

pub fn sent(words: &str, tags: &str) -> NerSentence {
    NerSentence {
        tokens: words.split(' ').map(str::to_string).collect(),
        tags: tags.split(' ').map(str::to_string).collect(),
    }
}

pub fn ner_pool() -> NerPool {
    let sentences = vec![
        sent("Barack Obama visited Paris", "B-PER I-PER O B-LOC"),
        sent(
            "Angela Merkel met Macron in Berlin",
            "B-PER I-PER O B-PER O B-LOC",
        ),
        sent("The p53 protein binds DNA", "O B-GENE O O O"),
        sent("Mutations in BRCA1 cause cancer", "O O B-GENE O O"),
    ];
    let src = |name: &str, range, types: &[&str]| Source {
        name: name.into(),
        range,
        types: types.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>(),
    };
    let mut concept_names = BTreeMap::new();
    concept_names.insert("PER".to_string(), "person".to_string());
    concept_names.insert("LOC".to_string(), "location".to_string());
    concept_names.insert("GENE".to_string(), "gene".to_string());
    NerPool {
        sentences,
        source_of: vec![0, 0, 1, 1],
        sources: vec![
            src("news", (0, 2), &["PER", "LOC"]),
            src("bio", (2, 4), &["GENE"]),
        ],
        concept_names,
    }
}

pub fn tc_pool() -> TcPool {
    let pairs = vec![
        (
            "stocks fall sharply".to_string(),
            "markets drop as shares slide".to_string(),
        ),
        (
            "team wins the final".to_string(),
            "the club lifts the trophy".to_string(),
        ),
        (
            "new phone released".to_string(),
            "the company launches a smartphone".to_string(),
        ),
        (
            "heavy rain expected".to_string(),
            "storms forecast for the weekend".to_string(),
        ),
    ];
    let labelled: Vec<TcExample> = [
        ("good movie", "s:pos"),
        ("great film", "s:pos"),
        ("bad plot", "s:neg"),
        ("awful acting", "s:neg"),
    ]
    .iter()
    .map(|(t, l)| TcExample {
        text: t.to_string(),
        label: l.to_string(),
    })
    .collect();
    let mut by_label: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, e) in labelled.iter().enumerate() {
        by_label.entry(e.label.clone()).or_default().push(i);
    }
    TcPool {
        pairs,
        labelled,
        by_label,
    }
}

/// A short pre-finetuning run on the small pools: batches of 4, no warm-up, no checkpoints.
pub fn pretrain_config(strategy: Strategy, steps: u64) -> PretrainConfig {
    PretrainConfig {
        max_steps: steps,
        ner_batch_size: 4,
        tc_batch_size: 4,
        lr: 1e-3,
        adapter_lr: 1e-2,
        warmup_ratio: 0.0,
        conflict_every: 0,
        checkpoint_every: 0,
        ..PretrainConfig::new(strategy)
    }
}
