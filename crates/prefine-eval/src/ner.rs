//! Entity-level NER metrics, identical to seqeval 1.2.2's `classification_report`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::numeric::{np_mean, np_weighted_mean, ratio};

/// How tag sequences are cut into entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NerMode {
    /// seqeval's default mode, compatible with conlleval: an `I-X` after `O` or after another
    /// type starts a new entity, a type change ends one, and `E-`/`S-` tags end and start
    /// entities as in seqeval's `get_entities`. Any tag is accepted.
    #[default]
    Lenient,
    /// seqeval's `mode="strict", scheme=IOB2`: only `B-X (I-X)*` runs are entities; a stray
    /// `I-X` is not part of any entity. Every tag must start with `B`, `I` or `O`.
    Strict,
}

/// One entity mention: its type and token span `start..end` (end exclusive) in its sentence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entity {
    /// The entity type (`PER` for `B-PER`); `_` for a tag without a type, as in seqeval.
    pub entity_type: String,
    /// Index of the first token.
    pub start: usize,
    /// Index one past the last token.
    pub end: usize,
}

/// Precision, recall, F1 and counts of one entity type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TypeMetrics {
    /// `correct / predicted`, 0 when nothing was predicted.
    pub precision: f64,
    /// `correct / support`, 0 when there is no gold entity.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Number of gold entities of this type.
    pub support: usize,
    /// Number of predicted entities of this type.
    pub predicted: usize,
    /// Number of predicted entities that exactly match a gold one (type, start and end).
    pub correct: usize,
}

/// An averaged precision / recall / F1 with the total gold support.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct AvgMetrics {
    /// Averaged precision.
    pub precision: f64,
    /// Averaged recall.
    pub recall: f64,
    /// Averaged F1.
    pub f1: f64,
    /// Total number of gold items.
    pub support: usize,
}

/// Entity-level NER scores: seqeval's `classification_report` (micro, macro and weighted
/// averages and per-type rows) plus the token counts conlleval prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NerMetrics {
    /// The chunking mode used.
    pub mode: NerMode,
    /// Micro-averaged precision (`correct / predicted`).
    pub precision: f64,
    /// Micro-averaged recall (`correct / support`).
    pub recall: f64,
    /// Micro-averaged F1.
    pub f1: f64,
    /// Number of gold entities.
    pub support: usize,
    /// Number of predicted entities.
    pub predicted: usize,
    /// Number of exactly matching entities.
    pub correct: usize,
    /// Unweighted mean over the types of `per_type` (0 when there is no type).
    pub macro_avg: AvgMetrics,
    /// Mean over types weighted by support (0 when there is no gold entity).
    pub weighted_avg: AvgMetrics,
    /// Scores per entity type, for every type found in gold or prediction, sorted by name.
    pub per_type: BTreeMap<String, TypeMetrics>,
    /// Number of tokens scored.
    pub tokens: usize,
    /// Number of tokens whose predicted tag equals the gold tag.
    pub correct_tags: usize,
    /// `correct_tags / tokens` (0 when there is no token).
    pub token_accuracy: f64,
}

/// The entities of one tag sequence in the given mode.
pub fn entities<S: AsRef<str>>(tags: &[S], mode: NerMode) -> Result<Vec<Entity>> {
    let tags: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
    let spans = match mode {
        NerMode::Lenient => {
            check_lenient(std::slice::from_ref(&tags), "input")?;
            lenient_chunks(&tags)
        }
        NerMode::Strict => {
            let tokens = strict_tokens(&tags, "input", 0)?;
            strict_chunks(&tokens)
        }
    };
    Ok(spans
        .into_iter()
        .map(|(ty, start, end)| Entity {
            entity_type: ty.to_string(),
            start,
            end,
        })
        .collect())
}

