//! What a forward pass takes: the padded batch ([`EncoderInput`]) and how to run it
//! ([`Forward`]: eval or training, which LoRA group).

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::params::SeedRng;

/// Token ids, segment ids and attention mask of a padded batch.
#[derive(Debug, Clone)]
pub struct EncoderInput {
    /// `[batch, seq]` u32 token ids.
    pub input_ids: Tensor,
    /// `[batch, seq]` u32 segment ids (ignored by DistilBERT).
    pub type_ids: Tensor,
    /// `[batch, seq]` f32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
}

impl EncoderInput {
    /// Builds the tensors from nested vectors (as produced by the tokenizer).
    pub fn from_vecs(ids: &[Vec<u32>], type_ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<Self> {
        let b = ids.len();
        let s = ids.first().map_or(0, Vec::len);
        if b == 0 || s == 0 {
            return Err(Error::Input("empty batch".into()));
        }
        if ids.iter().chain(type_ids).chain(mask).any(|r| r.len() != s)
            || type_ids.len() != b
            || mask.len() != b
        {
            return Err(Error::Input(
                "ragged batch: every row must have the same length".into(),
            ));
        }
        let flat = |v: &[Vec<u32>]| v.iter().flatten().copied().collect::<Vec<u32>>();
        let maskf: Vec<f32> = mask.iter().flatten().map(|&m| m as f32).collect();
        Ok(Self {
            input_ids: Tensor::from_vec(flat(ids), (b, s), &Device::Cpu)?,
            type_ids: Tensor::from_vec(flat(type_ids), (b, s), &Device::Cpu)?,
            attention_mask: Tensor::from_vec(maskf, (b, s), &Device::Cpu)?,
        })
    }

    /// `(batch, seq)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(self.input_ids.dims2()?)
    }
}

/// How a forward pass runs.
pub struct Forward<'a> {
    /// The LoRA group to apply, or none for the bare backbone.
    pub group: Option<&'a str>,
    /// `Some(rng)` means training: dropout is on and draws from `rng`.
    pub dropout_rng: Option<&'a mut SeedRng>,
    /// A second active group (its deltas are added too; freeze it to keep it fixed).
    pub also: Option<&'a str>,
}

impl<'a> Forward<'a> {
    /// Evaluation (no dropout) with the given group.
    pub fn eval(group: Option<&'a str>) -> Self {
        Self {
            group,
            dropout_rng: None,
            also: None,
        }
    }
    /// Training (dropout on) with the given group.
    pub fn train(group: Option<&'a str>, rng: &'a mut SeedRng) -> Self {
        Self {
            group,
            dropout_rng: Some(rng),
            also: None,
        }
    }
}
