//! `prefine finetune`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use prefine_train::finetune::config::FinetuneOverrides;
use prefine_train::finetune::{
    run_finetune_with, FinetuneConfig, Mode, RunHooks, TaskKind, TcPooling,
};

use super::serde_value;

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
    #[arg(long, value_parser = serde_value::<TaskKind>)]
    task: Option<TaskKind>,
    /// head | lora | full
    #[arg(long, value_parser = serde_value::<Mode>)]
    mode: Option<Mode>,
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
    #[arg(long, value_parser = serde_value::<TcPooling>)]
    pooling: Option<TcPooling>,
    /// Repair I-X after O into B-X when reading CoNLL.
    #[arg(long)]
    repair_iob: bool,
    /// Tag scheme of the CoNLL files: iob2 | iob1 | bioes | bilou | auto (converted to IOB2).
    #[arg(long, value_parser = serde_value::<prefine_data::TagScheme>)]
    tag_scheme: Option<prefine_data::TagScheme>,
    /// Continue an interrupted run from the newest checkpoint in OUT/checkpoints (same settings).
    #[arg(long)]
    resume: bool,
    /// Write a checkpoint every N optimizer steps (besides each epoch end).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Matmul precision while training: f32 | bf16 (mixed precision: bf16 operands, f32
    /// accumulation and weights).
    #[arg(long, value_parser = super::parse_training_precision)]
    precision: Option<prefine_model::Precision>,
}

/// Builds the config: file first, then the flags as typed overrides; every setting validated.
pub fn build_config(a: &FinetuneArgs) -> Result<FinetuneConfig> {
    let overrides = FinetuneOverrides {
        task: a.task,
        mode: a.mode,
        fraction: a.fraction,
        max_train: a.max_train,
        max_eval: a.max_eval,
        seed: a.seed,
        epochs: a.epochs,
        lr: a.lr,
        batch_size: a.batch_size,
        grad_accumulation: a.grad_accumulation,
        patience: a.patience,
        init_adapter: a.init_adapter.clone(),
        pooling: a.pooling,
        repair_iob: a.repair_iob,
        tag_scheme: a.tag_scheme,
        checkpoint_every: a.checkpoint_every,
        precision: a.precision,
    };
    FinetuneConfig::resolve(a.config.as_deref(), &overrides).map_err(|e| match &a.config {
        Some(p) => super::checks::in_config_file(e, p, true),
        None => e.into(),
    })
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
