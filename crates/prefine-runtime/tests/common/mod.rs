//! Fixtures: a tiny random backbone with the real tokenizer, and adapter directories in the
//! `prefine finetune` format with random (non-zero) LoRA pairs and heads.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use prefine_model::Encoder;

/// `models/all-MiniLM-L6-v2`, installed by `scripts/setup.sh` (which the test command runs
/// first). A missing model is a failure, never a skip.
pub fn real_model_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("tokenizer.json").is_file() && dir.join("model.safetensors").is_file(),
        "{} is missing: run ./scripts/setup.sh",
        dir.display()
    );
    dir
}

/// A random 2-layer, 16-wide BERT with the real vocabulary and tokenizer, saved into `dir`.
pub fn tiny_model(dir: &Path) -> Encoder {
    prefine_runtime::synthetic::write_tiny_model(dir, &real_model_dir(), 11).unwrap()
}

pub use prefine_runtime::synthetic::SyntheticSpec as Spec;

/// Writes a synthetic adapter for `base` (loaded from `base_dir`) into `out`.
pub fn write_adapter(base: &Encoder, base_dir: &Path, out: &Path, spec: Spec) {
    prefine_runtime::synthetic::write_synthetic_adapter(base, base_dir, out, spec).unwrap();
}

/// Compares two JSON values: numbers within `tol`, everything else exactly.
pub fn json_close(a: &serde_json::Value, b: &serde_json::Value, tol: f64) -> Result<(), String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() <= tol {
                Ok(())
            } else {
                Err(format!("{x} vs {y}"))
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_close(p, q, tol).map_err(|e| format!("[{i}] {e}"))?;
            }
            Ok(())
        }
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
            for (k, p) in x {
                let q = y.get(k).ok_or_else(|| format!("missing key {k}"))?;
                json_close(p, q, tol).map_err(|e| format!(".{k} {e}"))?;
            }
            Ok(())
        }
        _ if a == b => Ok(()),
        _ => Err(format!("{a} vs {b}")),
    }
}

/// Texts for the tests: short, long (windowed for NER with max_length 16, truncated for TC).
pub fn texts() -> Vec<String> {
    vec![
        "Barack Obama visited Paris in 2015.".to_string(),
        "Angela Merkel met Emmanuel Macron in Berlin and later flew to Rome, Madrid and Lisbon for talks with the prime ministers of Italy, Spain and Portugal.".to_string(),
        "ok".to_string(),
        "Ünïcödé naïve café — 東京 visited by José.".to_string(),
    ]
}