/// Scores predicted tag sequences against gold ones, exactly as seqeval 1.2.2's
/// `classification_report` / `precision_recall_fscore_support` (with `zero_division=0`).
///
/// `gold` and `pred` hold one tag sequence per sentence and must have the same shape.
/// Entities are compared as `(sentence, type, start, end)`; F1 is `2PR / (P + R)` computed from
/// the rounded P and R as seqeval does, and averages use NumPy's summation order.
pub fn ner_metrics<G, P, S, T>(gold: &[G], pred: &[P], mode: NerMode) -> Result<NerMetrics>
where
    G: AsRef<[S]>,
    P: AsRef<[T]>,
    S: AsRef<str>,
    T: AsRef<str>,
{
    let gold: Vec<Vec<&str>> = gold
        .iter()
        .map(|s| s.as_ref().iter().map(AsRef::as_ref).collect())
        .collect();
    let pred: Vec<Vec<&str>> = pred
        .iter()
        .map(|s| s.as_ref().iter().map(AsRef::as_ref).collect())
        .collect();
    check_lengths(&gold, &pred)?;

    // Entities keyed by type, as (position key, start, end) sets.
    let (true_spans, pred_spans) = match mode {
        NerMode::Lenient => {
            check_lenient(&gold, "gold")?;
            check_lenient(&pred, "prediction")?;
            (lenient_spans(&gold), lenient_spans(&pred))
        }
        NerMode::Strict => (
            strict_spans(&gold, "gold")?,
            strict_spans(&pred, "prediction")?,
        ),
    };

    let names: BTreeSet<&str> = true_spans
        .keys()
        .chain(pred_spans.keys())
        .copied()
        .collect();
    let empty = HashSet::new();
    let mut per_type = BTreeMap::new();
    let (mut tp_sum, mut pred_sum, mut true_sum) = (Vec::new(), Vec::new(), Vec::new());
    for name in &names {
        let t = true_spans.get(name).unwrap_or(&empty);
        let p = pred_spans.get(name).unwrap_or(&empty);
        tp_sum.push(t.intersection(p).count());
        pred_sum.push(p.len());
        true_sum.push(t.len());
    }
    let precision: Vec<f64> = tp_sum
        .iter()
        .zip(&pred_sum)
        .map(|(&a, &b)| ratio(a, b))
        .collect();
    let recall: Vec<f64> = tp_sum
        .iter()
        .zip(&true_sum)
        .map(|(&a, &b)| ratio(a, b))
        .collect();
    let f1: Vec<f64> = precision
        .iter()
        .zip(&recall)
        .map(|(&p, &r)| f_score(p, r))
        .collect();
    for (i, name) in names.iter().enumerate() {
        per_type.insert(
            name.to_string(),
            TypeMetrics {
                precision: precision[i],
                recall: recall[i],
                f1: f1[i],
                support: true_sum[i],
                predicted: pred_sum[i],
                correct: tp_sum[i],
            },
        );
    }

    let correct: usize = tp_sum.iter().sum();
    let predicted: usize = pred_sum.iter().sum();
    let support: usize = true_sum.iter().sum();
    let micro_p = ratio(correct, predicted);
    let micro_r = ratio(correct, support);
    let macro_avg = AvgMetrics {
        precision: np_mean(&precision),
        recall: np_mean(&recall),
        f1: np_mean(&f1),
        support,
    };
    let weighted_avg = AvgMetrics {
        precision: np_weighted_mean(&precision, &true_sum),
        recall: np_weighted_mean(&recall, &true_sum),
        f1: np_weighted_mean(&f1, &true_sum),
        support,
    };

    let tokens: usize = gold.iter().map(Vec::len).sum();
    let correct_tags = gold
        .iter()
        .zip(&pred)
        .flat_map(|(g, p)| g.iter().zip(p))
        .filter(|(g, p)| g == p)
        .count();

    Ok(NerMetrics {
        mode,
        precision: micro_p,
        recall: micro_r,
        f1: f_score(micro_p, micro_r),
        support,
        predicted,
        correct,
        macro_avg,
        weighted_avg,
        per_type,
        tokens,
        correct_tags,
        token_accuracy: ratio(correct_tags, tokens),
    })
}

/// Entities grouped by type, each as `(sentence or 0, start, end_exclusive)`.
type SpansByType<'a> = BTreeMap<&'a str, HashSet<(usize, usize, usize)>>;

