//! DistilBERT: the BERT model of [`super::bert`] without token types or pooler, under its own
//! names (`transformer.layer.N.attention.q_lin`, ...). This file is its naming map.

use super::FamilyNames;
use crate::lora::LoraTarget;

/// DistilBERT's checkpoint names (task heads prefix `distilbert.`).
pub static NAMES: FamilyNames = FamilyNames {
    prefix: "distilbert.",
    layers: "transformer.layer.",
    linears: &[
        (LoraTarget::Query, "attention.q_lin", "q_lin"),
        (LoraTarget::Key, "attention.k_lin", "k_lin"),
        (LoraTarget::Value, "attention.v_lin", "v_lin"),
        (LoraTarget::AttentionOutput, "attention.out_lin", "out_lin"),
        (LoraTarget::Intermediate, "ffn.lin1", "lin1"),
        (LoraTarget::Output, "ffn.lin2", "lin2"),
    ],
    norms: ["sa_layer_norm", "output_layer_norm"],
};
