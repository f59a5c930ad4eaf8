//! Evaluation metrics for prefine, matching the Python references exactly:
//!
//! - NER: entity-level precision / recall / F1 (micro, macro, weighted and per type) identical to
//!   seqeval 1.2.2, in its default lenient (conlleval-compatible) mode and in
//!   `mode="strict", scheme=IOB2`; see [`ner_metrics`] and [`NerMode`].
//! - Text classification: accuracy, macro / micro / weighted F1, per-label scores and a
//!   confusion matrix identical to scikit-learn; see [`tc_metrics`].
//! - Plain-text reports: [`conlleval_report`] and [`tc_report`].
//!
//! Division by zero gives 0, as with `zero_division=0` in both libraries.
//!
//! ```
//! use prefine_eval::{ner_metrics, NerMode};
//! let gold = vec![vec!["B-PER", "I-PER", "O", "B-LOC"]];
//! let pred = vec![vec!["B-PER", "I-PER", "O", "O"]];
//! let m = ner_metrics(&gold, &pred, NerMode::Strict).unwrap();
//! assert_eq!((m.precision, m.recall), (1.0, 0.5));
//! assert_eq!(m.per_type["LOC"].support, 1);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod ner;
mod numeric;
mod report;
mod tc;

pub use error::{Error, Result};
pub use ner::{entities, ner_metrics, AvgMetrics, Entity, NerMetrics, NerMode, TypeMetrics};
pub use report::{conlleval_report, tc_report};
pub use tc::{tc_metrics, ConfusionMatrix, LabelMetrics, TcMetrics};
