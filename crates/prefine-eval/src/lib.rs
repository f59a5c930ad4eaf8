//! Evaluation metrics for prefine.
