//! A stable label <-> id map.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::conll::{split_tag, NerSentence};
use crate::error::{Error, Result};
use crate::tc::TcExample;

/// An ordered set of label names with a stable label <-> id mapping (ids are positions).
///
/// Build it from the training split; the order is deterministic (sorted) so ids do not depend
/// on file order. It serialises as a plain JSON list of names, and deserialising keeps that
/// order, so a saved label set reproduces the ids a model was trained with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct LabelSet {
    labels: Vec<String>,
    index: HashMap<String, usize>,
}

impl LabelSet {
    /// Builds a set from any labels: duplicates are dropped and names sorted (byte order).
    pub fn from_labels<I, S>(labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let sorted: BTreeSet<String> = labels.into_iter().map(|s| s.as_ref().to_string()).collect();
        Self::build(sorted.into_iter().collect())
    }

    /// Builds a set that keeps the given order (e.g. one saved with a model). Duplicate or
    /// empty names are an error.
    pub fn from_ordered(labels: Vec<String>) -> Result<Self> {
        let mut seen = BTreeSet::new();
        for l in &labels {
            if l.is_empty() {
                return Err(Error::InvalidArgument(
                    "empty label name in label set".into(),
                ));
            }
            if !seen.insert(l.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "duplicate label '{l}' in label set"
                )));
            }
        }
        Ok(Self::build(labels))
    }

    /// The sorted set of labels of text-classification examples (normally the train split).
    pub fn from_examples(examples: &[TcExample]) -> Self {
        Self::from_labels(examples.iter().map(|e| e.label.as_str()))
    }

    /// The IOB2 tag set of NER sentences (normally the train split): `O` first (id 0), then for
    /// each entity type in sorted order `B-type` and `I-type`. Both tags are included for every
    /// type seen, even if only `B-type` occurs, so a model can always continue an entity.
    pub fn from_ner(sentences: &[NerSentence]) -> Self {
        let types: BTreeSet<&str> = sentences
            .iter()
            .flat_map(|s| s.tags.iter())
            .filter_map(|t| split_tag(t))
            .filter(|(p, _)| *p != 'O')
            .map(|(_, ty)| ty)
            .collect();
        Self::ner_from_types(types)
    }

    /// The IOB2 tag set for the given entity types: `O`, then `B-type`, `I-type` per sorted type.
    pub fn ner_from_types<I, S>(types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let types: BTreeSet<String> = types.into_iter().map(|s| s.as_ref().to_string()).collect();
        let mut labels = vec!["O".to_string()];
        for ty in types {
            labels.push(format!("B-{ty}"));
            labels.push(format!("I-{ty}"));
        }
        Self::build(labels)
    }

    fn build(labels: Vec<String>) -> Self {
        let index = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i))
            .collect();
        Self { labels, index }
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set has no labels.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The id of `label`, if it is in the set.
    pub fn id(&self, label: &str) -> Option<usize> {
        self.index.get(label).copied()
    }

    /// The label with id `id`, if any.
    pub fn label(&self, id: usize) -> Option<&str> {
        self.labels.get(id).map(String::as_str)
    }

    /// True when `label` is in the set.
    pub fn contains(&self, label: &str) -> bool {
        self.index.contains_key(label)
    }

    /// All labels in id order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The labels among `labels` that are not in this set, sorted and de-duplicated.
    ///
    /// Use it on the dev/test labels to report classes the model never saw in training; it does
    /// not fail, the caller decides what to do.
    pub fn check_unseen<I, S>(&self, labels: I) -> Vec<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let unseen: BTreeSet<String> = labels
            .into_iter()
            .filter(|l| !self.contains(l.as_ref()))
            .map(|l| l.as_ref().to_string())
            .collect();
        unseen.into_iter().collect()
    }

    /// [`LabelSet::check_unseen`] over the labels of text-classification examples.
    pub fn check_unseen_examples(&self, examples: &[TcExample]) -> Vec<String> {
        self.check_unseen(examples.iter().map(|e| e.label.as_str()))
    }

    /// [`LabelSet::check_unseen`] over the tags of NER sentences.
    pub fn check_unseen_ner(&self, sentences: &[NerSentence]) -> Vec<String> {
        self.check_unseen(sentences.iter().flat_map(|s| s.tags.iter()))
    }
}

impl TryFrom<Vec<String>> for LabelSet {
    type Error = Error;

    fn try_from(labels: Vec<String>) -> Result<Self> {
        Self::from_ordered(labels)
    }
}

impl From<LabelSet> for Vec<String> {
    fn from(set: LabelSet) -> Self {
        set.labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(label: &str) -> TcExample {
        TcExample {
            text: "t".into(),
            label: label.into(),
        }
    }

    #[test]
    fn tc_labels_are_sorted_and_stable() {
        let train = [ex("pos"), ex("neg"), ex("pos"), ex("neutral")];
        let set = LabelSet::from_examples(&train);
        assert_eq!(set.labels(), ["neg", "neutral", "pos"]);
        assert_eq!(set.id("neutral"), Some(1));
        assert_eq!(set.label(2), Some("pos"));
        assert_eq!(set.id("other"), None);
        assert_eq!(set.label(3), None);
        let shuffled = [ex("neutral"), ex("pos"), ex("neg")];
        assert_eq!(LabelSet::from_examples(&shuffled), set);
    }

    #[test]
    fn unseen_labels_are_reported_not_fatal() {
        let set = LabelSet::from_labels(["a", "b"]);
        let dev = [ex("b"), ex("z"), ex("c"), ex("z")];
        assert_eq!(set.check_unseen_examples(&dev), ["c", "z"]);
        assert!(set.check_unseen(["a", "b"]).is_empty());
    }

    #[test]
    fn ner_tag_set_has_o_first_and_both_b_and_i() {
        let s = NerSentence {
            tokens: vec!["a".into(), "b".into(), "c".into()],
            tags: vec!["B-PER".into(), "O".into(), "B-LOC".into()],
        };
        let set = LabelSet::from_ner(std::slice::from_ref(&s));
        assert_eq!(set.labels(), ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]);
        let dev = NerSentence {
            tokens: vec!["x".into(), "y".into()],
            tags: vec!["B-ORG".into(), "I-PER".into()],
        };
        assert_eq!(set.check_unseen_ner(&[dev]), ["B-ORG"]);
    }

    #[test]
    fn serde_round_trip_keeps_order_and_rejects_duplicates() {
        let set = LabelSet::from_ordered(vec!["z".into(), "a".into()]).unwrap();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, "[\"z\",\"a\"]");
        let back: LabelSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back.id("z"), Some(0));
        assert!(serde_json::from_str::<LabelSet>("[\"a\",\"a\"]").is_err());
        assert!(LabelSet::from_ordered(vec![String::new()]).is_err());
    }
}
