//! `prefine predict`: one application (a `prefine finetune` output or a PEFT adapter) on the
//! on-device runtime.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use prefine_runtime::zero_shot::parse_name_list;
use prefine_runtime::{Aggregation, Engine};
use prefine_runtime::{ZeroShot, ZeroShotConfig};

/// Arguments of `prefine predict`: a fine-tuned adapter, or zero-shot from a pre-finetuned
/// backbone with entity types or labels given by name.
#[derive(Args)]
pub struct PredictArgs {
    /// Backbone directory (default: the one recorded in the adapter's adapter.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output directory of `prefine finetune` (or a PEFT adapter with labels.json).
    #[arg(long, required_unless_present = "backbone")]
    adapter: Option<PathBuf>,
    /// Zero-shot: a `prefine pretrain` output (or a plain model directory: the base-model
    /// baseline); give `--entity-types` or `--labels`.
    #[arg(long, conflicts_with_all = ["adapter", "model"])]
    backbone: Option<PathBuf>,
    /// Zero-shot NER: comma-separated entity-type names ("person, organisation, book title").
    #[arg(long, requires = "backbone", conflicts_with = "labels")]
    entity_types: Option<String>,
    /// Zero-shot classification: comma-separated label names ("positive, negative").
    #[arg(long, requires = "backbone")]
    labels: Option<String>,
    /// Zero-shot classification: a template for the label names, `{}` marks the name
    /// ("This text is about {}.").
    #[arg(long, requires = "labels")]
    template: Option<String>,
    /// Zero-shot NER: score a word must reach to take a type (default: chosen on dev data,
    /// see docs/EXPERIMENTS.md).
    #[arg(long, requires = "entity_types")]
    threshold: Option<f32>,
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
    if let Some(dir) = &a.backbone {
        return zero_shot(&a, dir, &texts);
    }
    let adapter = a.adapter.as_deref().expect("clap: --adapter or --backbone");
    let engine = Engine::open_application(adapter, a.model.as_deref(), a.precision, "app")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in texts.chunks(a.batch_size.max(1)) {
        for p in engine.predict_with("app", chunk, a.aggregation_strategy)? {
            writeln!(out, "{}", serde_json::to_string(&p)?)?;
        }
    }
    Ok(())
}

/// `prefine predict --backbone DIR --entity-types ... | --labels ...`.
fn zero_shot(a: &PredictArgs, dir: &std::path::Path, texts: &[String]) -> Result<()> {
    let mut zs = ZeroShot::load(
        dir,
        ZeroShotConfig {
            batch_size: a.batch_size.max(1),
            ..Default::default()
        },
    )?;
    zs.prepare_inference(a.precision)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let preds = match (&a.entity_types, &a.labels) {
        (Some(types), None) => zs.predict_ner(texts, &parse_name_list(types), a.threshold)?,
        (None, Some(labels)) => {
            zs.predict_tc(texts, &parse_name_list(labels), a.template.as_deref())?
        }
        _ => bail!("zero-shot prediction (--backbone) needs --entity-types or --labels"),
    };
    for p in preds {
        writeln!(out, "{}", serde_json::to_string(&p)?)?;
    }
    Ok(())
}
