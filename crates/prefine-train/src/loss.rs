//! Losses.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// Mean cross-entropy over positions whose `weight` is non-zero.
/// `logits: [..., classes]`, `labels: [...]` (u32), `weight: [...]` (f32, 0 = ignored).
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp
        .gather(&labels.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?;
    let w = weight.to_dtype(DType::F32)?;
    let total = w.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(((picked * w)?.sum_all()?.neg()? / total as f64)?)
}
