//! Gradient-conflict diagnostics: per layer of the shared backbone, the cosine similarity
//! between the gradient of the NER loss and that of the TC loss.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use prefine_model::Encoder;

use crate::error::Result;

/// The layer a backbone parameter belongs to: `embeddings` or `layer.N`.
pub fn layer_key(name: &str) -> String {
    let mut parts = name.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("encoder" | "transformer"), Some("layer"), Some(i)) => format!("layer.{i:0>2}"),
        (Some(first), _, _) => first.to_string(),
        _ => name.to_string(),
    }
}

/// Per-layer flattened gradients of the backbone's base parameters.
pub fn backbone_grads(encoder: &Encoder, grads: &GradStore) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut out: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (name, p) in encoder.base_params() {
        if let Some(g) = grads.get(p.var().as_tensor()) {
            out.entry(layer_key(&name))
                .or_default()
                .extend(g.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    Ok(out)
}

/// Cosine similarity per layer present in both.
pub fn cosines(
    a: &BTreeMap<String, Vec<f32>>,
    b: &BTreeMap<String, Vec<f32>>,
) -> BTreeMap<String, f64> {
    a.iter()
        .filter_map(|(k, ga)| {
            let gb = b.get(k)?;
            let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
            for (x, y) in ga.iter().zip(gb) {
                dot += *x as f64 * *y as f64;
                na += *x as f64 * *x as f64;
                nb += *y as f64 * *y as f64;
            }
            Some((
                k.clone(),
                if na > 0.0 && nb > 0.0 {
                    dot / (na.sqrt() * nb.sqrt())
                } else {
                    0.0
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_cosines() {
        assert_eq!(layer_key("encoder.layer.3.output.dense.weight"), "layer.03");
        assert_eq!(layer_key("embeddings.word_embeddings.weight"), "embeddings");
        let mut a = BTreeMap::new();
        let mut b = BTreeMap::new();
        a.insert("l".to_string(), vec![1.0, 0.0]);
        b.insert("l".to_string(), vec![-2.0, 0.0]);
        assert!((cosines(&a, &b)["l"] + 1.0).abs() < 1e-12);
    }
}
