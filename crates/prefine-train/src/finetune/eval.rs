//! Running a [`TaskModel`] over a dataset: predictions and metrics.

use candle_core::D;
use prefine_data::{LabelSet, NerSentence, TcExample};
use prefine_eval::{ner_metrics, tc_metrics, NerMetrics, NerMode, TcMetrics};
use prefine_tokenize::TextTokenizer;
use serde::Serialize;
use serde_json::{json, Value};

use super::features::{bucketed_batches, ner_features, pad_batch, tc_features};
use super::model::TaskModel;
use crate::error::Result;

/// Word-level NER predictions: the tag and its probability for every word of every sentence.
#[derive(Debug, Clone)]
pub struct NerPredictions {
    /// Tags per sentence.
    pub tags: Vec<Vec<String>>,
    /// Probability of each predicted tag.
    pub probs: Vec<Vec<f32>>,
}

/// Predicts a tag for every word (from the window that owns it).
pub fn predict_ner(
    model: &TaskModel,
    tok: &TextTokenizer,
    sentences: &[NerSentence],
    labels: &LabelSet,
    max_length: usize,
    stride: usize,
    batch: usize,
) -> Result<NerPredictions> {
    let feats = ner_features(tok, sentences, labels, max_length, stride)?;
    let mut tags: Vec<Vec<String>> = sentences
        .iter()
        .map(|s| vec!["O".to_string(); s.tokens.len()])
        .collect();
    let mut probs: Vec<Vec<f32>> = sentences
        .iter()
        .map(|s| vec![0.0; s.tokens.len()])
        .collect();
    let lengths: Vec<usize> = feats.iter().map(|f| f.ids.len()).collect();
    for b in bucketed_batches(&lengths, batch, None) {
        let seqs: Vec<&[u32]> = b.iter().map(|&i| feats[i].ids.as_slice()).collect();
        let input = pad_batch(&seqs, tok.pad_id())?;
        let p = candle_nn::ops::softmax_last_dim(&model.logits(&input, None)?)?.to_vec3::<f32>()?;
        for (row, &fi) in b.iter().enumerate() {
            let f = &feats[fi];
            for (pos, owned) in f.owned.iter().enumerate() {
                if let Some((wi, _)) = owned {
                    let (best, pb) = argmax(&p[row][pos]);
                    tags[f.sentence][*wi] = labels.label(best).unwrap_or("O").to_string();
                    probs[f.sentence][*wi] = pb;
                }
            }
        }
    }
    Ok(NerPredictions { tags, probs })
}

/// Class probabilities for every text.
pub fn predict_tc(
    model: &TaskModel,
    tok: &TextTokenizer,
    examples: &[TcExample],
    labels: &LabelSet,
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let (feats, truncated) = tc_features(tok, examples, labels)?;
    if truncated > 0 {
        tracing::warn!("{truncated} text(s) longer than the model limit were truncated");
    }
    let mut out = vec![Vec::new(); feats.len()];
    let lengths: Vec<usize> = feats.iter().map(|f| f.ids.len()).collect();
    for b in bucketed_batches(&lengths, batch, None) {
        let seqs: Vec<&[u32]> = b.iter().map(|&i| feats[i].ids.as_slice()).collect();
        let input = pad_batch(&seqs, tok.pad_id())?;
        let p =
            candle_nn::ops::softmax(&model.logits(&input, None)?, D::Minus1)?.to_vec2::<f32>()?;
        for (row, &fi) in b.iter().enumerate() {
            out[fi] = p[row].clone();
        }
    }
    Ok(out)
}

pub use prefine_runtime::predict::argmax;

/// NER scores in both seqeval modes.
#[derive(Debug, Clone, Serialize)]
pub struct NerScores {
    /// Strict IOB2 (the headline numbers).
    pub strict: NerMetrics,
    /// seqeval's default (conlleval) mode.
    pub lenient: NerMetrics,
    /// Gold tags absent from the training label set.
    pub unseen_labels: Vec<String>,
}

impl NerScores {
    /// The JSON object of `metrics.json` / `prefine evaluate`: `f1`, `precision`, `recall`,
    /// `per_type` (strict unless `lenient_primary`), plus the other mode and diagnostics.
    pub fn to_json(&self, lenient_primary: bool) -> Value {
        let (main, other, other_name) = if lenient_primary {
            (&self.lenient, &self.strict, "strict")
        } else {
            (&self.strict, &self.lenient, "lenient")
        };
        let per_type: serde_json::Map<String, Value> = main
            .per_type
            .iter()
            .map(|(k, t)| (k.clone(), json!({"precision": t.precision, "recall": t.recall, "f1": t.f1, "support": t.support})))
            .collect();
        json!({
            "mode": if lenient_primary { "conlleval" } else { "strict" },
            "f1": main.f1, "precision": main.precision, "recall": main.recall,
            "per_type": per_type,
            "support": main.support, "predicted": main.predicted,
            other_name: {"f1": other.f1, "precision": other.precision, "recall": other.recall},
            "token_accuracy": main.token_accuracy,
            "unseen_labels": self.unseen_labels,
        })
    }
}

/// Scores predictions against gold sentences.
pub fn score_ner(
    gold: &[NerSentence],
    pred: &[Vec<String>],
    labels: &LabelSet,
) -> Result<NerScores> {
    let g: Vec<&[String]> = gold.iter().map(|s| s.tags.as_slice()).collect();
    Ok(NerScores {
        strict: ner_metrics(&g, pred, NerMode::Strict)?,
        lenient: ner_metrics(&g, pred, NerMode::Lenient)?,
        unseen_labels: labels.check_unseen_ner(gold),
    })
}

/// TC scores plus unseen labels.
pub fn score_tc(
    gold: &[TcExample],
    probs: &[Vec<f32>],
    labels: &LabelSet,
) -> Result<(TcMetrics, Vec<String>)> {
    let g: Vec<&str> = gold.iter().map(|e| e.label.as_str()).collect();
    let p: Vec<&str> = probs
        .iter()
        .map(|p| labels.label(argmax(p).0).unwrap_or(""))
        .collect();
    Ok((tc_metrics(&g, &p)?, labels.check_unseen_examples(gold)))
}

/// The JSON object for TC metrics: `accuracy`, `macro_f1`, `micro_f1`, per label, confusion.
pub fn tc_json(m: &TcMetrics, unseen: &[String]) -> Value {
    let mut v = serde_json::to_value(m).expect("metrics serialise");
    v["unseen_labels"] = json!(unseen);
    v
}
