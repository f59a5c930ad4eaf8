//! [`PretrainConfig`]: the settings of `prefine pretrain`, TOML with serde defaults, validated.

use std::path::{Path, PathBuf};

use prefine_model::{LoraConfig, LoraTarget, Precision};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which objectives train which weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// NER objective only, backbone trained.
    Ner,
    /// TC objective only, backbone trained.
    Tc,
    /// Both objectives on the same weights.
    Naive,
    /// MTPF-TPL: task-primary LoRA groups `ner` and `tc` on the last layers plus the shared backbone.
    Tpl,
}

/// How the other family's group behaves on a batch (TPL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OtherGroup {
    /// Bypassed.
    #[default]
    Off,
    /// Active, without gradient.
    Frozen,
}

/// How batches are drawn across families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// p ∝ n (pool sizes).
    Proportional,
    /// p ∝ n^(1/T).
    #[default]
    Temperature,
    /// Alternate.
    RoundRobin,
}

/// Which families' losses update the shared backbone (issue 27's ablation: does the backbone
/// need the other family's gradient at all?). Each family's loss always updates its own TPL
/// group and objective parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackboneGradFrom {
    /// Both families (the paper's MTPF-TPL).
    #[default]
    Both,
    /// NER batches only (TC batches train the `tc` group alone).
    Ner,
    /// TC batches only (NER batches train the `ner` group and the NER objective alone).
    Tc,
    /// Neither: the backbone stays frozen and only the groups train.
    None,
}

impl BackboneGradFrom {
    /// Whether a batch of the family named `family` (`ner` or `tc`) updates the backbone.
    pub fn includes(self, family: &str) -> bool {
        match self {
            Self::Both => true,
            Self::Ner => family == "ner",
            Self::Tc => family == "tc",
            Self::None => false,
        }
    }
}

/// How the two families' gradients on the shared weights are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GradientSurgery {
    /// None: one batch of one sampled family per step.
    #[default]
    None,
    /// PCGrad (a reference point): every step takes one batch of each family and projects
    /// conflicting shared-weight gradients (see [`super::pcgrad`]); `sampling` is then unused.
    Pcgrad,
}

/// Where the concept (entity-type) embeddings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConceptEncoder {
    /// The text encoder itself (with the active group).
    #[default]
    Shared,
    /// A separate trainable copy of the backbone.
    Separate,
}

fn d_steps() -> u64 {
    2000
}
fn d_ner_batch() -> usize {
    16
}
fn d_tc_batch() -> usize {
    32
}
fn d_len() -> usize {
    128
}
fn d_lr() -> f64 {
    5e-5
}
fn d_adapter_lr() -> f64 {
    5e-4
}
fn d_wd() -> f64 {
    0.01
}
fn d_warmup() -> f64 {
    0.06
}
fn d_clip() -> f64 {
    1.0
}
fn d_seed() -> u64 {
    42
}
fn d_tau() -> f64 {
    0.05
}
fn d_true() -> bool {
    true
}
fn d_half() -> f64 {
    0.5
}
fn d_t() -> f64 {
    2.0
}
fn d_one() -> f64 {
    1.0
}
fn d_k() -> usize {
    2
}
fn d_conflict() -> u64 {
    100
}
fn d_ckpt() -> u64 {
    500
}
fn d_log() -> u64 {
    10
}
fn de_lora<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<LoraConfig, D::Error> {
    LoraConfig::deserialize_over(PretrainConfig::default_tpl_lora(), d)
}
fn d_scale() -> f64 {
    10.0
}

