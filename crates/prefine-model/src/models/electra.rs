//! ELECTRA (the discriminator's encoder, `ElectraModel`): the BERT model of [`super::bert`]
//! whose embeddings have their own width `embedding_size`, projected to `hidden_size` by
//! `embeddings_project` when the two differ (see [`super::bert::Embeddings`]). No pooler. The
//! block names are BERT's; the task heads prefix `electra.`.

use super::FamilyNames;

/// ELECTRA's checkpoint names.
pub static NAMES: FamilyNames = FamilyNames {
    prefix: "electra.",
    layers: "encoder.layer.",
    linears: super::bert::LINEARS,
    norms: super::bert::NORMS,
};
