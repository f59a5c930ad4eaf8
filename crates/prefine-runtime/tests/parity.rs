//! The runtime against PyTorch on the real all-MiniLM-L6-v2, on whatever CPU path this machine
//! (or emulator: the aarch64 build runs this under qemu) takes: f32 sentence embeddings within
//! 1e-4 of sentence-transformers' (mean pooling + L2 norm), bf16 and int8 within their
//! documented tolerances; loading from memory equals loading from files.

mod common;

use common::real_model_dir;
use prefine_runtime::{BackboneFiles, Engine, Precision};

fn reference() -> serde_json::Value {
    let dir = std::env::var_os("PREFINE_REFERENCE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference")
        });
    let p = dir.join("minilm_l6_batch_and_grads.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared reference data is required)",
            p.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn expected(r: &serde_json::Value) -> (Vec<String>, Vec<Vec<f32>>) {
    let texts = serde_json::from_value(r["texts"].clone()).unwrap();
    let emb = serde_json::from_value(r["mean_pooled_normalized"].clone()).unwrap();
    (texts, emb)
}

/// Documented tolerances (README "On-device runtime"): max abs difference of unit-norm
/// sentence embeddings against PyTorch f32.
const F32_TOL: f32 = 1e-4;
const BF16_TOL: f32 = 2e-2;
const INT8_TOL: f32 = 3e-2;

#[test]
fn embeddings_match_pytorch_at_every_precision() {
    let r = reference();
    let (texts, want) = expected(&r);
    let engine = Engine::load(real_model_dir()).unwrap();
    let plain = engine.embed(&texts, None).unwrap();
    let d = max_abs_diff(&plain, &want);
    eprintln!("f32 (unpacked) max abs diff {d:.2e}");
    assert!(d <= F32_TOL, "f32 embeddings differ from PyTorch by {d}");
    for (p, tol) in [
        (Precision::F32, F32_TOL),
        (Precision::Bf16, BF16_TOL),
        (Precision::Int8, INT8_TOL),
    ] {
        let e = Engine::load(real_model_dir()).unwrap();
        e.prepare_inference(p).unwrap();
        let got = e.embed(&texts, None).unwrap();
        let d = max_abs_diff(&got, &want);
        eprintln!("{p:?} max abs diff {d:.2e} (tolerance {tol:.0e})");
        assert!(
            d <= tol,
            "{p:?} embeddings differ from PyTorch by {d} > {tol}"
        );
    }
}

#[test]
fn a_backbone_from_memory_equals_one_from_files() {
    let r = reference();
    let (texts, _) = expected(&r);
    let dir = real_model_dir();
    let from_files = Engine::load(&dir).unwrap().embed(&texts, None).unwrap();
    let files = BackboneFiles::read_dir(&dir).unwrap();
    let from_memory = Engine::from_memory(&files).unwrap();
    assert_eq!(from_memory.embed(&texts, None).unwrap(), from_files);
    // Corrupt weights are an error naming the file, not a panic.
    let mut bad = files.clone();
    bad.weights.truncate(100);
    let err = Engine::from_memory(&bad).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}
