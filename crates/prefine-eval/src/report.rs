//! Plain-text reports for the command line.

use std::fmt::Write;

use crate::ner::NerMetrics;
use crate::tc::TcMetrics;

/// Formats NER scores the way `conlleval.pl` prints them:
///
/// ```text
/// processed 51362 tokens with 5942 phrases; found: 5904 phrases; correct: 5372.
/// accuracy:  97.91%; precision:  90.99%; recall:  90.41%; FB1:  90.70
///               LOC: precision:  93.68%; recall:  93.74%; FB1:  93.71  1838
/// ```
///
/// Percentages use two decimals; the number after each type's FB1 is how many entities of that
/// type were predicted. Use metrics computed with [`crate::NerMode::Lenient`] for numbers that
/// match conlleval itself.
pub fn conlleval_report(m: &NerMetrics) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "processed {} tokens with {} phrases; found: {} phrases; correct: {}.",
        m.tokens, m.support, m.predicted, m.correct
    );
    if m.tokens > 0 {
        let _ = writeln!(
            out,
            "accuracy: {:6.2}%; precision: {:6.2}%; recall: {:6.2}%; FB1: {:6.2}",
            100.0 * m.token_accuracy,
            100.0 * m.precision,
            100.0 * m.recall,
            100.0 * m.f1
        );
    }
    for (ty, t) in &m.per_type {
        let _ = writeln!(
            out,
            "{:>17}: precision: {:6.2}%; recall: {:6.2}%; FB1: {:6.2}  {}",
            ty,
            100.0 * t.precision,
            100.0 * t.recall,
            100.0 * t.f1,
            t.predicted
        );
    }
    out
}

/// Formats text-classification scores like scikit-learn's `classification_report` with
/// `digits` decimals (per-label rows, then accuracy, macro and weighted averages).
pub fn tc_report(m: &TcMetrics, digits: usize) -> String {
    const LAST: &str = "weighted avg";
    let width = m
        .labels
        .iter()
        .map(|l| l.chars().count())
        .chain([LAST.len(), digits])
        .max()
        .unwrap_or(LAST.len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>width$}  {:>9} {:>9} {:>9} {:>9}\n",
        "", "precision", "recall", "f1-score", "support"
    );
    let row = |out: &mut String, name: &str, p: f64, r: f64, f: f64, s: usize| {
        let _ = writeln!(
            out,
            "{name:>width$}  {p:>9.digits$} {r:>9.digits$} {f:>9.digits$} {s:>9}"
        );
    };
    for label in &m.labels {
        let l = &m.per_label[label];
        row(&mut out, label, l.precision, l.recall, l.f1, l.support);
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:>width$}  {:>9} {:>9} {:>9.digits$} {:>9}",
        "accuracy", "", "", m.accuracy, m.n
    );
    let a = m.macro_avg;
    row(
        &mut out,
        "macro avg",
        a.precision,
        a.recall,
        a.f1,
        a.support,
    );
    let w = m.weighted_avg;
    row(&mut out, LAST, w.precision, w.recall, w.f1, w.support);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ner_metrics, tc_metrics, NerMode};

    #[test]
    fn conlleval_layout() {
        let gold = vec![vec!["B-PER", "I-PER", "O", "B-LOC"]];
        let pred = vec![vec!["B-PER", "I-PER", "O", "O"]];
        let m = ner_metrics(&gold, &pred, NerMode::Lenient).unwrap();
        let report = conlleval_report(&m);
        let want = "processed 4 tokens with 2 phrases; found: 1 phrases; correct: 1.\n\
accuracy:  75.00%; precision: 100.00%; recall:  50.00%; FB1:  66.67\n\
\x20             LOC: precision:   0.00%; recall:   0.00%; FB1:   0.00  0\n\
\x20             PER: precision: 100.00%; recall: 100.00%; FB1: 100.00  1\n";
        assert_eq!(report, want);
    }

    #[test]
    fn classification_report_layout() {
        let m = tc_metrics(&["neg", "pos", "pos"], &["neg", "pos", "neg"]).unwrap();
        let report = tc_report(&m, 2);
        let want = "              precision    recall  f1-score   support\n\n\
\x20        neg       0.50      1.00      0.67         1\n\
\x20        pos       1.00      0.50      0.67         2\n\n\
\x20   accuracy                           0.67         3\n\
\x20  macro avg       0.75      0.75      0.67         3\n\
weighted avg       0.83      0.67      0.67         3\n";
        assert_eq!(report, want);
    }
}
