//! `prefine evaluate`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Arguments of `prefine evaluate`.
#[derive(Args)]
pub struct EvaluateArgs {
    /// Backbone directory (default: the one recorded in the adapter's adapter.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output directory of `prefine finetune`.
    #[arg(long)]
    adapter: PathBuf,
    /// Data file (.conll for NER; .jsonl/.csv/.tsv for TC).
    #[arg(long)]
    data: PathBuf,
    /// NER: report seqeval's lenient (conlleval) mode as the headline instead of strict IOB2.
    #[arg(long)]
    conlleval: bool,
    /// Precision of the backbone's linear weights: f32 | bf16 | int8 (quantised after loading).
    #[arg(long, default_value = "f32")]
    precision: prefine_model::Precision,
}

/// Runs `prefine evaluate`.
pub fn run(a: EvaluateArgs) -> Result<()> {
    let v = prefine_train::finetune::evaluate_file_at(
        &a.adapter,
        a.model.as_deref(),
        &a.data,
        a.conlleval,
        a.precision,
    )?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
