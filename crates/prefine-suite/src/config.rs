//! [`SuiteConfig`]: what the suite runs, read from TOML (unknown keys are errors with their line)
//! and validated before any work starts. Relative paths are relative to the current directory,
//! like every other path given to `prefine`.
//!
//! ```toml
//! out = "runs/suite"                # default for --out
//! tasks = ["ner/conll2003", "tc/sst2"]  # default: every ner/* and tc/* folder of the data root
//! fractions = [1.0, 0.1]
//! seeds = [13, 14, 15]
//!
//! [[variants]]
//! name = "base"
//! path = "models/all-MiniLM-L6-v2"  # an HF model directory or a `prefine pretrain` output
//!
//! [pretrain]                         # optional: pre-finetune here, one variant per strategy
//! model = "models/all-MiniLM-L6-v2"
//! strategies = ["ner", "tc", "naive", "tpl"]
//! max_steps = 300
//! [pretrain.settings]                # any PretrainConfig key
//! max_length = 64
//!
//! [protocol]
//! ner = "head"                       # head | lora | full, per family
//! tc = "head"
//! epochs = 3
//! max_train = 2000                   # per-task cap for budgeted runs
//! max_eval = 1000
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prefine_train::finetune::{FinetuneConfig, Mode, TaskKind};
use prefine_train::pretrain::{PretrainConfig, Strategy};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn d_fractions() -> Vec<f64> {
    vec![1.0, 0.1]
}
fn d_seeds() -> Vec<u64> {
    vec![13, 14, 15]
}
fn d_head() -> Mode {
    Mode::Head
}
fn d_epochs() -> usize {
    3
}
fn d_batch() -> usize {
    32
}
fn d_max_length() -> usize {
    128
}

/// A backbone variant: a column of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// The column label (`base`, `tpl`, ...).
    pub name: String,
    /// An HF model directory, or a `prefine pretrain` output directory (`backbone/` and, for
    /// TPL, `adapters/{ner,tc}/`).
    pub path: PathBuf,
}

/// The `[pretrain]` section: strategies pre-finetuned by the suite itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSection {
    /// The backbone every strategy starts from.
    pub model: PathBuf,
    /// Strategies to run; each becomes a variant named after it.
    pub strategies: Vec<Strategy>,
    /// Optimizer steps per strategy.
    pub max_steps: u64,
    /// Any further `PretrainConfig` keys (shared by every strategy).
    #[serde(default)]
    pub settings: toml::Table,
}

impl PretrainSection {
    /// The validated pre-finetuning config of one strategy.
    pub fn config_for(&self, strategy: Strategy) -> Result<PretrainConfig> {
        let mut table = self.settings.clone();
        let name = serde_json::to_value(strategy)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        table.insert("strategy".into(), toml::Value::String(name));
        table.insert(
            "max_steps".into(),
            toml::Value::Integer(self.max_steps as i64),
        );
        let text = toml::to_string(&table).map_err(|e| Error::Config {
            field: "pretrain.settings".into(),
            reason: e.to_string(),
        })?;
        Ok(PretrainConfig::from_toml_str(
            &text,
            Path::new("[pretrain.settings]"),
        )?)
    }
}

/// The downstream protocol: how each cell fine-tunes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// What NER cells train (`head` = the deployment setting: frozen backbone + family adapter).
    #[serde(default = "d_head")]
    pub ner: Mode,
    /// What TC cells train.
    #[serde(default = "d_head")]
    pub tc: Mode,
    /// Epochs per cell.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Peak learning rate (default: the fine-tuning default of the mode).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Batch size.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Per-task cap on training examples, for budgeted runs. The fraction applies to the capped
    /// budget too (fraction 0.1 with a cap of 2000 trains on at most 200 examples), so that the
    /// low-data column stays a tenth of the full one.
    #[serde(default)]
    pub max_train: Option<usize>,
    /// Per-task cap on dev and test examples (a fixed subset), for budgeted runs.
    #[serde(default)]
    pub max_eval: Option<usize>,
    /// Maximum subword tokens per input.
    #[serde(default = "d_max_length")]
    pub max_length: usize,
    /// Early-stopping patience in epochs.
    #[serde(default)]
    pub patience: Option<usize>,
}

impl Default for Protocol {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

impl Protocol {
    /// The mode of a family.
    pub fn mode(&self, task: TaskKind) -> Mode {
        match task {
            TaskKind::Ner => self.ner,
            TaskKind::Tc => self.tc,
        }
    }

    /// The fine-tuning config of one cell (the family adapter is set by the runner).
    pub fn finetune_config(&self, task: TaskKind, fraction: f64, seed: u64) -> FinetuneConfig {
        let mut c = FinetuneConfig::new(task, self.mode(task));
        c.epochs = self.epochs;
        c.lr = self.lr;
        c.batch_size = self.batch_size;
        c.max_train = self
            .max_train
            .map(|m| ((m as f64 * fraction).round() as usize).max(1));
        c.max_eval = self.max_eval;
        c.max_length = self.max_length;
        c.stride = c.stride.min(self.max_length / 4);
        c.patience = self.patience;
        c.fraction = fraction;
        c.seed = seed;
        c
    }
}

/// Everything `prefine suite` runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteConfig {
    /// Output directory (the `--out` flag overrides it).
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Data root (default `$PREFINE_DATA`, else `../shared/data`).
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    /// Tasks as `ner/<name>` or `tc/<name>`; empty = every task of the data root.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Training-data fractions.
    #[serde(default = "d_fractions")]
    pub fractions: Vec<f64>,
    /// Seeds (one cell per seed).
    #[serde(default = "d_seeds")]
    pub seeds: Vec<u64>,
    /// Existing backbone variants.
    #[serde(default)]
    pub variants: Vec<VariantSpec>,
    /// Strategies to pre-finetune first (each adds a variant).
    #[serde(default)]
    pub pretrain: Option<PretrainSection>,
    /// The downstream protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// The variant deltas are computed against (default: `base` if present, else the first).
    #[serde(default)]
    pub baseline: Option<String>,
    /// Keep each cell's weights (by default only metrics, logs and curves are kept).
    #[serde(default)]
    pub keep_artifacts: bool,
}

