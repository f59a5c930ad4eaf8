//! Fused CPU operations with hand-written backward passes, registered with candle's autograd as
//! custom ops.
//!
//! Why they exist (candle 0.11, measured): `candle_nn::ops::layer_norm`, `softmax_last_dim` and
//! `candle_nn::LayerNorm` pass no gradient, and candle's `matmul` backward computes the gradient
//! of both operands even when one is a frozen weight. The ops here compute exactly the gradients
//! that are needed: an input that does not track gradients (a frozen weight, a constant mask)
//! gets none, so LoRA and linear-probe training skip the weight-gradient GEMMs entirely.
//!
//! Every op is checked against finite differences in `tests`.

//! The candle-free kernels they run on (GEMMs, vector math, packing, the choice of the CPU's
//! kernel family) are in the `prefine-kernels` crate.

mod attention;
pub mod autocast;
mod dropout;
mod embedding;
mod gelu;
mod layer_norm;
mod linear;
mod lora_linear;
mod softmax;

pub use attention::{attention, windowed_attention};
pub use autocast::{matmul_precision, with_matmul_precision, MatmulPrecision};
pub use dropout::{dropout, DropoutMask};
pub use embedding::embedding_sum;
pub use gelu::gelu;
pub use layer_norm::{add_layer_norm, layer_norm};
pub use linear::{frozen_packed_linear, linear, linear_no_bias, weight_grad_count, FrozenPacks};
pub use lora_linear::frozen_lora_linear;
pub use softmax::masked_softmax;

use candle_core::{CpuStorage, Layout, Result, Tensor};

/// The contiguous `f32` data of a storage, or an error naming the op.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: expected an f32 tensor"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input is not contiguous"),
    }
}

/// Runs `f` on the contiguous `f32` data of a CPU tensor (made contiguous first if it is a
/// strided view), without copying it out.
pub fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(f32_slice(cpu, layout, op)?)),
        _ => candle_core::bail!("{op}: only the CPU device is supported"),
    }
}

#[cfg(test)]
mod tests;