/// seqeval's F-beta with beta = 1: `(1 + 1) * p * r / (1 * p + r)`, denominator 0 replaced by 1.
fn f_score(p: f64, r: f64) -> f64 {
    let mut denom = p + r;
    if denom == 0.0 {
        denom = 1.0;
    }
    2.0 * p * r / denom
}

/// seqeval's `check_consistent_length`.
fn check_lengths(gold: &[Vec<&str>], pred: &[Vec<&str>]) -> Result<()> {
    if gold.len() != pred.len() {
        return Err(Error::LengthMismatch {
            what: "number of sentences".into(),
            gold: gold.len(),
            pred: pred.len(),
        });
    }
    for (i, (g, p)) in gold.iter().zip(pred).enumerate() {
        if g.len() != p.len() {
            return Err(Error::LengthMismatch {
                what: format!("number of tags in sentence {i}"),
                gold: g.len(),
                pred: p.len(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Lenient mode: seqeval.metrics.sequence_labeling.get_entities (suffix=False).
// ---------------------------------------------------------------------------------------------

/// Rejects empty tags, the only input seqeval's default mode cannot process (`chunk[0]` fails).
fn check_lenient(seqs: &[Vec<&str>], side: &'static str) -> Result<()> {
    for (s, seq) in seqs.iter().enumerate() {
        if let Some(t) = seq.iter().position(|t| t.is_empty()) {
            return Err(Error::InvalidTag {
                side,
                sentence: s,
                token: t,
                tag: String::new(),
                reason: "empty tag".into(),
            });
        }
    }
    Ok(())
}

/// Splits a tag like seqeval: prefix = first character, type = the rest after the first `-`
/// (or the whole rest when there is none), `_` when empty.
fn lenient_split(chunk: &str) -> (char, &str) {
    let mut chars = chunk.chars();
    let tag = chars.next().unwrap_or('O');
    let rest = chars.as_str();
    let ty = match rest.split_once('-') {
        Some((_, after)) => after,
        None => rest,
    };
    (tag, if ty.is_empty() { "_" } else { ty })
}

/// seqeval's `end_of_chunk`.
fn end_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(prev_tag, 'E' | 'S')
        || (prev_tag == 'B' && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag == 'I' && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag != 'O' && prev_tag != '.' && prev_type != ty)
}

/// seqeval's `start_of_chunk`.
fn start_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev_tag, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != ty)
}

/// seqeval's `get_entities` on one flat sequence (an `O` is appended to close the last chunk).
/// Returns `(type, start, end_exclusive)`.
fn lenient_chunks<'a>(seq: &[&'a str]) -> Vec<(&'a str, usize, usize)> {
    let mut chunks = Vec::new();
    let mut prev_tag = 'O';
    let mut prev_type: &str = "";
    let mut begin = 0;
    for (i, chunk) in seq.iter().copied().chain(std::iter::once("O")).enumerate() {
        let (tag, ty) = lenient_split(chunk);
        if end_of_chunk(prev_tag, tag, prev_type, ty) {
            chunks.push((prev_type, begin, i));
        }
        if start_of_chunk(prev_tag, tag, prev_type, ty) {
            begin = i;
        }
        prev_tag = tag;
        prev_type = ty;
    }
    chunks
}

/// Entities of all sentences the way seqeval computes them: sentences are flattened with an `O`
/// after each one and chunked as a single sequence, so positions are global offsets.
fn lenient_spans<'a>(seqs: &[Vec<&'a str>]) -> SpansByType<'a> {
    let mut flat = Vec::with_capacity(seqs.iter().map(|s| s.len() + 1).sum());
    for s in seqs {
        flat.extend_from_slice(s);
        flat.push("O");
    }
    let mut spans = SpansByType::new();
    for (ty, start, end) in lenient_chunks(&flat) {
        spans.entry(ty).or_default().insert((0, start, end));
    }
    spans
}

