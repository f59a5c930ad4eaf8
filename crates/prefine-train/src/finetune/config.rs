//! [`FinetuneConfig`]: every setting of a downstream fine-tuning run, with serde defaults, read
//! from TOML (unknown keys are errors with their line) and validated before any work starts.

use std::path::Path;

use prefine_model::{LoraConfig, LoraTarget, Precision};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use prefine_runtime::{Mode, TaskKind, TcPooling};

fn d_epochs() -> usize {
    3
}
fn d_batch() -> usize {
    32
}
fn d_eval_batch() -> usize {
    64
}
fn d_max_length() -> usize {
    128
}
fn d_stride() -> usize {
    32
}
fn d_warmup() -> f64 {
    0.1
}
fn d_wd() -> f64 {
    0.01
}
fn d_clip() -> f64 {
    1.0
}
fn d_one() -> usize {
    1
}
fn d_seed() -> u64 {
    13
}
fn d_keep() -> usize {
    2
}
fn d_cache_mb() -> usize {
    2048
}
fn d_true() -> bool {
    true
}
fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}
fn is_true(v: &bool) -> bool {
    *v
}
fn d_fraction() -> f64 {
    1.0
}
fn de_lora<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<LoraConfig, D::Error> {
    LoraConfig::deserialize_over(FinetuneConfig::default_lora(), d)
}

/// Settings of `prefine finetune`. Every field can be set in a TOML file; CLI flags override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// `ner` or `tc`.
    pub task: TaskKind,
    /// `head`, `lora` or `full`.
    pub mode: Mode,
    /// Epochs over the training set.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Peak learning rate; default 5e-5 (`full`), 5e-4 (`lora`), 1e-3 (`head`).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Examples per optimizer step (before accumulation).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Micro-batches accumulated into one optimizer step.
    #[serde(default = "d_one")]
    pub grad_accumulation: usize,
    /// Batch size for evaluation.
    #[serde(default = "d_eval_batch")]
    pub eval_batch_size: usize,
    /// Maximum subword tokens per input, special tokens included.
    #[serde(default = "d_max_length")]
    pub max_length: usize,
    /// Overlap (in subwords) of consecutive windows of a long NER sentence.
    #[serde(default = "d_stride")]
    pub stride: usize,
    /// Fraction of the optimizer steps used for linear warm-up.
    #[serde(default = "d_warmup")]
    pub warmup_ratio: f64,
    /// Decoupled weight decay (not applied to biases and layer norms).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Global gradient-norm clipping (0 disables).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Seed for sampling, shuffling, initialisation and dropout.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Fraction of the training set to use (seeded subsample).
    #[serde(default = "d_fraction")]
    pub fraction: f64,
    /// Cap on training examples after `fraction`.
    #[serde(default)]
    pub max_train: Option<usize>,
    /// Cap on dev and test examples (a fixed seeded subset; for budgeted runs).
    #[serde(default)]
    pub max_eval: Option<usize>,
    /// Stop after this many epochs without dev improvement.
    #[serde(default)]
    pub patience: Option<usize>,
    /// Dropout of the head input; default: the model's `hidden_dropout_prob`.
    #[serde(default)]
    pub head_dropout: Option<f64>,
    /// TC pooling.
    #[serde(default)]
    pub pooling: TcPooling,
    /// The LoRA group trained in `lora` mode.
    #[serde(default = "FinetuneConfig::default_lora", deserialize_with = "de_lora")]
    pub lora: LoraConfig,
    /// A pre-finetuned family adapter (PEFT directory) applied under the new head: in `lora`
    /// mode it initialises the new group; in `head` mode it stays frozen; in `full` mode it is
    /// merged into the backbone first.
    #[serde(default)]
    pub init_adapter: Option<std::path::PathBuf>,
    /// Convert `I-X` after `O` into `B-X` when reading CoNLL files.
    #[serde(default)]
    pub repair_iob: bool,
    /// Tag scheme of the CoNLL files (`iob2`, `iob1`, `bioes`, `bilou` or `auto`); tags are
    /// converted to IOB2 on read.
    #[serde(default)]
    pub tag_scheme: prefine_data::TagScheme,
    /// Write a checkpoint every N optimizer steps (0: only at the end of each epoch).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Checkpoints kept in `OUT/checkpoints/` (the newest ones).
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    /// `head` mode: MiB of frozen-backbone states kept for reuse across epochs and evaluations
    /// (0 recomputes every pass, with backbone dropout as in the other modes).
    #[serde(default = "d_cache_mb")]
    pub feature_cache_mb: usize,
    /// Batch training examples of similar length (shuffle, sort inside chunks of 50 batches,
    /// shuffle the batches; like Hugging Face's `group_by_length`): less padding, faster. `false`
    /// cuts batches from a plain shuffle, as `hf_finetune_anchor.py` does.
    #[serde(default = "d_true", skip_serializing_if = "is_true")]
    pub group_by_length: bool,
    /// Matmul precision while training: `f32`, or `bf16` mixed precision (matmul operands
    /// rounded to bf16, f32 accumulation, f32 master weights, gradients and optimizer; like
    /// PyTorch's bf16 autocast). Evaluation and the saved weights stay f32.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: Precision,
}

