//! Fixtures: a tiny random backbone with the real tokenizer, and adapter directories in the
//! `prefine finetune` format with random (non-zero) LoRA pairs and heads.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use prefine_data::LabelSet;
use prefine_model::params::normal;
use prefine_model::peft::{save_adapter, PeftTaskType};
use prefine_model::weights::save_safetensors;
use prefine_model::{seed_rng, Encoder, EncoderConfig, LoraConfig, LoraTarget};
use prefine_train::finetune::artifact::ArtifactManifest;
use prefine_train::finetune::{Mode, TaskKind, TcPooling};

/// `models/all-MiniLM-L6-v2`, installed by `scripts/setup.sh` (which the test command runs
/// first). A missing model is a failure, never a skip.
pub fn real_model_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("tokenizer.json").is_file() && dir.join("model.safetensors").is_file(),
        "{} is missing: run ./scripts/setup.sh",
        dir.display()
    );
    dir
}

/// A random 2-layer, 16-wide BERT with the real vocabulary, saved (with the real tokenizer)
/// into `dir`.
pub fn tiny_model(dir: &Path) -> Encoder {
    let mut rng = seed_rng(11);
    let enc = Encoder::random(EncoderConfig::tiny_bert_with_vocab(30522), &mut rng).unwrap();
    enc.save_pretrained(dir, Some(&real_model_dir())).unwrap();
    enc
}

/// The kinds of adapter the fixtures write.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub task: TaskKind,
    pub lora: bool,
    pub pooling: TcPooling,
    pub max_length: usize,
    pub stride: usize,
    pub seed: u64,
}

impl Spec {
    pub fn ner(lora: bool, seed: u64) -> Self {
        Self {
            task: TaskKind::Ner,
            lora,
            pooling: TcPooling::Mean,
            max_length: 16,
            stride: 4,
            seed,
        }
    }
    pub fn tc(lora: bool, seed: u64) -> Self {
        Self {
            task: TaskKind::Tc,
            lora,
            pooling: TcPooling::Mean,
            max_length: 16,
            stride: 4,
            seed,
        }
    }
}

pub fn labels(task: TaskKind) -> LabelSet {
    let l: &[&str] = match task {
        TaskKind::Ner => &["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
        TaskKind::Tc => &["negative", "neutral", "positive"],
    };
    LabelSet::from_ordered(l.iter().map(|s| s.to_string()).collect()).unwrap()
}

/// Writes an adapter directory for `base` (loaded from `base_dir`) into `out`.
pub fn write_adapter(base: &Encoder, base_dir: &Path, out: &Path, spec: Spec) {
    std::fs::create_dir_all(out).unwrap();
    let mut rng = seed_rng(spec.seed);
    let labels = labels(spec.task);
    let h = base.hidden_size();
    let mut head = BTreeMap::new();
    head.insert(
        "classifier.weight".to_string(),
        normal(labels.len(), h, 1.0, &mut rng).unwrap(),
    );
    head.insert(
        "classifier.bias".to_string(),
        normal(1, labels.len(), 0.5, &mut rng)
            .unwrap()
            .squeeze(0)
            .unwrap(),
    );
    if spec.pooling == TcPooling::Pooler {
        head.insert(
            "pooler.dense.weight".into(),
            normal(h, h, 0.1, &mut rng).unwrap(),
        );
        head.insert(
            "pooler.dense.bias".into(),
            Tensor::zeros(h, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
    }
    if spec.lora {
        let mut enc = base.clone();
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec![LoraTarget::Query, LoraTarget::Value, LoraTarget::Output],
            ..Default::default()
        };
        enc.add_lora_group("app", &cfg, &mut rng).unwrap();
        for block in &mut enc.blocks {
            for lin in block.linears.values_mut() {
                if let Some(pair) = lin.loras.get_mut("app") {
                    let (o, r) = pair.b.var().dims2().unwrap();
                    pair.b.set(&normal(o, r, 0.3, &mut rng).unwrap()).unwrap();
                }
            }
        }
        let tt = match spec.task {
            TaskKind::Ner => PeftTaskType::TokenCls,
            TaskKind::Tc => PeftTaskType::SeqCls,
        };
        save_adapter(&enc, "app", tt, &head, &base_dir.display().to_string(), out).unwrap();
    }
    save_safetensors(&out.join("head.safetensors"), &head).unwrap();
    std::fs::write(
        out.join("labels.json"),
        serde_json::to_vec(&labels).unwrap(),
    )
    .unwrap();
    let manifest = ArtifactManifest {
        format: "prefine-adapter".into(),
        version: 1,
        task: spec.task,
        mode: if spec.lora { Mode::Lora } else { Mode::Head },
        base_model: base_dir.to_path_buf(),
        has_lora: spec.lora,
        pooling: spec.pooling,
        max_length: spec.max_length,
        stride: spec.stride,
    };
    std::fs::write(
        out.join("adapter.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

/// Compares two JSON values: numbers within `tol`, everything else exactly.
pub fn json_close(a: &serde_json::Value, b: &serde_json::Value, tol: f64) -> Result<(), String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() <= tol {
                Ok(())
            } else {
                Err(format!("{x} vs {y}"))
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_close(p, q, tol).map_err(|e| format!("[{i}] {e}"))?;
            }
            Ok(())
        }
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
            for (k, p) in x {
                let q = y.get(k).ok_or_else(|| format!("missing key {k}"))?;
                json_close(p, q, tol).map_err(|e| format!(".{k} {e}"))?;
            }
            Ok(())
        }
        _ if a == b => Ok(()),
        _ => Err(format!("{a} vs {b}")),
    }
}

/// Texts for the tests: short, long (windowed for NER with max_length 16, truncated for TC).
pub fn texts() -> Vec<String> {
    vec![
        "Barack Obama visited Paris in 2015.".to_string(),
        "Angela Merkel met Emmanuel Macron in Berlin and later flew to Rome, Madrid and Lisbon for talks with the prime ministers of Italy, Spain and Portugal.".to_string(),
        "ok".to_string(),
        "Ünïcödé naïve café — 東京 visited by José.".to_string(),
    ]
}
