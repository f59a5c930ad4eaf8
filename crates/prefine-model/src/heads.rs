//! Task heads on top of the encoder and sentence pooling.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::encoder::Pooler;
use crate::error::{Error, Result};
use crate::ops;
use crate::params::{normal, Param, SeedRng};

/// How a sentence embedding is pooled from token states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The first token (`[CLS]`).
    Cls,
    /// The mean over real (unmasked) tokens.
    #[default]
    Mean,
}

/// Mean over the tokens whose mask is 1: `[batch, seq, hidden]`, `[batch, seq]` -> `[batch, hidden]`.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(sum.broadcast_div(&count)?)
}

/// The first token's state: `[batch, seq, hidden]` -> `[batch, hidden]`.
pub fn cls_pool(hidden: &Tensor) -> Result<Tensor> {
    Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?)
}

/// Pools with the given strategy.
pub fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    match pooling {
        Pooling::Cls => cls_pool(hidden),
        Pooling::Mean => mean_pool(hidden, mask),
    }
}

/// Divides each row by its L2 norm (sentence-transformers `Normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// A linear classifier `[..., hidden] -> [..., classes]` (HF `classifier`).
#[derive(Debug, Clone)]
pub struct Classifier {
    /// `[classes, hidden]`.
    pub weight: Param,
    /// `[classes]`.
    pub bias: Param,
}

impl Classifier {
    /// Hugging Face's init for BERT heads: weights N(0, 0.02²) (`initializer_range`), zero
    /// bias. Trainable.
    pub fn init(hidden: usize, classes: usize, rng: &mut SeedRng) -> Result<Self> {
        if classes == 0 {
            return Err(Error::config(
                "classes",
                "a classifier needs at least one class",
            ));
        }
        let mut weight = Param::new(&normal(classes, hidden, 0.02, rng)?)?;
        let mut bias = Param::new(&Tensor::zeros(classes, DType::F32, &Device::Cpu)?)?;
        weight.set_trainable(true);
        bias.set_trainable(true);
        Ok(Self { weight, bias })
    }

    /// From loaded tensors (frozen until set trainable).
    pub fn from_tensors(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (c, _) = weight.dims2()?;
        if bias.dims() != [c] {
            return Err(Error::Input(format!(
                "classifier bias {:?} does not match weight {:?}",
                bias.dims(),
                weight.dims()
            )));
        }
        Ok(Self {
            weight: Param::new(weight)?,
            bias: Param::new(bias)?,
        })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::linear(x, &self.weight.t(), &self.bias.t())?)
    }

    /// Freezes or unfreezes.
    pub fn set_trainable(&mut self, t: bool) {
        self.weight.set_trainable(t);
        self.bias.set_trainable(t);
    }
}

/// Token classification (NER): dropout, then a linear layer on every token state.
#[derive(Debug, Clone)]
pub struct TokenClassificationHead {
    /// The classifier.
    pub classifier: Classifier,
    /// Dropout before the classifier in training.
    pub dropout: f64,
}

impl TokenClassificationHead {
    /// `[batch, seq, hidden]` -> `[batch, seq, classes]`.
    pub fn forward(&self, hidden: &Tensor, rng: Option<&mut SeedRng>) -> Result<Tensor> {
        let x = match rng {
            Some(r) if self.dropout > 0.0 => ops::dropout(hidden, self.dropout, r)?,
            _ => hidden.clone(),
        };
        self.classifier.forward(&x)
    }
}

/// Sequence classification: pooling (or the BERT pooler), dropout, linear.
#[derive(Debug, Clone)]
pub struct SequenceClassificationHead {
    /// Pooling when no pooler is used.
    pub pooling: Pooling,
    /// HF BERT pooler (`dense + tanh` on `[CLS]`), used instead of `pooling` when present.
    pub pooler: Option<Pooler>,
    /// The classifier.
    pub classifier: Classifier,
    /// Dropout before the classifier in training.
    pub dropout: f64,
}

impl SequenceClassificationHead {
    /// `[batch, seq, hidden]` + mask -> `[batch, classes]`.
    pub fn forward(
        &self,
        hidden: &Tensor,
        mask: &Tensor,
        rng: Option<&mut SeedRng>,
    ) -> Result<Tensor> {
        let pooled = match &self.pooler {
            Some(p) => p.forward(hidden)?,
            None => pool(hidden, mask, self.pooling)?,
        };
        let x = match rng {
            Some(r) if self.dropout > 0.0 => ops::dropout(&pooled, self.dropout, r)?,
            _ => pooled,
        };
        self.classifier.forward(&x)
    }
}
