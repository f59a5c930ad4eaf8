//! Shared helpers for integration tests: where the default model and `../shared` live.
#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The default model directory (`PREFINE_MODEL_DIR` or `models/all-MiniLM-L6-v2`). Fails loudly
/// when absent: the README's test command installs it.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("PREFINE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "default model missing at {} - run scripts/setup.sh (the README's test command does)",
        dir.display()
    );
    dir
}

/// The shared reference folder (`PREFINE_SHARED` or `../shared` beside the workspace).
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("PREFINE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"));
    assert!(
        dir.join("reference").is_dir(),
        "shared folder missing at {}",
        dir.display()
    );
    dir
}

/// Reads a JSON file from `shared/reference`.
pub fn reference(name: &str) -> serde_json::Value {
    let p = shared_dir().join("reference").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Flattens a nested JSON array of numbers.
pub fn flat(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
        serde_json::Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number: {other}"),
    }
}

/// Max absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `Vec<Vec<u32>>` from a JSON 2-d integer array.
pub fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}
