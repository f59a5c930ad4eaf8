//! Text-classification metrics, identical to scikit-learn's `accuracy_score`, `f1_score`,
//! `precision_recall_fscore_support` and `confusion_matrix`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ner::AvgMetrics;
use crate::numeric::{np_mean, np_weighted_mean, ratio};

/// Precision, recall, F1 and counts of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelMetrics {
    /// `correct / predicted`, 0 when the class was never predicted.
    pub precision: f64,
    /// `correct / support`, 0 when the class never occurs in gold.
    pub recall: f64,
    /// `2 * correct / (support + predicted)`, 0 when both are 0 (scikit-learn's formula).
    pub f1: f64,
    /// Number of gold examples of this class.
    pub support: usize,
    /// Number of examples predicted as this class.
    pub predicted: usize,
    /// Number of examples of this class predicted correctly.
    pub correct: usize,
}

/// A confusion matrix: `counts[g][p]` examples with gold label `labels[g]` predicted `labels[p]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    /// The label order of rows (gold) and columns (prediction).
    pub labels: Vec<String>,
    /// Row-major counts, rows = gold, columns = prediction.
    pub counts: Vec<Vec<usize>>,
}

/// Text-classification scores over the labels that occur in gold or prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcMetrics {
    /// Number of examples.
    pub n: usize,
    /// Fraction of examples predicted correctly.
    pub accuracy: f64,
    /// `f1_score(average="macro")`: unweighted mean of the per-label F1.
    pub macro_f1: f64,
    /// `f1_score(average="micro")` (equals accuracy for single-label classification).
    pub micro_f1: f64,
    /// Macro-averaged precision, recall and F1.
    pub macro_avg: AvgMetrics,
    /// Micro-averaged precision, recall and F1.
    pub micro_avg: AvgMetrics,
    /// Support-weighted precision, recall and F1.
    pub weighted_avg: AvgMetrics,
    /// The label set: union of gold and predicted labels, sorted (scikit-learn's `unique_labels`).
    pub labels: Vec<String>,
    /// Scores per label.
    pub per_label: BTreeMap<String, LabelMetrics>,
    /// Confusion matrix in `labels` order.
    pub confusion: ConfusionMatrix,
}

/// Scores predicted labels against gold ones, as scikit-learn does with `zero_division=0`.
///
/// The label set is the sorted union of gold and predicted labels, so a class that occurs in
/// neither is ignored, and one that is only predicted counts in the macro average with F1 0.
/// Empty or differently sized inputs are errors.
pub fn tc_metrics<G: AsRef<str>, P: AsRef<str>>(gold: &[G], pred: &[P]) -> Result<TcMetrics> {
    if gold.len() != pred.len() {
        return Err(Error::LengthMismatch {
            what: "number of examples".into(),
            gold: gold.len(),
            pred: pred.len(),
        });
    }
    if gold.is_empty() {
        return Err(Error::Empty);
    }
    let gold: Vec<&str> = gold.iter().map(AsRef::as_ref).collect();
    let pred: Vec<&str> = pred.iter().map(AsRef::as_ref).collect();
    let index: BTreeMap<&str, usize> = {
        let mut names: Vec<&str> = gold.iter().chain(&pred).copied().collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().enumerate().map(|(i, l)| (l, i)).collect()
    };
    let k = index.len();
    let mut counts = vec![vec![0usize; k]; k];
    for (g, p) in gold.iter().zip(&pred) {
        counts[index[g]][index[p]] += 1;
    }
    let tp: Vec<usize> = (0..k).map(|i| counts[i][i]).collect();
    let true_sum: Vec<usize> = counts.iter().map(|row| row.iter().sum()).collect();
    let pred_sum: Vec<usize> = (0..k)
        .map(|j| counts.iter().map(|row| row[j]).sum())
        .collect();

    let precision: Vec<f64> = (0..k).map(|i| ratio(tp[i], pred_sum[i])).collect();
    let recall: Vec<f64> = (0..k).map(|i| ratio(tp[i], true_sum[i])).collect();
    let f1: Vec<f64> = (0..k)
        .map(|i| f1_from_counts(tp[i], true_sum[i], pred_sum[i]))
        .collect();

    let n = gold.len();
    let correct: usize = tp.iter().sum();
    let labels: Vec<String> = index.keys().map(|l| l.to_string()).collect();
    let per_label = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                l.clone(),
                LabelMetrics {
                    precision: precision[i],
                    recall: recall[i],
                    f1: f1[i],
                    support: true_sum[i],
                    predicted: pred_sum[i],
                    correct: tp[i],
                },
            )
        })
        .collect();
    let macro_avg = AvgMetrics {
        precision: np_mean(&precision),
        recall: np_mean(&recall),
        f1: np_mean(&f1),
        support: n,
    };
    let micro_avg = AvgMetrics {
        precision: ratio(correct, n),
        recall: ratio(correct, n),
        f1: f1_from_counts(correct, n, n),
        support: n,
    };
    let weighted_avg = AvgMetrics {
        precision: np_weighted_mean(&precision, &true_sum),
        recall: np_weighted_mean(&recall, &true_sum),
        f1: np_weighted_mean(&f1, &true_sum),
        support: n,
    };
    Ok(TcMetrics {
        n,
        accuracy: ratio(correct, n),
        macro_f1: macro_avg.f1,
        micro_f1: micro_avg.f1,
        macro_avg,
        micro_avg,
        weighted_avg,
        per_label,
        confusion: ConfusionMatrix {
            labels: labels.clone(),
            counts,
        },
        labels,
    })
}

/// scikit-learn's F1: `2 * tp / (true + pred)`, 0 when the denominator is 0.
fn f1_from_counts(tp: usize, true_sum: usize, pred_sum: usize) -> f64 {
    let denom = true_sum + pred_sum;
    if denom == 0 {
        0.0
    } else {
        (2 * tp) as f64 / denom as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_case_by_hand() {
        let gold = ["a", "a", "b", "b", "c"];
        let pred = ["a", "b", "b", "b", "d"];
        let m = tc_metrics(&gold, &pred).unwrap();
        assert_eq!(m.labels, ["a", "b", "c", "d"]);
        assert_eq!(m.accuracy, 0.6);
        assert_eq!(m.micro_f1, 0.6);
        let a = m.per_label["a"];
        assert_eq!((a.precision, a.recall, a.support), (1.0, 0.5, 2));
        assert!((a.f1 - 2.0 / 3.0).abs() < 1e-15);
        let b = m.per_label["b"];
        assert!((b.precision - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(b.recall, 1.0);
        assert_eq!(b.f1, 0.8);
        // c never predicted, d never in gold: both score 0 and count in the macro average.
        assert_eq!(m.per_label["c"].f1, 0.0);
        assert_eq!(m.per_label["d"].precision, 0.0);
        assert_eq!(m.per_label["d"].support, 0);
        assert!((m.macro_f1 - (2.0 / 3.0 + 0.8) / 4.0).abs() < 1e-15);
        assert_eq!(
            m.confusion.counts,
            vec![
                vec![1, 1, 0, 0],
                vec![0, 2, 0, 0],
                vec![0, 0, 0, 1],
                vec![0, 0, 0, 0]
            ]
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            tc_metrics::<&str, &str>(&[], &[]),
            Err(Error::Empty)
        ));
        let err = tc_metrics(&["a"], &["a", "b"]).unwrap_err();
        assert!(err.to_string().contains("number of examples"), "{err}");
    }
}
