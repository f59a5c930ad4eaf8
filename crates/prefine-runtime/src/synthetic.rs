//! Synthetic adapters for tests, demos and load tests: adapter directories in the
//! `prefine finetune` format whose LoRA pairs (non-zero `B`, unlike PEFT's init) and heads are
//! random, so that every adapter visibly changes the outputs. Not trained: the predictions mean
//! nothing.

use std::collections::BTreeMap;
use std::path::Path;

use crate::artifact::{ArtifactManifest, Mode, TaskKind, TcPooling};
use candle_core::{DType, Device, Tensor};
use prefine_data::LabelSet;
use prefine_model::params::normal;
use prefine_model::peft::{save_adapter, PeftTaskType};
use prefine_model::weights::{save_safetensors, write_atomic};
use prefine_model::{seed_rng, Encoder, EncoderConfig, LoraConfig, LoraTarget};

use crate::error::{Error, Result};

/// What kind of adapter to write.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticSpec {
    /// Task family.
    pub task: TaskKind,
    /// Whether it carries a LoRA group (rank 4 on query, value and output) or only a head.
    pub lora: bool,
    /// TC pooling (a random pooler is written for `Pooler`).
    pub pooling: TcPooling,
    /// Window / truncation length.
    pub max_length: usize,
    /// Window overlap.
    pub stride: usize,
    /// RNG seed of the weights.
    pub seed: u64,
}

impl SyntheticSpec {
    /// A NER adapter (labels `O`, `B/I-PER`, `B/I-LOC`), max length 16, stride 4.
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

    /// A TC adapter (labels `negative`, `neutral`, `positive`), mean pooling, max length 16.
    pub fn tc(lora: bool, seed: u64) -> Self {
        Self {
            task: TaskKind::Tc,
            ..Self::ner(lora, seed)
        }
    }
}

/// The label set of a synthetic adapter.
pub fn synthetic_labels(task: TaskKind) -> LabelSet {
    let l: &[&str] = match task {
        TaskKind::Ner => &["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
        TaskKind::Tc => &["negative", "neutral", "positive"],
    };
    LabelSet::from_labels(l.iter().copied())
}

/// Writes a random 2-layer, 16-wide BERT with `tokenizer_from`'s vocabulary and tokenizer into
/// `dir`, and returns it.
pub fn write_tiny_model(dir: &Path, tokenizer_from: &Path, seed: u64) -> Result<Encoder> {
    let tok = tokenizer_from.join("tokenizer.json");
    let vocab = prefine_tokenize::TextTokenizer::from_file(&tok, Default::default())?
        .inner()
        .get_vocab_size(true);
    let mut rng = seed_rng(seed);
    let enc = Encoder::random(EncoderConfig::tiny_bert_with_vocab(vocab), &mut rng)?;
    enc.save_pretrained(dir, Some(tokenizer_from))?;
    Ok(enc)
}

/// Writes an adapter directory for `base` (whose directory is `base_dir`) into `out`.
pub fn write_synthetic_adapter(
    base: &Encoder,
    base_dir: &Path,
    out: &Path,
    spec: SyntheticSpec,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let mut rng = seed_rng(spec.seed);
    let labels = synthetic_labels(spec.task);
    let h = base.hidden_size();
    let mut head = BTreeMap::new();
    head.insert(
        "classifier.weight".to_string(),
        normal(labels.len(), h, 1.0, &mut rng)?,
    );
    head.insert(
        "classifier.bias".to_string(),
        normal(1, labels.len(), 0.5, &mut rng)?.squeeze(0)?,
    );
    if spec.pooling == TcPooling::Pooler {
        head.insert("pooler.dense.weight".into(), normal(h, h, 0.1, &mut rng)?);
        head.insert(
            "pooler.dense.bias".into(),
            Tensor::zeros(h, DType::F32, &Device::Cpu)?,
        );
    }
    if spec.lora {
        // A shallow copy: the new group lives only in this copy.
        let mut enc = base.clone();
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec![LoraTarget::Query, LoraTarget::Value, LoraTarget::Output],
            ..Default::default()
        };
        enc.add_lora_group("app", &cfg, &mut rng)?;
        {
            for (_, lin) in enc.linears_mut() {
                if let Some(pair) = lin.loras.get_mut("app") {
                    let (o, r) = pair.b.t().dims2()?;
                    pair.b.set(&normal(o, r, 0.3, &mut rng)?)?;
                }
            }
        }
        let tt = match spec.task {
            TaskKind::Ner => PeftTaskType::TokenCls,
            TaskKind::Tc => PeftTaskType::SeqCls,
        };
        save_adapter(&enc, "app", tt, &head, &base_dir.display().to_string(), out)?;
    }
    save_safetensors(&out.join("head.safetensors"), &head)?;
    write_atomic(&out.join("labels.json"), &json(&labels))?;
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
    write_atomic(&out.join("adapter.json"), &json(&manifest))?;
    Ok(())
}

/// Pretty JSON bytes of a serialisable value.
fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("plain data serialises")
}
