//! `prefine score`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use prefine_data::{read_conll, ConllOptions};
use prefine_eval::{conlleval_report, ner_metrics, NerMode};

/// Arguments of `prefine score`.
#[derive(Args)]
pub struct ScoreArgs {
    /// Gold CoNLL file.
    #[arg(long)]
    gold: PathBuf,
    /// Predicted CoNLL file (same tokens, predicted tags in the last column).
    #[arg(long)]
    pred: PathBuf,
    /// strict (seqeval strict IOB2) | conlleval (seqeval default, lenient).
    #[arg(long, default_value = "strict")]
    mode: String,
    /// Print the metrics as JSON instead of the conlleval report.
    #[arg(long)]
    json: bool,
}

/// Runs `prefine score`.
pub fn run(a: ScoreArgs) -> Result<()> {
    let mode = match a.mode.as_str() {
        "strict" => NerMode::Strict,
        "conlleval" | "lenient" => NerMode::Lenient,
        m => bail!("--mode {m:?}: expected strict or conlleval"),
    };
    let gold = read_conll(&a.gold, &ConllOptions::default())?;
    let pred = read_conll(&a.pred, &ConllOptions::default())?;
    if gold.sentences.len() != pred.sentences.len() {
        bail!(
            "{} has {} sentences but {} has {}",
            a.gold.display(),
            gold.sentences.len(),
            a.pred.display(),
            pred.sentences.len()
        );
    }
    for (i, (g, p)) in gold.sentences.iter().zip(&pred.sentences).enumerate() {
        if g.tokens != p.tokens {
            bail!(
                "sentence {} differs between {} and {} (tokens must match)",
                i + 1,
                a.gold.display(),
                a.pred.display()
            );
        }
    }
    let g: Vec<&[String]> = gold.sentences.iter().map(|s| s.tags.as_slice()).collect();
    let p: Vec<&[String]> = pred.sentences.iter().map(|s| s.tags.as_slice()).collect();
    let m = ner_metrics(&g, &p, mode)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print!("{}", conlleval_report(&m));
    }
    Ok(())
}