/// Settings of `prefine pretrain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// `ner`, `tc`, `naive` or `tpl`.
    pub strategy: Strategy,
    /// Optimizer steps.
    #[serde(default = "d_steps")]
    pub max_steps: u64,
    /// Sentences per NER batch.
    #[serde(default = "d_ner_batch")]
    pub ner_batch_size: usize,
    /// Pairs per TC batch.
    #[serde(default = "d_tc_batch")]
    pub tc_batch_size: usize,
    /// Maximum subwords per text.
    #[serde(default = "d_len")]
    pub max_length: usize,
    /// Backbone learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// LoRA (and objective-head) learning rate.
    #[serde(default = "d_adapter_lr")]
    pub adapter_lr: f64,
    /// Weight decay (not on biases and layer norms).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Warm-up fraction of `max_steps`.
    #[serde(default = "d_warmup")]
    pub warmup_ratio: f64,
    /// Gradient-norm clipping.
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Seed of every RNG.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// NER pool directory (`train.conll`, `sources.json`, `concept_names.json`);
    /// default `<data>/pretrain/ner/mixed_concepts`.
    #[serde(default)]
    pub ner_data: Option<PathBuf>,
    /// Weak pairs (`{"anchor","positive"}` JSONL); default `<data>/pretrain/tc/weak_pairs_pool/pairs.jsonl`.
    #[serde(default)]
    pub tc_pairs: Option<PathBuf>,
    /// Weakly labelled texts; default `<data>/pretrain/tc/weak_labelled_pool/train.jsonl`.
    #[serde(default)]
    pub tc_labelled: Option<PathBuf>,
    /// Fraction of TC batches drawn from the pairs pool (the rest from the labelled pool).
    #[serde(default = "d_half")]
    pub tc_pairs_fraction: f64,
    /// InfoNCE temperature.
    #[serde(default = "d_tau")]
    pub temperature: f64,
    /// Symmetric InfoNCE (anchor→positive and positive→anchor).
    #[serde(default = "d_true")]
    pub symmetric: bool,
    /// Concept encoder for the NER objective.
    #[serde(default)]
    pub concept_encoder: ConceptEncoder,
    /// Learn a logit scale and bias on the token–concept cosine.
    #[serde(default = "d_true")]
    pub learned_scale: bool,
    /// Initial (or fixed) logit scale.
    #[serde(default = "d_scale")]
    pub initial_scale: f64,
    /// Family sampling.
    #[serde(default)]
    pub sampling: Sampling,
    /// T of temperature sampling.
    #[serde(default = "d_t")]
    pub sampling_temperature: f64,
    /// Loss weight of NER batches.
    #[serde(default = "d_one")]
    pub ner_weight: f64,
    /// Loss weight of TC batches.
    #[serde(default = "d_one")]
    pub tc_weight: f64,
    /// TPL: number of last layers with LoRA groups.
    #[serde(default = "d_k")]
    pub tpl_last_k: usize,
    /// TPL: LoRA settings of both groups (`layers` is set from `tpl_last_k`).
    #[serde(
        default = "PretrainConfig::default_tpl_lora",
        deserialize_with = "de_lora"
    )]
    pub tpl_lora: LoraConfig,
    /// TPL: the other family's group on a batch.
    #[serde(default)]
    pub tpl_other_group: OtherGroup,
    /// Which families' losses update the shared backbone (`both`, `ner`, `tc`, `none`; other
    /// than `both` only with `tpl`, where the groups still learn).
    #[serde(default, skip_serializing_if = "is_default")]
    pub backbone_grad_from: BackboneGradFrom,
    /// Gradient surgery on the shared weights (`none`, or `pcgrad` with `naive`/`tpl`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub gradient_surgery: GradientSurgery,
    /// Gradient-conflict diagnostics every N steps (0 = never).
    #[serde(default = "d_conflict")]
    pub conflict_every: u64,
    /// Checkpoint every N steps (0 = only at the end).
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: u64,
    /// A metrics line every N steps.
    #[serde(default = "d_log")]
    pub log_every: u64,
    /// Matmul precision while training: `f32`, or `bf16` mixed precision (matmul operands
    /// rounded to bf16, f32 accumulation, master weights, gradients and optimizer).
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: Precision,
}

fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}

