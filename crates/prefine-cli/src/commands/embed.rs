//! `prefine embed`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use prefine_model::Pooling;
use prefine_runtime::{Embedder, EmbedderConfig};

/// Arguments of `prefine embed`.
#[derive(Args)]
pub struct EmbedArgs {
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, default_value_os_t = super::default_model_dir())]
    model: PathBuf,
    /// Pooling over token states.
    #[arg(long, value_enum, default_value = "mean")]
    pooling: PoolingArg,
    /// Do not L2-normalise the embeddings.
    #[arg(long)]
    no_normalize: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Read texts from this UTF-8 file, one per line (instead of arguments).
    #[arg(long, conflicts_with = "texts")]
    input: Option<PathBuf>,
    /// Texts to embed.
    texts: Vec<String>,
}

/// One output line; fields in this order.
#[derive(serde::Serialize)]
struct EmbeddingLine<'a> {
    text: &'a str,
    embedding: &'a [f32],
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PoolingArg {
    Cls,
    Mean,
}

fn read_lines(path: &PathBuf) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut texts = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not valid UTF-8 ({e})", path.display(), i + 1))?;
        let line = line.trim_end_matches('\r');
        if !line.trim().is_empty() {
            texts.push(line.to_string());
        }
    }
    if texts.is_empty() {
        bail!("{}: no texts (the file is empty)", path.display());
    }
    Ok(texts)
}

/// Runs `prefine embed`.
pub fn run(a: EmbedArgs) -> Result<()> {
    let texts = match &a.input {
        Some(p) => read_lines(p)?,
        None if a.texts.is_empty() => bail!("no texts given (pass TEXT arguments or --input FILE)"),
        None => a.texts.clone(),
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        bail!("text #{} is empty", i + 1);
    }
    let cfg = EmbedderConfig {
        pooling: match a.pooling {
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::Mean => Pooling::Mean,
        },
        normalize: !a.no_normalize,
        batch_size: a.batch_size,
        group: None,
    };
    super::checks::check_tokenizer_fits_model(&a.model)?;
    let embedder = Embedder::from_model_dir(&a.model, cfg)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let bar = indicatif::ProgressBar::new(texts.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} texts [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    if texts.len() <= a.batch_size {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in texts.chunks(a.batch_size.max(1)) {
        let embs = embedder.embed(chunk)?;
        for (t, e) in chunk.iter().zip(embs) {
            let line = serde_json::to_string(&EmbeddingLine {
                text: t,
                embedding: &e,
            })?;
            writeln!(out, "{line}")?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}
