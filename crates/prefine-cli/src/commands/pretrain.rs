//! `prefine pretrain`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use prefine_model::ops::MatmulPrecision;
use prefine_train::pretrain::{resolve_config, PretrainConfig, Pretrainer, Strategy};

/// Arguments of `prefine pretrain`.
#[derive(Args)]
pub struct PretrainArgs {
    /// ner | tc | naive | tpl
    #[arg(long)]
    strategy: Option<String>,
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
    #[arg(long, value_parser = parse_precision)]
    precision: Option<MatmulPrecision>,
}

fn parse_precision(s: &str) -> std::result::Result<MatmulPrecision, String> {
    MatmulPrecision::parse(s).ok_or_else(|| format!("{s:?}: expected f32 or bf16"))
}

/// Runs `prefine pretrain`.
pub fn run(a: PretrainArgs) -> Result<()> {
    let strategy = match a.strategy.as_deref() {
        None => None,
        Some("ner") => Some(Strategy::Ner),
        Some("tc") => Some(Strategy::Tc),
        Some("naive") => Some(Strategy::Naive),
        Some("tpl") => Some(Strategy::Tpl),
        Some(s) => anyhow::bail!("--strategy {s:?}: expected ner, tc, naive or tpl"),
    };
    if let Some(p) = &a.config {
        // Check the file on its own first: line numbers then refer to the file as written, and
        // a bad value is reported even when a flag (--max-steps) overrides it.
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        if let Err(e) = PretrainConfig::from_toml_str(&text, p) {
            if !(strategy.is_some() && e.to_string().contains("missing field `strategy`")) {
                return Err(super::checks::in_config_file(e, p, false));
            }
        }
    }
    let mut cfg =
        resolve_config(a.config.as_deref(), strategy, a.max_steps).map_err(|e| {
            match &a.config {
                Some(p) => super::checks::in_config_file(e, p, true),
                None => e.into(),
            }
        })?;
    if let Some(p) = a.precision {
        cfg.precision = p;
    }
    // The LoRA settings are otherwise only checked once the data and the model are loaded.
    if cfg.strategy == Strategy::Tpl {
        cfg.tpl_lora.validate(usize::MAX).map_err(|e| {
            let e = anyhow::Error::from(e).context("tpl_lora");
            match &a.config {
                Some(p) => super::checks::in_config_file(e, p, true),
                None => e,
            }
        })?;
    }
    super::checks::check_output_dir(&a.out)?;
    let data = prefine_data::DataRoot::resolve(a.data.as_deref())?;
    let mut t = Pretrainer::from_paths(cfg, &a.model, data.path())?;
    let ckpt = a.out.join("checkpoint");
    if a.resume {
        t.load_checkpoint(&ckpt)
            .with_context(|| format!("resuming from {}", ckpt.display()))?;
        tracing::info!("resumed at step {}", t.step());
    } else {
        let _ = std::fs::remove_file(a.out.join("metrics.jsonl"));
    }
    let report = t.run(&a.out)?;
    t.save_outputs(&a.out, &a.model)?;
    t.save_checkpoint(&ckpt)?;
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
