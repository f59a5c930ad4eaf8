//! [`TaskHead`]: the per-application head on top of the backbone's hidden states.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use prefine_model::bert::Pooler;
use prefine_model::{Classifier, Param, SequenceClassificationHead, TokenClassificationHead};

use crate::error::{Error, Result};
use crate::task::{TaskKind, TcPooling};

/// A task head.
#[derive(Debug, Clone)]
pub enum TaskHead {
    /// NER.
    Token(TokenClassificationHead),
    /// Text classification.
    Sequence(SequenceClassificationHead),
}

impl TaskHead {
    /// Rebuilds a saved head from its tensors (HF names: `classifier.*`, `pooler.dense.*`);
    /// `path` names them in errors.
    pub fn from_tensors(
        task: TaskKind,
        tensors: &BTreeMap<String, Tensor>,
        pooling: TcPooling,
        path: &Path,
    ) -> Result<Self> {
        let get = |k: &str| {
            tensors
                .get(k)
                .ok_or_else(|| Error::file(path, format!("missing tensor {k}")))
        };
        let classifier =
            Classifier::from_tensors(get("classifier.weight")?, get("classifier.bias")?)?;
        Ok(match task {
            TaskKind::Ner => TaskHead::Token(TokenClassificationHead {
                classifier,
                dropout: 0.0,
            }),
            TaskKind::Tc => {
                let pooler = if pooling == TcPooling::Pooler {
                    Some(Pooler::new(
                        Param::new(get("pooler.dense.weight")?)?,
                        Param::new(get("pooler.dense.bias")?)?,
                    ))
                } else {
                    None
                };
                TaskHead::Sequence(SequenceClassificationHead {
                    pooling: pooling.pooling(),
                    pooler,
                    classifier,
                    dropout: 0.0,
                })
            }
        })
    }

    /// The final linear layer.
    pub fn classifier(&self) -> &Classifier {
        match self {
            TaskHead::Token(h) => &h.classifier,
            TaskHead::Sequence(h) => &h.classifier,
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classifier().num_classes()
    }

    /// The hidden size the head expects.
    pub fn hidden_size(&self) -> usize {
        self.classifier().weight.dims()[1]
    }

    /// Logits without dropout: `[batch, seq, classes]` (NER) or `[batch, classes]` (TC) from
    /// the backbone's `hidden` states and `mask`.
    pub fn logits(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        Ok(match self {
            TaskHead::Token(h) => h.forward(hidden, None)?,
            TaskHead::Sequence(h) => h.forward(hidden, mask, None)?,
        })
    }

    /// Class probabilities: the softmax of [`TaskHead::logits`].
    pub fn probabilities(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax_last_dim(
            &self.logits(hidden, mask)?,
        )?)
    }
}
