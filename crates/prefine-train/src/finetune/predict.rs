//! Predictions on raw text: entities with character offsets (NER) or label scores (TC).

use prefine_data::{NerSentence, TcExample};
use prefine_eval::{entities, NerMode};
use prefine_tokenize::split_words;

use super::artifact::LoadedArtifact;
use super::config::TaskKind;
use super::eval::{argmax, predict_ner, predict_tc};
use crate::error::{Error, Result};

pub use prefine_runtime::{PredictedEntity, Prediction};

/// Predicts for raw texts.
pub fn predict_texts(
    art: &LoadedArtifact,
    texts: &[String],
    batch: usize,
) -> Result<Vec<Prediction>> {
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(Error::Data(format!("text #{} is empty", i + 1)));
    }
    match art.manifest.task {
        TaskKind::Ner => {
            let split: Vec<Vec<(&str, (usize, usize))>> =
                texts.iter().map(|t| split_words(t)).collect();
            let sentences: Vec<NerSentence> = split
                .iter()
                .map(|w| NerSentence {
                    tokens: w.iter().map(|(s, _)| s.to_string()).collect(),
                    tags: vec!["O".into(); w.len()],
                })
                .collect();
            let p = predict_ner(
                &art.model,
                &art.tokenizer,
                &sentences,
                &art.labels,
                art.manifest.max_length,
                art.manifest.stride,
                batch,
            )?;
            let mut out = Vec::new();
            for (i, text) in texts.iter().enumerate() {
                let words = &split[i];
                let ents = entities(&p.tags[i], NerMode::Lenient)?;
                let char_of = |byte: usize| text[..byte].chars().count();
                let list = ents
                    .into_iter()
                    .map(|e| {
                        let (bs, be) = (words[e.start].1 .0, words[e.end - 1].1 .1);
                        let score = p.probs[i][e.start..e.end].iter().sum::<f32>()
                            / (e.end - e.start) as f32;
                        PredictedEntity {
                            start: char_of(bs),
                            end: char_of(be),
                            entity_type: e.entity_type,
                            text: text[bs..be].to_string(),
                            score,
                        }
                    })
                    .collect();
                out.push(Prediction::Ner {
                    text: text.clone(),
                    entities: list,
                });
            }
            Ok(out)
        }
        TaskKind::Tc => {
            let ex: Vec<TcExample> = texts
                .iter()
                .map(|t| TcExample {
                    text: t.clone(),
                    label: String::new(),
                })
                .collect();
            let probs = predict_tc(&art.model, &art.tokenizer, &ex, &art.labels, batch)?;
            Ok(texts
                .iter()
                .zip(probs)
                .map(|(t, p)| Prediction::Tc {
                    text: t.clone(),
                    label: art.labels.label(argmax(&p).0).unwrap_or("").to_string(),
                    scores: p
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| (art.labels.label(i).unwrap_or("").to_string(), v))
                        .collect(),
                })
                .collect())
        }
    }
}
