//! [`Naming`]: the checkpoint names of one model type, from its family's naming map, and the
//! normalisation of a checkpoint's keys ([`normalise_keys`]).

use std::collections::HashMap;

use candle_core::Tensor;

use super::FamilyNames;
use crate::config::ModelType;
use crate::lora::LoraTarget;

/// Checkpoint names of one model type (the family's naming map, [`super::names`]).
#[derive(Debug, Clone, Copy)]
pub struct Naming(pub ModelType);

impl Naming {
    fn names(&self) -> &'static FamilyNames {
        super::names(self.0)
    }

    /// The prefix the task-head classes add (`bert.` / `distilbert.`).
    pub fn model_prefix(&self) -> &'static str {
        self.names().prefix
    }

    /// Module path of layer `i` (e.g. `encoder.layer.3`).
    pub fn layer(&self, i: usize) -> String {
        format!("{}{i}", self.names().layers)
    }

    /// Module path of a linear layer (without `.weight`); `None` when the family has no such
    /// layer.
    pub fn try_linear(&self, i: usize, t: LoraTarget) -> Option<String> {
        let (_, suffix, _) = self.names().linears.iter().find(|(tt, _, _)| *tt == t)?;
        Some(format!("{}.{suffix}", self.layer(i)))
    }

    /// Module path of a linear layer (without `.weight`); a target the family lacks is named
    /// `<layer>.<target>`.
    pub fn linear(&self, i: usize, t: LoraTarget) -> String {
        self.try_linear(i, t)
            .unwrap_or_else(|| format!("{}.{t:?}", self.layer(i)))
    }

    /// PEFT's `target_modules` name of a linear layer.
    pub fn peft_name(&self, t: LoraTarget) -> Option<&'static str> {
        self.names()
            .linears
            .iter()
            .find_map(|(tt, _, p)| (*tt == t).then_some(*p))
    }

    /// The LoRA targets the family has, in block order.
    pub fn targets(&self) -> Vec<LoraTarget> {
        self.names().linears.iter().map(|(t, _, _)| *t).collect()
    }

    /// `targets` as this family has them, in order and without repeats: on a family with a
    /// fused query/key/value projection `query`, `key` and `value` all name it (as PEFT's
    /// default for ModernBERT adapts `Wqkv`), and on one without, `qkv` names all three.
    /// A target the family lacks otherwise is an error naming it.
    pub fn resolve_targets(&self, targets: &[LoraTarget]) -> Result<Vec<LoraTarget>, LoraTarget> {
        let have = self.targets();
        let mut out: Vec<LoraTarget> = Vec::new();
        for &t in targets {
            let mapped: Vec<LoraTarget> = if have.contains(&t) {
                vec![t]
            } else {
                match t {
                    LoraTarget::Query | LoraTarget::Key | LoraTarget::Value
                        if have.contains(&LoraTarget::Qkv) =>
                    {
                        vec![LoraTarget::Qkv]
                    }
                    LoraTarget::Qkv
                        if [LoraTarget::Query, LoraTarget::Key, LoraTarget::Value]
                            .iter()
                            .all(|q| have.contains(q)) =>
                    {
                        vec![LoraTarget::Query, LoraTarget::Key, LoraTarget::Value]
                    }
                    _ => return Err(t),
                }
            };
            for m in mapped {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// Parses the module path of a linear layer back into `(layer, target)`.
    pub fn parse_linear(&self, path: &str) -> Option<(usize, LoraTarget)> {
        let rest = path.strip_prefix(self.names().layers)?;
        let (idx, _) = rest.split_once('.')?;
        let i: usize = idx.parse().ok()?;
        self.names()
            .linears
            .iter()
            .find(|&&(t, _, _)| self.linear(i, t) == path)
            .map(|&(t, _, _)| (i, t))
    }
}

/// Normalises checkpoint keys: strips a `bert.`/`distilbert.` prefix and maps the legacy
/// `LayerNorm.gamma/beta` names to `weight/bias`.
pub fn normalise_keys(tensors: HashMap<String, Tensor>, naming: Naming) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .strip_prefix(naming.model_prefix())
                .map(str::to_string)
                .unwrap_or(k);
            let k = if k.contains("LayerNorm.gamma") || k.contains("layer_norm.gamma") {
                k.replace(".gamma", ".weight")
            } else if k.contains("LayerNorm.beta") || k.contains("layer_norm.beta") {
                k.replace(".beta", ".bias")
            } else {
                k
            };
            (k, v)
        })
        .collect()
}
