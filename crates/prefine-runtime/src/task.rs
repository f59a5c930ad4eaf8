//! What an application is: its task family, what was trained, and its sentence pooling (the
//! leaf vocabulary shared by the adapter formats and the heads).

use prefine_model::Pooling;
use serde::{Deserialize, Serialize};

/// The task family of a downstream application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Named-entity recognition (token classification, CoNLL files).
    Ner,
    /// Text classification (sequence classification, JSONL/CSV/TSV files).
    Tc,
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only the head (backbone and adapters frozen): a linear probe.
    Head,
    /// A new LoRA group plus the head.
    Lora,
    /// Every weight.
    Full,
}

/// Sentence pooling of the TC head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TcPooling {
    /// Mean over real tokens (sentence-transformers' pooling).
    #[default]
    Mean,
    /// The `[CLS]` state.
    Cls,
    /// The checkpoint's BERT pooler (`tanh(W h_cls + b)`), as `BertForSequenceClassification`.
    Pooler,
}

impl TcPooling {
    /// The plain pooling used when no pooler is involved.
    pub fn pooling(self) -> Pooling {
        match self {
            TcPooling::Mean => Pooling::Mean,
            _ => Pooling::Cls,
        }
    }
}