impl FinetuneConfig {
    /// Defaults for a task and mode (the same values serde fills in for missing keys).
    pub fn new(task: TaskKind, mode: Mode) -> Self {
        Self {
            task,
            mode,
            epochs: d_epochs(),
            lr: None,
            batch_size: d_batch(),
            grad_accumulation: d_one(),
            eval_batch_size: d_eval_batch(),
            max_length: d_max_length(),
            stride: d_stride(),
            warmup_ratio: d_warmup(),
            weight_decay: d_wd(),
            max_grad_norm: d_clip(),
            seed: d_seed(),
            fraction: d_fraction(),
            max_train: None,
            max_eval: None,
            patience: None,
            head_dropout: None,
            pooling: TcPooling::default(),
            lora: Self::default_lora(),
            init_adapter: None,
            repair_iob: false,
            tag_scheme: prefine_data::TagScheme::default(),
            checkpoint_every: 0,
            keep_checkpoints: d_keep(),
            feature_cache_mb: d_cache_mb(),
            group_by_length: true,
            precision: Precision::default(),
        }
    }

    /// The LoRA group of `lora` mode when the config says nothing: rank 8, alpha 16, dropout
    /// 0.1 on the query and value projections of every layer (a partial `[lora]` table keeps
    /// the keys it does not name from here).
    pub fn default_lora() -> LoraConfig {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.1,
            targets: vec![LoraTarget::Query, LoraTarget::Value],
            layers: None,
            use_rslora: false,
        }
    }

    /// Reads a TOML file; unknown keys and bad values are reported with the file and line.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses TOML text; `path` is used in messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = crate::toml_config::parse_toml(text, path)
            .map_err(|(field, reason)| Error::Config { field, reason })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `file` (if any; otherwise the defaults), applies the command-line `overrides`
    /// (typed: no TOML text is written), and validates every setting, nested ones included.
    /// `task` and `mode` must come from the file or the overrides.
    pub fn resolve(file: Option<&Path>, overrides: &FinetuneOverrides) -> Result<Self> {
        let text = match file {
            Some(p) => std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
            None => String::new(),
        };
        let origin = file.unwrap_or(Path::new("<command line>"));
        let mut set = Vec::new();
        if let Some(t) = overrides.task {
            set.push(("task", crate::toml_config::serde_name(&t)));
        }
        if let Some(m) = overrides.mode {
            set.push(("mode", crate::toml_config::serde_name(&m)));
        }
        let required = [
            ("task", "--task (ner|tc) or `task = ...` in --config"),
            (
                "mode",
                "--mode (head|lora|full) or `mode = ...` in --config",
            ),
        ];
        let mut cfg: Self = crate::toml_config::parse_toml_with(&text, origin, &set, &required)
            .map_err(|(field, reason)| Error::Config { field, reason })?;
        overrides.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The learning rate after defaults.
    pub fn learning_rate(&self) -> f64 {
        self.lr.unwrap_or(match self.mode {
            Mode::Full => 5e-5,
            Mode::Lora => 5e-4,
            Mode::Head => 1e-3,
        })
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, r: String| {
            Err(Error::Config {
                field: f.into(),
                reason: r,
            })
        };
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        crate::toml_config::check_training_precision(self.precision)?;
        if self.batch_size == 0 || self.eval_batch_size == 0 || self.grad_accumulation == 0 {
            return bad(
                "batch_size",
                "batch sizes and grad_accumulation must be positive".into(),
            );
        }
        let lr = self.learning_rate();
        if !(lr.is_finite() && lr > 0.0) {
            return bad("lr", format!("{lr} is not a positive number"));
        }
        if self.max_length < 8 {
            return bad(
                "max_length",
                format!("{} is too small (at least 8)", self.max_length),
            );
        }
        if self.stride + 2 >= self.max_length {
            return bad(
                "stride",
                format!("{} must be below max_length - 2", self.stride),
            );
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(
                "warmup_ratio",
                format!("{} is not in [0, 1)", self.warmup_ratio),
            );
        }
        if !(self.weight_decay >= 0.0 && self.max_grad_norm >= 0.0) {
            return bad("weight_decay/max_grad_norm", "must be non-negative".into());
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return bad("fraction", format!("{} is not in (0, 1]", self.fraction));
        }
        if self.max_train == Some(0) {
            return bad("max_train", "must be at least 1".into());
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints", "must be at least 1".into());
        }
        if self.max_eval == Some(0) {
            return bad("max_eval", "must be at least 1".into());
        }
        if let Some(p) = self.head_dropout {
            if !(0.0..1.0).contains(&p) {
                return bad("head_dropout", format!("{p} is not in [0, 1)"));
            }
        }
        if self.task == TaskKind::Ner && self.pooling != TcPooling::Mean {
            return bad("pooling", "only applies to tc".into());
        }
        if self.mode == Mode::Lora {
            // The layer indices are checked against the model once it is loaded.
            self.lora.validate(usize::MAX)?;
        }
        Ok(())
    }

    /// The resolved config as TOML (saved next to every artifact).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// Command-line settings applied over a config file: typed, `None` (or `false`) keeps the
/// file's value.
#[derive(Debug, Clone, Default)]
pub struct FinetuneOverrides {
    /// `--task`.
    pub task: Option<TaskKind>,
    /// `--mode`.
    pub mode: Option<Mode>,
    /// `--fraction`.
    pub fraction: Option<f64>,
    /// `--max-train`.
    pub max_train: Option<usize>,
    /// `--max-eval`.
    pub max_eval: Option<usize>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--epochs`.
    pub epochs: Option<usize>,
    /// `--lr`.
    pub lr: Option<f64>,
    /// `--batch-size`.
    pub batch_size: Option<usize>,
    /// `--grad-accumulation`.
    pub grad_accumulation: Option<usize>,
    /// `--patience`.
    pub patience: Option<usize>,
    /// `--init-adapter`.
    pub init_adapter: Option<std::path::PathBuf>,
    /// `--pooling`.
    pub pooling: Option<TcPooling>,
    /// `--repair-iob` (only turns it on).
    pub repair_iob: bool,
    /// `--tag-scheme`.
    pub tag_scheme: Option<prefine_data::TagScheme>,
    /// `--checkpoint-every`.
    pub checkpoint_every: Option<u64>,
    /// `--precision`.
    pub precision: Option<Precision>,
}

impl FinetuneOverrides {
    /// Sets the given values on `cfg` (task and mode are applied while parsing).
    pub fn apply(&self, cfg: &mut FinetuneConfig) {
        fn set<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        set(&mut cfg.fraction, &self.fraction);
        set(&mut cfg.seed, &self.seed);
        set(&mut cfg.epochs, &self.epochs);
        set(&mut cfg.batch_size, &self.batch_size);
        set(&mut cfg.grad_accumulation, &self.grad_accumulation);
        set(&mut cfg.pooling, &self.pooling);
        set(&mut cfg.tag_scheme, &self.tag_scheme);
        set(&mut cfg.checkpoint_every, &self.checkpoint_every);
        set(&mut cfg.precision, &self.precision);
        for (slot, v) in [
            (&mut cfg.max_train, self.max_train),
            (&mut cfg.max_eval, self.max_eval),
            (&mut cfg.patience, self.patience),
        ] {
            if v.is_some() {
                *slot = v;
            }
        }
        if self.lr.is_some() {
            cfg.lr = self.lr;
        }
        if self.init_adapter.is_some() {
            cfg.init_adapter = self.init_adapter.clone();
        }
        cfg.repair_iob |= self.repair_iob;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_round_trip() {
        let c = FinetuneConfig::new(TaskKind::Ner, Mode::Lora);
        assert_eq!(c.epochs, 3);
        assert_eq!(c.learning_rate(), 5e-4);
        assert_eq!(c.lora.rank, 8);
        let back = FinetuneConfig::from_toml_str(&c.to_toml(), Path::new("c.toml")).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn group_by_length_is_on_by_default_and_written_only_when_off() {
        let c = FinetuneConfig::new(TaskKind::Ner, Mode::Full);
        assert!(c.group_by_length);
        assert!(!c.to_toml().contains("group_by_length"));
        let off = FinetuneConfig::from_toml_str(
            "task = \"ner\"\nmode = \"full\"\ngroup_by_length = false\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert!(!off.group_by_length);
        let back = FinetuneConfig::from_toml_str(&off.to_toml(), Path::new("c.toml")).unwrap();
        assert_eq!(back, off);
    }

    #[test]
    fn precision_is_f32_by_default_and_a_bad_one_names_its_line() {
        let c = FinetuneConfig::new(TaskKind::Tc, Mode::Lora);
        assert_eq!(c.precision, Precision::F32);
        let bf = FinetuneConfig::from_toml_str(
            "task = \"tc\"\nmode = \"lora\"\nprecision = \"bf16\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(bf.precision, Precision::Bf16);
        let back = FinetuneConfig::from_toml_str(&bf.to_toml(), Path::new("c.toml")).unwrap();
        assert_eq!(back, bf);
        let err = FinetuneConfig::from_toml_str(
            "task = \"tc\"\nmode = \"lora\"\nprecision = \"fp16\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3") && err.contains("`bf16`"), "{err}");
        // The one Precision of every command: int8 parses, and training refuses it by name.
        let int8 = FinetuneConfig::from_toml_str(
            "task = \"tc\"\nmode = \"lora\"\nprecision = \"int8\"\n",
            Path::new("c.toml"),
        )
        .and_then(|c| c.validate().map(|()| c));
        let err = int8.unwrap_err().to_string();
        assert!(
            err.contains("precision") && err.contains("inference-only"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let err = FinetuneConfig::from_toml_str(
            "task = \"ner\"\nmode = \"full\"\nepochz = 3\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("c.toml") && err.contains("line 3") && err.contains("epochz"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_rejected_before_work() {
        let err = FinetuneConfig::from_toml_str(
            "task = \"tc\"\nmode = \"full\"\nfraction = 1.5\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("fraction"), "{err}");
        let err = FinetuneConfig::from_toml_str(
            "task = \"tc\"\nmode = \"full\"\n[lora]\nrank = 0\n",
            Path::new("c.toml"),
        );
        assert!(err.is_ok(), "lora is validated when the group is created");
    }

    #[test]
    fn a_partial_lora_table_keeps_the_other_finetune_defaults() {
        let c = FinetuneConfig::from_toml_str(
            "task = \"tc\"\nmode = \"lora\"\n[lora]\ndropout = 0.2\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.lora.rank, 8);
        assert_eq!(c.lora.alpha, 16.0);
        assert_eq!(c.lora.dropout, 0.2);
        assert_eq!(c.lora.targets, FinetuneConfig::default_lora().targets);
        let err = FinetuneConfig::from_toml_str(
            "task = \"tc\"\nmode = \"lora\"\n[lora]\nrankk = 4\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 4") && err.contains("rankk"), "{err}");
    }

    #[test]
    fn overrides_are_typed_and_task_mode_may_come_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "epochs = 5\n[lora]\ndropout = 0.2\n").unwrap();
        let o = FinetuneOverrides {
            task: Some(TaskKind::Tc),
            mode: Some(Mode::Lora),
            epochs: Some(2),
            ..Default::default()
        };
        let c = FinetuneConfig::resolve(Some(&p), &o).unwrap();
        assert_eq!(
            (c.task, c.mode, c.epochs, c.lora.rank),
            (TaskKind::Tc, Mode::Lora, 2, 8)
        );
        let err = FinetuneConfig::resolve(Some(&p), &FinetuneOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("task") && err.contains("--task"), "{err}");
        std::fs::write(&p, "task = \"tc\"\nmode = \"lora\"\n[lora]\nrank = 0\n").unwrap();
        let err = FinetuneConfig::resolve(Some(&p), &FinetuneOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lora.rank"),
            "nested settings are validated: {err}"
        );
    }

    #[test]
    fn new_equals_the_serde_defaults() {
        let parsed =
            FinetuneConfig::from_toml_str("task = \"ner\"\nmode = \"head\"\n", Path::new("c.toml"))
                .unwrap();
        assert_eq!(parsed, FinetuneConfig::new(TaskKind::Ner, Mode::Head));
    }
}