// ---------------------------------------------------------------------------------------------
// Strict mode: seqeval.scheme.Tokens with scheme=IOB2.
// ---------------------------------------------------------------------------------------------

/// A token of seqeval's `IOB2` scheme class: prefix and tag (`token[1:].strip('-') or '_'`).
#[derive(Clone, Copy)]
struct StrictToken<'a> {
    prefix: char,
    tag: &'a str,
}

/// Parses and validates one sentence for strict IOB2 (prefix must be `B`, `I` or `O`).
fn strict_tokens<'a>(
    seq: &[&'a str],
    side: &'static str,
    sentence: usize,
) -> Result<Vec<StrictToken<'a>>> {
    seq.iter()
        .enumerate()
        .map(|(i, t)| {
            let mut chars = t.chars();
            let prefix = chars.next();
            match prefix {
                Some(p @ ('B' | 'I' | 'O')) => {
                    let tag = chars.as_str().trim_matches('-');
                    Ok(StrictToken {
                        prefix: p,
                        tag: if tag.is_empty() { "_" } else { tag },
                    })
                }
                _ => Err(Error::InvalidTag {
                    side,
                    sentence,
                    token: i,
                    tag: t.to_string(),
                    reason: "strict IOB2 mode accepts only tags starting with B, I or O".into(),
                }),
            }
        })
        .collect()
}

/// IOB2 `inside_patterns`: (B, I, SAME), (I, I, SAME).
fn strict_is_inside(prev: StrictToken, cur: StrictToken) -> bool {
    cur.prefix == 'I' && matches!(prev.prefix, 'B' | 'I') && prev.tag == cur.tag
}

/// IOB2 `end_patterns`: (I|B, O, ANY), (I|B, I, DIFF), (I|B, B, ANY).
fn strict_is_end(prev: StrictToken, cur: StrictToken) -> bool {
    matches!(prev.prefix, 'B' | 'I')
        && match cur.prefix {
            'O' | 'B' => true,
            'I' => prev.tag != cur.tag,
            _ => false,
        }
}

/// seqeval's `Tokens.entities` for IOB2. Returns `(type, start, end_exclusive)`.
fn strict_chunks<'a>(tokens: &[StrictToken<'a>]) -> Vec<(&'a str, usize, usize)> {
    let outside = StrictToken {
        prefix: 'O',
        tag: "_",
    };
    let ext: Vec<StrictToken> = tokens.iter().copied().chain([outside]).collect();
    let mut chunks = Vec::new();
    let mut i = 0;
    while i < ext.len() {
        let token = ext[i];
        // start_patterns: (ANY, B, ANY)
        if token.prefix == 'B' {
            let mut prev = token;
            let mut end = i + 1;
            while end < ext.len() && strict_is_inside(prev, ext[end]) {
                prev = ext[end];
                end += 1;
            }
            if end < ext.len() && strict_is_end(ext[end - 1], ext[end]) {
                chunks.push((token.tag, i, end));
            }
            i = end;
        } else {
            i += 1;
        }
    }
    chunks
}

