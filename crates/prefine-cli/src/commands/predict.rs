//! `prefine predict`: one application (a `prefine finetune` output or a PEFT adapter) on the
//! on-device runtime.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use prefine_runtime::{Aggregation, Engine};

/// Arguments of `prefine predict`.
#[derive(Args)]
pub struct PredictArgs {
    /// Backbone directory (default: the one recorded in the adapter's adapter.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output directory of `prefine finetune` (or a PEFT adapter with labels.json).
    #[arg(long)]
    adapter: PathBuf,
    /// UTF-8 file with one text per line (instead of arguments).
    #[arg(long, conflicts_with = "texts")]
    input: Option<PathBuf>,
    /// Texts per call.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Precision of the backbone's linear weights: f32 | bf16 | int8 (quantised after loading).
    #[arg(long, default_value = "f32")]
    precision: prefine_model::Precision,
    /// NER: how subword tags become entities (none | simple | first | average | max), as the
    /// transformers token-classification pipeline's `aggregation_strategy`.
    #[arg(long, default_value = "first")]
    aggregation_strategy: Aggregation,
    /// Texts.
    texts: Vec<String>,
}

/// Reads one text per non-blank line of a UTF-8 file; errors name the line.
pub fn read_lines(p: &std::path::Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut v = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not valid UTF-8 ({e})", p.display(), i + 1))?;
        let line = line.trim_end_matches('\r');
        if !line.trim().is_empty() {
            v.push(line.to_string());
        }
    }
    if v.is_empty() {
        bail!("{}: no texts", p.display());
    }
    Ok(v)
}

/// Runs `prefine predict`.
pub fn run(a: PredictArgs) -> Result<()> {
    let texts: Vec<String> = match &a.input {
        Some(p) => read_lines(p)?,
        None if a.texts.is_empty() => bail!("no texts given (pass TEXT arguments or --input FILE)"),
        None => a.texts.clone(),
    };
    let engine = Engine::open_application(&a.adapter, a.model.as_deref(), a.precision, "app")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in texts.chunks(a.batch_size.max(1)) {
        for p in engine.predict_with("app", chunk, a.aggregation_strategy)? {
            writeln!(out, "{}", serde_json::to_string(&p)?)?;
        }
    }
    Ok(())
}