impl SuiteConfig {
    /// Reads and validates a TOML file; errors name the file and line.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates TOML text; `path` is used in messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = prefine_train::toml_config::parse_toml(text, path)
            .map_err(|(field, reason)| Error::Config { field, reason })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Variant names in table order: the listed variants, then one per pre-finetuning strategy.
    pub fn variant_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.variants.iter().map(|v| v.name.clone()).collect();
        if let Some(p) = &self.pretrain {
            v.extend(p.strategies.iter().map(|s| strategy_name(*s).to_string()));
        }
        v
    }

    /// The baseline variant.
    pub fn baseline_name(&self) -> Option<String> {
        let names = self.variant_names();
        self.baseline.clone().or_else(|| {
            names
                .iter()
                .find(|n| n.as_str() == "base")
                .or(names.first())
                .cloned()
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
        let names = self.variant_names();
        if names.is_empty() {
            return bad(
                "variants",
                "no variants: list [[variants]] or a [pretrain] section".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for n in &names {
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return bad(
                    "variants.name",
                    format!("{n:?}: use letters, digits, '-', '_' or '.'"),
                );
            }
            if !seen.insert(n.clone()) {
                return bad("variants.name", format!("{n:?} appears twice"));
            }
        }
        if let Some(b) = &self.baseline {
            if !names.contains(b) {
                return bad(
                    "baseline",
                    format!("{b:?} is not a variant ({})", names.join(", ")),
                );
            }
        }
        if self.fractions.is_empty() || self.fractions.iter().any(|&f| !(f > 0.0 && f <= 1.0)) {
            return bad(
                "fractions",
                format!("{:?}: need values in (0, 1]", self.fractions),
            );
        }
        if self.seeds.is_empty() {
            return bad("seeds", "need at least one seed".into());
        }
        for t in &self.tasks {
            parse_task(t)?;
        }
        if let Some(p) = &self.pretrain {
            if p.strategies.is_empty() {
                return bad("pretrain.strategies", "empty".into());
            }
            if p.max_steps == 0 {
                return bad("pretrain.max_steps", "must be at least 1".into());
            }
            for s in &p.strategies {
                p.config_for(*s)?;
            }
        }
        for task in [TaskKind::Ner, TaskKind::Tc] {
            self.protocol
                .finetune_config(task, 1.0, 0)
                .validate()
                .map_err(|e| Error::Config {
                    field: "protocol".into(),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }
}

/// `ner/<name>` or `tc/<name>` → family and name.
pub fn parse_task(t: &str) -> Result<(TaskKind, String)> {
    let err = || Error::Config {
        field: "tasks".into(),
        reason: format!("{t:?}: expected \"ner/<name>\" or \"tc/<name>\""),
    };
    let (fam, name) = t.split_once('/').ok_or_else(err)?;
    let kind = match fam {
        "ner" => TaskKind::Ner,
        "tc" => TaskKind::Tc,
        _ => return Err(err()),
    };
    if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
        return Err(err());
    }
    Ok((kind, name.to_string()))
}

/// The variant name of a strategy.
pub fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Ner => "ner",
        Strategy::Tc => "tc",
        Strategy::Naive => "naive",
        Strategy::Tpl => "tpl",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_variants() {
        let c = SuiteConfig::from_toml_str(
            "[[variants]]\nname = \"base\"\npath = \"m\"\n[pretrain]\nmodel = \"m\"\nstrategies = [\"tpl\"]\nmax_steps = 5\n",
            Path::new("s.toml"),
        )
        .unwrap();
        assert_eq!(c.variant_names(), vec!["base", "tpl"]);
        assert_eq!(c.baseline_name().as_deref(), Some("base"));
        assert_eq!(c.fractions, vec![1.0, 0.1]);
        assert_eq!(c.seeds.len(), 3);
        assert_eq!(c.protocol.ner, Mode::Head);
    }

    #[test]
    fn errors_name_the_line_or_field() {
        let e = SuiteConfig::from_toml_str(
            "[[variants]]\nname = \"b\"\npath = \"m\"\nseedz = [1]\n",
            Path::new("s.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("s.toml line 4") && e.contains("seedz"), "{e}");
        let e = SuiteConfig::from_toml_str(
            "fractions = [1.5]\n[[variants]]\nname = \"b\"\npath = \"m\"\n",
            Path::new("s.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fractions"), "{e}");
        let e = SuiteConfig::from_toml_str(
            "tasks = [\"pos/x\"]\n[[variants]]\nname = \"b\"\npath = \"m\"\n",
            Path::new("s.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pos/x"), "{e}");
        let e = SuiteConfig::from_toml_str(
            "[[variants]]\nname = \"b\"\npath = \"m\"\n[pretrain]\nmodel = \"m\"\nstrategies = [\"tpl\"]\nmax_steps = 5\n[pretrain.settings]\nbogus = 1\n",
            Path::new("s.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
