//! `prefine pretrain`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use prefine_train::pretrain::{resolve_config, run_pretrain, PretrainOverrides, Start, Strategy};

/// Arguments of `prefine pretrain`.
#[derive(Args)]
pub struct PretrainArgs {
    /// ner | tc | naive | tpl
    #[arg(long, value_parser = super::serde_value::<Strategy>)]
    strategy: Option<Strategy>,
    /// Backbone to start from.
    #[arg(long, default_value_os_t = super::default_model_dir())]
    model: PathBuf,
    /// Output directory: backbone/, adapters/{ner,tc}/ (tpl), metrics.jsonl, config.toml, checkpoint/.
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps (overrides the config).
    #[arg(long)]
    max_steps: Option<u64>,
    /// TOML file with PretrainConfig keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data root holding pretrain/ (default $PREFINE_DATA or ../shared/data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Continue from OUT/checkpoint.
    #[arg(long)]
    resume: bool,
    /// Matmul precision: f32 | bf16 (mixed precision: bf16 operands, f32 accumulation and
    /// weights); overrides the config.
    #[arg(long, value_parser = super::parse_training_precision)]
    precision: Option<prefine_model::Precision>,
}

/// Runs `prefine pretrain`.
pub fn run(a: PretrainArgs) -> Result<()> {
    let overrides = PretrainOverrides {
        strategy: a.strategy,
        max_steps: a.max_steps,
        precision: a.precision,
    };
    let cfg = resolve_config(a.config.as_deref(), &overrides).map_err(|e| match &a.config {
        Some(p) => super::checks::in_config_file(e, p, true),
        None => e.into(),
    })?;
    super::checks::check_output_dir(&a.out)?;
    let data = prefine_data::DataRoot::resolve(a.data.as_deref())?;
    let start = if a.resume {
        Start::Resume
    } else {
        Start::Fresh
    };
    let report = run_pretrain(cfg, &a.model, data.path(), &a.out, start)?;
    eprintln!(
        "pre-finetuning done: {} steps in {:.0}s",
        report.steps, report.seconds
    );
    for (f, l) in &report.last_loss {
        eprintln!("  {f} loss (last 100 batches): {l:.4}");
    }
    if !report.mean_conflict.is_empty() {
        eprintln!("  NER-vs-TC gradient cosine per layer (mean over diagnostics):");
        for (k, v) in &report.mean_conflict {
            eprintln!("    {k:<12} {v:+.3}");
        }
    }
    println!(
        "{}",
        serde_json::json!({"steps": report.steps, "seconds": report.seconds, "last_loss": report.last_loss,
                           "mean_conflict": report.mean_conflict, "out": a.out})
    );
    Ok(())
}
