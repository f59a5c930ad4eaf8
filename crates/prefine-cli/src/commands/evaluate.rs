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
}

/// Runs `prefine evaluate`.
pub fn run(a: EvaluateArgs) -> Result<()> {
    let v = prefine_train::finetune::evaluate_file(
        &a.adapter,
        a.model.as_deref(),
        &a.data,
        a.conlleval,
    )?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
