//! Predictions in `prefine predict`'s JSON shape, and NER decoding from subword probabilities
//! to character spans with the aggregation strategies of the transformers token-classification
//! pipeline (`none`, `simple`, `first`, `average`, `max`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use prefine_data::LabelSet;
use serde::{Deserialize, Serialize};

/// One predicted entity; `start`/`end` are character offsets into the text (end exclusive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictedEntity {
    /// First character.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
    /// Entity type (the full tag, e.g. `B-PER`, with [`Aggregation::None`]).
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The covered text.
    pub text: String,
    /// Mean probability of the entity's words (or subwords) tags.
    pub score: f32,
}

/// One prediction line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prediction {
    /// NER.
    Ner {
        /// The input.
        text: String,
        /// Entities found.
        entities: Vec<PredictedEntity>,
    },
    /// TC.
    Tc {
        /// The input.
        text: String,
        /// The best label.
        label: String,
        /// Probability per label.
        scores: BTreeMap<String, f32>,
    },
}

/// A prediction plus `"truncated": true` for a TC text that was cut to the adapter's
/// `max_length` (NER texts are windowed, never cut).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextPrediction {
    /// The prediction.
    #[serde(flatten)]
    pub prediction: Prediction,
    /// Whether the text was truncated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// How subword predictions become entities, as in the transformers token-classification
/// pipeline's `aggregation_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Every subword with a non-`O` tag on its own, typed with its full tag (`B-PER`).
    None,
    /// Subword tags grouped: a run of one type that does not restart at a `B-` tag.
    Simple,
    /// Word tags from each word's first subword (the position the head was trained on), then
    /// grouped. The default: what fine-tuning optimises.
    #[default]
    First,
    /// Word tags from the mean of the word's subword distributions, then grouped.
    Average,
    /// Word tags from the word's most confident subword, then grouped.
    Max,
}

impl Aggregation {
    /// All strategies, by name.
    pub const ALL: [Aggregation; 5] = [
        Aggregation::None,
        Aggregation::Simple,
        Aggregation::First,
        Aggregation::Average,
        Aggregation::Max,
    ];

    /// The strategy's name.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::None => "none",
            Aggregation::Simple => "simple",
            Aggregation::First => "first",
            Aggregation::Average => "average",
            Aggregation::Max => "max",
        }
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("unknown aggregation strategy {s:?} (none, simple, first, average, max)")
            })
    }
}

/// One subword of a NER text: its word, its byte span in the text and its class
/// probabilities (empty when no window predicted it).
#[derive(Debug, Clone, Default)]
pub struct SubwordScores {
    /// The word it belongs to.
    pub word: usize,
    /// Byte offsets in the text.
    pub span: (usize, usize),
    /// Class probabilities.
    pub probs: Vec<f32>,
}

/// Index and value of the largest element (the first on ties; `(0, -inf)` when empty).
pub fn argmax(v: &[f32]) -> (usize, f32) {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
}

/// A tagged unit (a subword or a word) before grouping.
struct Tagged {
    tag: String,
    score: f32,
    span: (usize, usize),
}

/// `(begins, type)` of a tag as the pipeline reads it: `B-X` begins X, `I-X` continues X, and a
/// tag without a prefix continues itself.
fn split_tag(tag: &str) -> (bool, &str) {
    if let Some(t) = tag.strip_prefix("B-") {
        (true, t)
    } else if let Some(t) = tag.strip_prefix("I-") {
        (false, t)
    } else {
        (false, tag)
    }
}

