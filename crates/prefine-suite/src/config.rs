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
use prefine_train::toml_config::serde_name;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn d_fractions() -> Vec<f64> {
    vec![1.0, 0.1]
}
fn d_seeds() -> Vec<u64> {
    vec![13, 14, 15]
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
        table.insert(
            "strategy".into(),
            toml::Value::String(serde_name(&strategy)),
        );
        table.insert(
            "max_steps".into(),
            toml::Value::Integer(self.max_steps as i64),
        );
        let cfg: PretrainConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| Error::Config {
                    field: "pretrain.settings".into(),
                    reason: e.message().to_string(),
                })?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The downstream protocol: the mode per family plus the fine-tuning config every cell starts
/// from. `[protocol]` takes `ner` and `tc` (the modes) and any other key of
/// [`FinetuneConfig`] (`epochs`, `lr`, `max_length`, `[protocol.lora]`, ...), with that
/// config's defaults. The suite sets `task`, `mode`, `fraction`, `seed` and `init_adapter` per
/// cell, so those keys are refused here. Two keys read differently than in `prefine finetune`:
/// - `max_train` caps a task *before* the fraction (fraction 0.1 with a cap of 2000 trains on at
///   most 200 examples), so that the low-data column stays a tenth of the full one;
/// - `stride`, when not given, is at most a quarter of `max_length`.
#[derive(Debug, Clone, PartialEq)]
pub struct Protocol {
    /// What NER cells train (`head` = the deployment setting: frozen backbone + family adapter).
    pub ner: Mode,
    /// What TC cells train.
    pub tc: Mode,
    /// The fine-tuning config of every cell (its `task` and `mode` are placeholders).
    pub finetune: FinetuneConfig,
}

/// `[protocol]` keys the suite sets per cell.
const PER_CELL_KEYS: [&str; 5] = ["task", "mode", "fraction", "seed", "init_adapter"];

impl Default for Protocol {
    fn default() -> Self {
        Self {
            ner: Mode::Head,
            tc: Mode::Head,
            finetune: FinetuneConfig::new(TaskKind::Ner, Mode::Head),
        }
    }
}

impl Protocol {
    /// Reads the `[protocol]` table (see the type's documentation).
    fn from_table(mut table: toml::Table) -> std::result::Result<Self, String> {
        if let Some(k) = PER_CELL_KEYS.iter().find(|k| table.contains_key(**k)) {
            return Err(format!("`{k}` is set per cell by the suite; remove it"));
        }
        let mode = |v: Option<toml::Value>, key: &str| match v {
            None => Ok(Mode::Head),
            Some(v) => v.try_into::<Mode>().map_err(|e| format!("{key}: {e}")),
        };
        let ner = mode(table.remove("ner"), "ner")?;
        let tc = mode(table.remove("tc"), "tc")?;
        let stride_given = table.contains_key("stride");
        table.insert("task".into(), toml::Value::String("ner".into()));
        table.insert("mode".into(), toml::Value::String("head".into()));
        let mut finetune: FinetuneConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())?;
        if !stride_given {
            finetune.stride = finetune.stride.min(finetune.max_length / 4);
        }
        Ok(Self { ner, tc, finetune })
    }

    /// The `[protocol]` table: the modes and every fine-tuning key but the per-cell ones.
    fn to_table(&self) -> std::result::Result<toml::Table, String> {
        let mut table = toml::Table::try_from(&self.finetune).map_err(|e| e.to_string())?;
        for k in PER_CELL_KEYS {
            table.remove(k);
        }
        table.insert("ner".into(), toml::Value::String(serde_name(&self.ner)));
        table.insert("tc".into(), toml::Value::String(serde_name(&self.tc)));
        Ok(table)
    }

    /// The mode of a family.
    pub fn mode(&self, task: TaskKind) -> Mode {
        match task {
            TaskKind::Ner => self.ner,
            TaskKind::Tc => self.tc,
        }
    }

    /// The fine-tuning config of one cell (the family adapter is set by the runner).
    pub fn finetune_config(&self, task: TaskKind, fraction: f64, seed: u64) -> FinetuneConfig {
        let mut c = self.finetune.clone();
        c.task = task;
        c.mode = self.mode(task);
        if task == TaskKind::Ner {
            // TC pooling does not apply to NER cells.
            c.pooling = FinetuneConfig::new(task, c.mode).pooling;
        }
        c.max_train = self
            .finetune
            .max_train
            .map(|m| ((m as f64 * fraction).round() as usize).max(1));
        c.fraction = fraction;
        c.seed = seed;
        c
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        Self::from_table(table).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_table()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
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
                .map_err(|e| match e {
                    prefine_train::Error::Config { field, reason } => Error::Config {
                        field: format!("protocol.{field}"),
                        reason,
                    },
                    other => Error::Train(other),
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

    #[test]
    fn protocol_embeds_the_finetune_config() {
        let text = "[[variants]]\nname = \"b\"\npath = \"m\"\n[protocol]\ntc = \"lora\"\nepochs = 10\nlr = 5e-3\nmax_train = 1000\nmax_length = 64\nwarmup_ratio = 0.2\n[protocol.lora]\nrank = 4\n";
        let c = SuiteConfig::from_toml_str(text, Path::new("s.toml")).unwrap();
        let cell = c.protocol.finetune_config(TaskKind::Tc, 0.1, 14);
        let mut want = FinetuneConfig::new(TaskKind::Tc, Mode::Lora);
        want.epochs = 10;
        want.lr = Some(5e-3);
        want.max_train = Some(100);
        want.max_length = 64;
        want.stride = 16;
        want.warmup_ratio = 0.2;
        want.lora.rank = 4;
        want.fraction = 0.1;
        want.seed = 14;
        assert_eq!(cell, want);
        // A partial [protocol.lora] keeps the fine-tuning defaults of the other keys.
        assert_eq!(cell.lora.alpha, FinetuneConfig::default_lora().alpha);
        assert_eq!(c.protocol.mode(TaskKind::Ner), Mode::Head);
        // Saved and read back unchanged.
        let again: SuiteConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn protocol_refuses_per_cell_and_unknown_keys() {
        let bad = |extra: &str| {
            SuiteConfig::from_toml_str(
                &format!("[[variants]]\nname = \"b\"\npath = \"m\"\n[protocol]\n{extra}\n"),
                Path::new("s.toml"),
            )
            .unwrap_err()
            .to_string()
        };
        let e = bad("seed = 3");
        assert!(e.contains("s.toml line 4") && e.contains("`seed`"), "{e}");
        let e = bad("epoch = 3");
        assert!(e.contains("epoch") && e.contains("s.toml line"), "{e}");
        let e = bad("ner = \"partial\"");
        assert!(e.contains("ner"), "{e}");
        let e = bad("epochs = 0");
        assert!(e.contains("epochs"), "{e}");
    }
}
