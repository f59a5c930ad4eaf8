//! `prefine predict`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use prefine_train::finetune::artifact::load_artifact;
use prefine_train::finetune::predict::predict_texts;

/// Arguments of `prefine predict`.
#[derive(Args)]
pub struct PredictArgs {
    /// Backbone directory (default: the one recorded in the adapter's adapter.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output directory of `prefine finetune`.
    #[arg(long)]
    adapter: PathBuf,
    /// UTF-8 file with one text per line (instead of arguments).
    #[arg(long, conflicts_with = "texts")]
    input: Option<PathBuf>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Precision of the backbone's linear weights: f32 | bf16 | int8 (quantised after loading).
    #[arg(long, default_value = "f32")]
    precision: prefine_model::Precision,
    /// Texts.
    texts: Vec<String>,
}

/// Runs `prefine predict`.
pub fn run(a: PredictArgs) -> Result<()> {
    let texts: Vec<String> = match &a.input {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let mut v = Vec::new();
            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let line = std::str::from_utf8(line).map_err(|e| {
                    anyhow::anyhow!("{}:{}: not valid UTF-8 ({e})", p.display(), i + 1)
                })?;
                let line = line.trim_end_matches('\r');
                if !line.trim().is_empty() {
                    v.push(line.to_string());
                }
            }
            if v.is_empty() {
                bail!("{}: no texts", p.display());
            }
            v
        }
        None if a.texts.is_empty() => bail!("no texts given (pass TEXT arguments or --input FILE)"),
        None => a.texts.clone(),
    };
    let mut art = load_artifact(&a.adapter, a.model.as_deref())?;
    art.model.encoder.prepare_inference(a.precision)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in texts.chunks(a.batch_size.max(1)) {
        for p in predict_texts(&art, chunk, a.batch_size.max(1))? {
            writeln!(out, "{}", serde_json::to_string(&p)?)?;
        }
    }
    Ok(())
}
