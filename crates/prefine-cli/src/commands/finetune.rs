//! `prefine finetune`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use prefine_train::finetune::{run_finetune_with, FinetuneConfig, RunHooks};

/// Arguments of `prefine finetune`. Every option can also be set in `--config FILE` (TOML, the
/// keys of `FinetuneConfig`); flags given here override the file.
#[derive(Args)]
pub struct FinetuneArgs {
    /// Backbone: a Hugging Face model directory.
    #[arg(long, default_value_os_t = super::default_model_dir())]
    model: PathBuf,
    /// Directory with train/dev/test files (NER: .conll; TC: .jsonl, .csv or .tsv).
    #[arg(long)]
    data: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// ner | tc
    #[arg(long)]
    task: Option<String>,
    /// head | lora | full
    #[arg(long)]
    mode: Option<String>,
    /// TOML file with any FinetuneConfig keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Fraction of the training data (seeded subsample).
    #[arg(long)]
    fraction: Option<f64>,
    /// Cap on training examples.
    #[arg(long)]
    max_train: Option<usize>,
    /// Cap on dev and test examples (a fixed seeded subset).
    #[arg(long)]
    max_eval: Option<usize>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accumulation: Option<usize>,
    /// Early-stopping patience in epochs.
    #[arg(long)]
    patience: Option<usize>,
    /// Pre-finetuned family adapter (PEFT directory) to start from.
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// TC pooling: mean | cls | pooler.
    #[arg(long)]
    pooling: Option<String>,
    /// Repair I-X after O into B-X when reading CoNLL.
    #[arg(long)]
    repair_iob: bool,
    /// Tag scheme of the CoNLL files: iob2 | iob1 | bioes | bilou | auto (converted to IOB2).
    #[arg(long)]
    tag_scheme: Option<String>,
    /// Continue an interrupted run from the newest checkpoint in OUT/checkpoints (same settings).
    #[arg(long)]
    resume: bool,
    /// Write a checkpoint every N optimizer steps (besides each epoch end).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Matmul precision while training: f32 | bf16 (mixed precision: bf16 operands, f32
    /// accumulation and weights).
    #[arg(long)]
    precision: Option<String>,
}

/// Builds the config: file first, then flags.
pub fn build_config(a: &FinetuneArgs) -> Result<FinetuneConfig> {
    let mut table: toml::Table = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            // Validate the file on its own first, so unknown keys are reported with their line
            // (task and mode may come from flags).
            if let Err(e) = FinetuneConfig::from_toml_str(&text, p) {
                let msg = e.to_string();
                if !(msg.contains("missing field `task`") || msg.contains("missing field `mode`")) {
                    return Err(super::checks::in_config_file(e, p, false));
                }
            }
            toml::from_str(&text)?
        }
        None => toml::Table::new(),
    };
    let mut set = |k: &str, v: Option<toml::Value>| {
        if let Some(v) = v {
            table.insert(k.to_string(), v);
        }
    };
    set("task", a.task.clone().map(toml::Value::String));
    set("mode", a.mode.clone().map(toml::Value::String));
    set("fraction", a.fraction.map(toml::Value::Float));
    set(
        "max_train",
        a.max_train.map(|v| toml::Value::Integer(v as i64)),
    );
    set(
        "max_eval",
        a.max_eval.map(|v| toml::Value::Integer(v as i64)),
    );
    set(
        "checkpoint_every",
        a.checkpoint_every.map(|v| toml::Value::Integer(v as i64)),
    );
    set("seed", a.seed.map(|v| toml::Value::Integer(v as i64)));
    set("epochs", a.epochs.map(|v| toml::Value::Integer(v as i64)));
    set("lr", a.lr.map(toml::Value::Float));
    set(
        "batch_size",
        a.batch_size.map(|v| toml::Value::Integer(v as i64)),
    );
    set(
        "grad_accumulation",
        a.grad_accumulation.map(|v| toml::Value::Integer(v as i64)),
    );
    set(
        "patience",
        a.patience.map(|v| toml::Value::Integer(v as i64)),
    );
    set(
        "init_adapter",
        a.init_adapter
            .as_ref()
            .map(|p| toml::Value::String(p.display().to_string())),
    );
    set("pooling", a.pooling.clone().map(toml::Value::String));
    set("tag_scheme", a.tag_scheme.clone().map(toml::Value::String));
    set("precision", a.precision.clone().map(toml::Value::String));
    if a.repair_iob {
        set("repair_iob", Some(toml::Value::Boolean(true)));
    }
    if !table.contains_key("task") || !table.contains_key("mode") {
        anyhow::bail!(
            "--task (ner|tc) and --mode (head|lora|full) are required (as flags or in --config)"
        );
    }
    let text = toml::to_string(&table)?;
    let origin = a
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("<command line>"));
    let cfg = FinetuneConfig::from_toml_str(&text, &origin).map_err(|e| match &a.config {
        Some(p) => super::checks::in_config_file(e, p, true),
        None => e.into(),
    })?;
    // The LoRA settings are otherwise only checked once the data and the model are loaded.
    if cfg.mode == prefine_train::finetune::Mode::Lora {
        cfg.lora.validate(usize::MAX).map_err(|e| match &a.config {
            Some(p) => super::checks::in_config_file(e, p, true),
            None => e.into(),
        })?;
    }
    Ok(cfg)
}

/// Runs `prefine finetune`.
pub fn run(a: FinetuneArgs) -> Result<()> {
    let cfg = build_config(&a)?;
    super::checks::check_output_dir(&a.out)?;
    super::checks::check_tokenizer_fits_model(&a.model)?;
    if let Some(dir) = &cfg.init_adapter {
        let c = dir.join(prefine_model::peft::ADAPTER_CONFIG);
        if !c.is_file() {
            anyhow::bail!(
                "init_adapter {}: no {} (not a PEFT adapter directory)",
                dir.display(),
                prefine_model::peft::ADAPTER_CONFIG
            );
        }
    }
    let hooks = RunHooks {
        resume: a.resume,
        ..Default::default()
    };
    let report = run_finetune_with(&cfg, &a.model, &a.data, &a.out, hooks)?;
    tracing::info!(
        "best epoch {}, train {:.1}s, wall {:.1}s; wrote {}",
        report.best_epoch,
        report.train_seconds,
        report.wall_seconds,
        a.out.display()
    );
    println!("{}", serde_json::to_string(&report.metrics)?);
    Ok(())
}