/// Keys at their default are left out of the written config (as before they existed).
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl PretrainConfig {
    /// Defaults for a strategy (the same values serde fills in for missing keys).
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            max_steps: d_steps(),
            ner_batch_size: d_ner_batch(),
            tc_batch_size: d_tc_batch(),
            max_length: d_len(),
            lr: d_lr(),
            adapter_lr: d_adapter_lr(),
            weight_decay: d_wd(),
            warmup_ratio: d_warmup(),
            max_grad_norm: d_clip(),
            seed: d_seed(),
            ner_data: None,
            tc_pairs: None,
            tc_labelled: None,
            tc_pairs_fraction: d_half(),
            temperature: d_tau(),
            symmetric: true,
            concept_encoder: ConceptEncoder::default(),
            learned_scale: true,
            initial_scale: d_scale(),
            sampling: Sampling::default(),
            sampling_temperature: d_t(),
            ner_weight: d_one(),
            tc_weight: d_one(),
            tpl_last_k: d_k(),
            tpl_lora: Self::default_tpl_lora(),
            tpl_other_group: OtherGroup::default(),
            backbone_grad_from: BackboneGradFrom::default(),
            gradient_surgery: GradientSurgery::default(),
            conflict_every: d_conflict(),
            checkpoint_every: d_ckpt(),
            log_every: d_log(),
            precision: Precision::default(),
        }
    }

    /// The TPL groups when the config says nothing: rank 16, alpha 32, no dropout, on every
    /// linear of the last `tpl_last_k` layers (a partial `[tpl_lora]` table keeps the keys it
    /// does not name from here).
    pub fn default_tpl_lora() -> LoraConfig {
        LoraConfig {
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            targets: LoraTarget::ALL.to_vec(),
            layers: None,
            use_rslora: false,
        }
    }

    /// Parses TOML text (`path` in messages); unknown keys are errors with their line.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = crate::toml_config::parse_toml(text, path)
            .map_err(|(field, reason)| Error::Config { field, reason })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, r: String| {
            Err(Error::Config {
                field: f.into(),
                reason: r,
            })
        };
        if self.max_steps == 0 {
            return bad("max_steps", "must be at least 1".into());
        }
        crate::toml_config::check_training_precision(self.precision)?;
        if self.ner_batch_size == 0 || self.tc_batch_size < 2 {
            return bad(
                "batch sizes",
                "ner_batch_size >= 1 and tc_batch_size >= 2 (in-batch negatives)".into(),
            );
        }
        if self.max_length < 8 {
            return bad("max_length", "must be at least 8".into());
        }
        for (k, v) in [
            ("lr", self.lr),
            ("adapter_lr", self.adapter_lr),
            ("temperature", self.temperature),
            ("initial_scale", self.initial_scale),
            ("sampling_temperature", self.sampling_temperature),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(k, format!("{v} is not a positive number"));
            }
        }
        if !(0.0..=1.0).contains(&self.tc_pairs_fraction) {
            return bad("tc_pairs_fraction", "must be in [0, 1]".into());
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", "must be in [0, 1)".into());
        }
        if !(self.ner_weight >= 0.0
            && self.tc_weight >= 0.0
            && self.ner_weight.is_finite()
            && self.tc_weight.is_finite())
        {
            return bad(
                "ner_weight/tc_weight",
                format!(
                    "{} / {}: must be finite and non-negative",
                    self.ner_weight, self.tc_weight
                ),
            );
        }
        for (k, v, note) in [
            ("weight_decay", self.weight_decay, ""),
            ("max_grad_norm", self.max_grad_norm, " (0 disables)"),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(k, format!("{v}: must be finite and non-negative{note}"));
            }
        }
        if self.tpl_last_k == 0 {
            return bad("tpl_last_k", "must be at least 1".into());
        }
        self.validate_ablations()?;
        if self.strategy == Strategy::Tpl {
            // `layers` is set from `tpl_last_k` once the model is loaded.
            self.tpl_lora.validate(usize::MAX).map_err(|e| match e {
                prefine_model::Error::Config { field, reason } => Error::Config {
                    field: format!("tpl_{field}"),
                    reason,
                },
                other => other.into(),
            })?;
        }
        Ok(())
    }

    /// Checks issue 27's ablation knobs against the strategy.
    fn validate_ablations(&self) -> Result<()> {
        let bad = |f: &str, r: &str| {
            Err(Error::Config {
                field: f.into(),
                reason: r.into(),
            })
        };
        if self.backbone_grad_from != BackboneGradFrom::Both && self.strategy != Strategy::Tpl {
            return bad(
                "backbone_grad_from",
                "only `both` without `tpl`: a family would then train nothing",
            );
        }
        if self.gradient_surgery == GradientSurgery::Pcgrad {
            if !matches!(self.strategy, Strategy::Naive | Strategy::Tpl) {
                return bad(
                    "gradient_surgery",
                    "`pcgrad` needs two families (strategy naive or tpl)",
                );
            }
            if self.backbone_grad_from != BackboneGradFrom::Both {
                return bad(
                    "gradient_surgery",
                    "`pcgrad` combines both families' backbone gradients: needs backbone_grad_from = \"both\"",
                );
            }
        }
        Ok(())
    }

    /// The resolved config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("serialisable")
    }
}

/// Command-line settings applied over a config file: typed, `None` keeps the file's value.
#[derive(Debug, Clone, Default)]
pub struct PretrainOverrides {
    /// `--strategy`.
    pub strategy: Option<Strategy>,
    /// `--max-steps`.
    pub max_steps: Option<u64>,
    /// `--precision`.
    pub precision: Option<Precision>,
}

/// Reads a config file (or the defaults; `strategy` must come from the file or the overrides),
/// applies the typed overrides and validates every setting, nested ones included.
pub fn resolve_config(
    file: Option<&Path>,
    overrides: &PretrainOverrides,
) -> Result<PretrainConfig> {
    let text = match file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
        None => String::new(),
    };
    let origin = file.unwrap_or(Path::new("<command line>"));
    let set: Vec<(&str, String)> = overrides
        .strategy
        .map(|s| ("strategy", crate::toml_config::serde_name(&s)))
        .into_iter()
        .collect();
    let required = [(
        "strategy",
        "--strategy or `strategy = ...`: ner, tc, naive or tpl",
    )];
    let mut cfg: PretrainConfig =
        crate::toml_config::parse_toml_with(&text, origin, &set, &required)
            .map_err(|(field, reason)| Error::Config { field, reason })?;
    if let Some(n) = overrides.max_steps {
        cfg.max_steps = n;
    }
    if let Some(p) = overrides.precision {
        cfg.precision = p;
    }
    cfg.validate()?;
    Ok(cfg)
}