/// Decodes one NER text: `words` are byte spans, `subwords` in text order (each with its
/// word); returns the entities with character offsets.
pub fn decode_entities(
    text: &str,
    words: &[(usize, usize)],
    subwords: &[SubwordScores],
    labels: &LabelSet,
    strategy: Aggregation,
) -> Vec<PredictedEntity> {
    let label = |id: usize| labels.label(id).unwrap_or("O").to_string();
    let units: Vec<Tagged> = match strategy {
        Aggregation::None | Aggregation::Simple => subwords
            .iter()
            .filter(|s| !s.probs.is_empty())
            .map(|s| {
                let (id, score) = argmax(&s.probs);
                Tagged {
                    tag: label(id),
                    score,
                    span: s.span,
                }
            })
            .collect(),
        Aggregation::First | Aggregation::Average | Aggregation::Max => {
            let mut per_word: Vec<Vec<&[f32]>> = vec![Vec::new(); words.len()];
            for s in subwords.iter().filter(|s| !s.probs.is_empty()) {
                if let Some(v) = per_word.get_mut(s.word) {
                    v.push(&s.probs);
                }
            }
            per_word
                .iter()
                .zip(words)
                .filter(|(p, _)| !p.is_empty())
                .map(|(p, &span)| {
                    let dist: Vec<f32> = match strategy {
                        Aggregation::First => p[0].to_vec(),
                        Aggregation::Max => p
                            .iter()
                            .max_by(|a, b| argmax(a).1.total_cmp(&argmax(b).1))
                            .map_or_else(Vec::new, |d| d.to_vec()),
                        _ => {
                            let mut m = vec![0f32; p[0].len()];
                            for d in p {
                                for (a, &x) in m.iter_mut().zip(d.iter()) {
                                    *a += x;
                                }
                            }
                            m.iter_mut().for_each(|a| *a /= p.len() as f32);
                            m
                        }
                    };
                    let (id, score) = argmax(&dist);
                    Tagged {
                        tag: label(id),
                        score,
                        span,
                    }
                })
                .collect()
        }
    };
    let char_of = |byte: usize| text[..byte].chars().count();
    let entity = |tag: &str, group: &[Tagged]| {
        let (bs, be) = (group[0].span.0, group[group.len() - 1].span.1);
        PredictedEntity {
            start: char_of(bs),
            end: char_of(be),
            entity_type: tag.to_string(),
            text: text[bs..be].to_string(),
            score: group.iter().map(|u| u.score).sum::<f32>() / group.len() as f32,
        }
    };
    if strategy == Aggregation::None {
        return units
            .iter()
            .filter(|u| u.tag != "O")
            .map(|u| entity(&u.tag, std::slice::from_ref(u)))
            .collect();
    }
    // The pipeline's `group_entities`: a new group when the type changes or a `B-` begins.
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=units.len() {
        let boundary = i == units.len() || {
            let (b, t) = split_tag(&units[i].tag);
            b || t != split_tag(&units[i - 1].tag).1
        };
        if boundary {
            let t = split_tag(&units[start].tag).1;
            if t != "O" && start < i {
                out.push(entity(t, &units[start..i]));
            }
            start = i;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> LabelSet {
        LabelSet::from_labels(["B-PER", "I-PER", "O"])
    }

    fn sub(word: usize, span: (usize, usize), probs: [f32; 3]) -> SubwordScores {
        SubwordScores {
            word,
            span,
            probs: probs.to_vec(),
        }
    }

    #[test]
    fn strategies_follow_the_pipeline() {
        // "Ann Smithers ran": Smithers = "Smith" + "##ers".
        let text = "Ann Smithers ran";
        let words = [(0, 3), (4, 12), (13, 16)];
        let subs = [
            sub(0, (0, 3), [0.9, 0.05, 0.05]),
            sub(1, (4, 9), [0.1, 0.6, 0.3]),
            sub(1, (9, 12), [0.1, 0.1, 0.8]),
            sub(2, (13, 16), [0.0, 0.1, 0.9]),
        ];
        let l = labels();
        let first = decode_entities(text, &words, &subs, &l, Aggregation::First);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].start, first[0].end), (0, 12));
        assert_eq!(first[0].text, "Ann Smithers");
        assert!((first[0].score - 0.75).abs() < 1e-6);
        // Simple: the "##ers" subword is O, so the entity stops at "Smith".
        let simple = decode_entities(text, &words, &subs, &l, Aggregation::Simple);
        assert_eq!(simple.len(), 1);
        assert_eq!(simple[0].text, "Ann Smith");
        // Average: Smithers = mean([.1,.6,.3],[.1,.1,.8]) = [.1,.35,.55] -> O.
        let avg = decode_entities(text, &words, &subs, &l, Aggregation::Average);
        assert_eq!(avg.len(), 1);
        assert_eq!(avg[0].text, "Ann");
        // Max: the most confident subword of Smithers is "##ers" (0.8, O).
        let max = decode_entities(text, &words, &subs, &l, Aggregation::Max);
        assert_eq!(max[0].text, "Ann");
        // None: one entity per non-O subword, with the full tag.
        let none = decode_entities(text, &words, &subs, &l, Aggregation::None);
        let got: Vec<(&str, &str)> = none
            .iter()
            .map(|e| (e.text.as_str(), e.entity_type.as_str()))
            .collect();
        assert_eq!(got, vec![("Ann", "B-PER"), ("Smith", "I-PER")]);
    }

    #[test]
    fn a_b_tag_starts_a_new_entity_and_offsets_count_characters() {
        let text = "Zoë Ann";
        let words = [(0, 4), (5, 8)];
        let subs = [
            sub(0, (0, 4), [0.9, 0.0, 0.1]),
            sub(1, (5, 8), [0.8, 0.1, 0.1]),
        ];
        let e = decode_entities(text, &words, &subs, &labels(), Aggregation::First);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].start, e[0].end, e[1].start), (0, 3, 4));
    }

    #[test]
    fn strategy_names_round_trip() {
        for a in Aggregation::ALL {
            assert_eq!(a.name().parse::<Aggregation>(), Ok(a));
        }
        assert!("greedy".parse::<Aggregation>().is_err());
    }
}
