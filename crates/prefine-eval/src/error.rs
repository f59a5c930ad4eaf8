//! The error type of `prefine-eval`.

/// Everything that can go wrong while scoring predictions.
///
/// Metrics work on in-memory sequences, so instead of a file and line the messages name the
/// side (gold or prediction), the sentence and the token (0-based indices).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Gold and predicted inputs do not line up.
    #[error("gold and prediction differ in length: {what} (gold {gold}, prediction {pred})")]
    LengthMismatch {
        /// Which lengths differ (e.g. "number of sentences", "sentence 3").
        what: String,
        /// The gold length.
        gold: usize,
        /// The predicted length.
        pred: usize,
    },
    /// A tag cannot be interpreted in the requested mode.
    #[error("{side} sentence {sentence}, token {token}: invalid tag '{tag}': {reason}")]
    InvalidTag {
        /// `gold`, `prediction` (or `input` for a single sequence).
        side: &'static str,
        /// 0-based sentence index.
        sentence: usize,
        /// 0-based token index within the sentence.
        token: usize,
        /// The offending tag.
        tag: String,
        /// Why it is rejected.
        reason: String,
    },
    /// There is nothing to score.
    #[error("no examples to evaluate")]
    Empty,
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