/// Strict entities of all sentences, keyed by type, as `(sentence, start, end)` sets.
fn strict_spans<'a>(seqs: &[Vec<&'a str>], side: &'static str) -> Result<SpansByType<'a>> {
    let mut spans = SpansByType::new();
    for (s, seq) in seqs.iter().enumerate() {
        let tokens = strict_tokens(seq, side, s)?;
        for (ty, start, end) in strict_chunks(&tokens) {
            spans.entry(ty).or_default().insert((s, start, end));
        }
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ents(tags: &[&str], mode: NerMode) -> Vec<(String, usize, usize)> {
        entities(tags, mode)
            .unwrap()
            .into_iter()
            .map(|e| (e.entity_type, e.start, e.end))
            .collect()
    }

    fn e(ty: &str, s: usize, end: usize) -> (String, usize, usize) {
        (ty.to_string(), s, end)
    }

    #[test]
    fn lenient_chunking_follows_conlleval() {
        let tags = ["I-PER", "I-PER", "O", "B-LOC", "I-ORG", "B-MISC", "B-MISC"];
        assert_eq!(
            ents(&tags, NerMode::Lenient),
            vec![
                e("PER", 0, 2),
                e("LOC", 3, 4),
                e("ORG", 4, 5),
                e("MISC", 5, 6),
                e("MISC", 6, 7)
            ]
        );
    }

    #[test]
    fn lenient_handles_e_and_s_like_seqeval() {
        let tags = ["B-PER", "E-PER", "S-LOC", "I-LOC", "E-LOC", "E-LOC"];
        assert_eq!(
            ents(&tags, NerMode::Lenient),
            vec![
                e("PER", 0, 2),
                e("LOC", 2, 3),
                e("LOC", 3, 5),
                e("LOC", 5, 6)
            ]
        );
    }

    #[test]
    fn strict_ignores_stray_i_and_splits_on_type_change() {
        let tags = [
            "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-ORG", "B-ORG", "I-ORG",
        ];
        assert_eq!(
            ents(&tags, NerMode::Strict),
            vec![e("LOC", 3, 5), e("ORG", 6, 8)]
        );
    }

    #[test]
    fn strict_rejects_non_iob2_tags() {
        let err = entities(&["B-PER", "E-PER"], NerMode::Strict).unwrap_err();
        assert!(err.to_string().contains("token 1"), "{err}");
        assert!(err.to_string().contains("'E-PER'"), "{err}");
        let err = ner_metrics(&[vec!["O"]], &[vec!["X"]], NerMode::Strict).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("prediction sentence 0, token 0"),
            "{err}"
        );
    }

    #[test]
    fn length_mismatches_are_errors() {
        let err = ner_metrics(&[vec!["O"]], &[vec!["O"], vec!["O"]], NerMode::Lenient).unwrap_err();
        assert!(err.to_string().contains("number of sentences"), "{err}");
        let err = ner_metrics(&[vec!["O", "O"]], &[vec!["O"]], NerMode::Strict).unwrap_err();
        assert!(err.to_string().contains("sentence 0"), "{err}");
        let err = ner_metrics(&[vec![""]], &[vec!["O"]], NerMode::Lenient).unwrap_err();
        assert!(err.to_string().contains("empty tag"), "{err}");
    }

    #[test]
    fn counts_and_zero_division() {
        let gold = vec![vec!["B-PER", "I-PER", "O"], vec!["O", "O"]];
        let pred = vec![vec!["B-PER", "I-PER", "O"], vec!["B-LOC", "O"]];
        let m = ner_metrics(&gold, &pred, NerMode::Lenient).unwrap();
        assert_eq!((m.support, m.predicted, m.correct), (1, 2, 1));
        assert_eq!(m.precision, 0.5);
        assert_eq!(m.recall, 1.0);
        assert_eq!(m.per_type["LOC"].precision, 0.0);
        assert_eq!(m.per_type["LOC"].recall, 0.0);
        assert_eq!(m.per_type["LOC"].f1, 0.0);
        assert_eq!(m.per_type["LOC"].support, 0);
        assert_eq!(m.tokens, 5);
        assert_eq!(m.correct_tags, 4);
        assert_eq!(m.macro_avg.f1, 0.5);
        assert_eq!(m.weighted_avg.f1, 1.0);
        let none =
            ner_metrics::<Vec<&str>, Vec<&str>, &str, &str>(&[], &[], NerMode::Strict).unwrap();
        assert_eq!((none.precision, none.recall, none.f1), (0.0, 0.0, 0.0));
        assert!(none.per_type.is_empty());
    }

    #[test]
    fn sentences_do_not_merge_entities() {
        // The trailing I-PER of sentence 0 and the leading I-PER of sentence 1 are separate.
        let gold = vec![vec!["B-PER"], vec!["I-PER"]];
        let m = ner_metrics(&gold, &gold, NerMode::Lenient).unwrap();
        assert_eq!(m.support, 2);
        let m = ner_metrics(&gold, &gold, NerMode::Strict).unwrap();
        assert_eq!(m.support, 1);
    }
}
