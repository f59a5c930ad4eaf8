//! [`TaskModel`]: the encoder, an optional LoRA group and a task head, with trainability set by
//! the fine-tuning mode.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Tensor, Var};
use prefine_model::peft::load_adapter;
use prefine_model::{
    Classifier, Encoder, EncoderInput, Forward, Param, SeedRng, SequenceClassificationHead,
    TokenClassificationHead,
};

use super::config::{FinetuneConfig, Mode, TaskKind, TcPooling};
use super::hidden_cache::HiddenCache;
use crate::error::{Error, Result};
use crate::optim::AdamW;

/// The LoRA group name of a downstream application.
pub const APP_GROUP: &str = "app";

pub use prefine_runtime::TaskHead;

/// Encoder + optional LoRA group + head.
#[derive(Debug, Clone)]
pub struct TaskModel {
    /// The backbone (with the application's group, if any).
    pub encoder: Encoder,
    /// The head.
    pub head: TaskHead,
    /// The active LoRA group.
    pub group: Option<String>,
    /// Frozen-backbone states reused across epochs (`head` mode only).
    pub cache: Option<Arc<HiddenCache>>,
}

impl TaskModel {
    /// Builds the model for a fine-tuning run: applies `init_adapter`, adds the LoRA group and a
    /// fresh head, and sets what is trainable for `cfg.mode`.
    pub fn for_training(
        mut encoder: Encoder,
        cfg: &FinetuneConfig,
        num_labels: usize,
        rng: &mut SeedRng,
    ) -> Result<Self> {
        let mut group = None;
        if let Some(dir) = &cfg.init_adapter {
            load_adapter(&mut encoder, dir, APP_GROUP)?;
            if cfg.mode == Mode::Full {
                encoder.bake_group(APP_GROUP)?;
            } else {
                group = Some(APP_GROUP.to_string());
            }
        } else if cfg.mode == Mode::Lora {
            encoder.add_lora_group(APP_GROUP, &cfg.lora, rng)?;
            group = Some(APP_GROUP.to_string());
        }
        encoder.set_backbone_trainable(cfg.mode == Mode::Full);
        if let Some(g) = &group {
            encoder.set_group_trainable(g, cfg.mode == Mode::Lora)?;
        }
        let dropout = cfg
            .head_dropout
            .unwrap_or(encoder.config().hidden_dropout_prob);
        let classifier = Classifier::init(encoder.hidden_size(), num_labels, rng)?;
        let head = match cfg.task {
            TaskKind::Ner => TaskHead::Token(TokenClassificationHead {
                classifier,
                dropout,
            }),
            TaskKind::Tc => {
                let pooler = match cfg.pooling {
                    TcPooling::Pooler => {
                        let p = encoder.pooler.clone().ok_or_else(|| {
                            Error::Data(
                                "pooling = \"pooler\" but the checkpoint has no pooler".into(),
                            )
                        })?;
                        let mut p = p;
                        let train = cfg.mode == Mode::Full;
                        p.weight.set_trainable(train);
                        p.bias.set_trainable(train);
                        Some(p)
                    }
                    _ => None,
                };
                TaskHead::Sequence(SequenceClassificationHead {
                    pooling: cfg.pooling.pooling(),
                    pooler,
                    classifier,
                    dropout,
                })
            }
        };
        Ok(Self {
            encoder,
            head,
            group,
            cache: None,
        })
    }

    /// Logits: `[batch, seq, labels]` (NER) or `[batch, labels]` (TC). `rng` = training mode.
    pub fn logits(&self, input: &EncoderInput, mut rng: Option<&mut SeedRng>) -> Result<Tensor> {
        let hidden = match &self.cache {
            Some(c) => c.hidden(&self.encoder, self.group.as_deref(), input)?,
            None => {
                let fwd = Forward {
                    group: self.group.as_deref(),
                    dropout_rng: rng.as_deref_mut(),
                    also: None,
                };
                self.encoder.forward(input, fwd)?
            }
        };
        Ok(match &self.head {
            TaskHead::Token(h) => h.forward(&hidden, rng)?,
            TaskHead::Sequence(h) => h.forward(&hidden, &input.attention_mask, rng)?,
        })
    }

    /// Trainable parameters as `(name, variable, weight decay?)`.
    pub fn trainable(&self) -> Vec<(String, Var, bool)> {
        let mut v: Vec<(String, Var, bool)> = self
            .encoder
            .trainable_params()
            .into_iter()
            .map(|(n, p)| {
                let decay = AdamW::decays(&n);
                (n, p.var().clone(), decay)
            })
            .collect();
        for (name, p) in self.head_params() {
            if p.trainable() {
                v.push((
                    format!("head.{name}"),
                    p.var().clone(),
                    AdamW::decays(&name),
                ));
            }
        }
        v
    }

    fn head_params(&self) -> Vec<(String, &Param)> {
        let (classifier, pooler) = match &self.head {
            TaskHead::Token(h) => (&h.classifier, None),
            TaskHead::Sequence(h) => (&h.classifier, h.pooler.as_ref()),
        };
        let mut v = vec![
            ("classifier.weight".to_string(), &classifier.weight),
            ("classifier.bias".to_string(), &classifier.bias),
        ];
        if let Some(p) = pooler {
            v.push(("pooler.dense.weight".to_string(), &p.weight));
            v.push(("pooler.dense.bias".to_string(), &p.bias));
        }
        v
    }

    /// The head's tensors with HF names (`classifier.*`, `pooler.dense.*`).
    pub fn head_tensors(&self) -> BTreeMap<String, Tensor> {
        self.head_params()
            .into_iter()
            .map(|(n, p)| (n, p.t().detach()))
            .collect()
    }

    /// Copies of the trainable values (for best-epoch selection).
    pub fn snapshot(&self) -> Result<Vec<(Var, Tensor)>> {
        self.trainable()
            .into_iter()
            .map(|(_, v, _)| Ok((v.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// Restores a snapshot.
    pub fn restore(snapshot: &[(Var, Tensor)]) -> Result<()> {
        for (v, t) in snapshot {
            v.set(t)?;
        }
        Ok(())
    }

    /// Rebuilds a saved head from its tensors.
    pub fn head_from_tensors(
        task: TaskKind,
        tensors: &BTreeMap<String, Tensor>,
        pooling: TcPooling,
        path: &Path,
    ) -> Result<TaskHead> {
        Ok(TaskHead::from_tensors(task, tensors, pooling, path)?)
    }

    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        match &self.head {
            TaskHead::Token(h) => h.classifier.num_classes(),
            TaskHead::Sequence(h) => h.classifier.num_classes(),
        }
    }
}
