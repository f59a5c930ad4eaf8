//! The engine: adapters registered at run time on one backbone, and mixed-adapter batches
//! (NER and TC rows, LoRA and head-only adapters) equal to running each request alone.

mod common;

use std::path::Path;

use common::{json_close, real_model_dir, texts, tiny_model, write_adapter, Spec};
use prefine_runtime::TcPooling;
use prefine_runtime::{Engine, Error, PredictJob};

fn setup(tmp: &Path) -> Engine {
    let model = tmp.join("model");
    let base = tiny_model(&model);
    let specs = [
        ("ner-a", Spec::ner(true, 1)),
        ("ner-b", Spec::ner(false, 2)),
        ("tc-a", Spec::tc(true, 3)),
        (
            "tc-b",
            Spec {
                pooling: TcPooling::Cls,
                ..Spec::tc(true, 4)
            },
        ),
        (
            "tc-c",
            Spec {
                pooling: TcPooling::Pooler,
                ..Spec::tc(false, 5)
            },
        ),
    ];
    let engine = Engine::load(&model).unwrap();
    for (name, spec) in specs {
        let dir = tmp.join("adapters").join(name);
        write_adapter(&base, &model, &dir, spec);
        engine.register(name, &dir).unwrap();
    }
    engine
}

/// Mixed batch (all five adapters, several texts each, small batches so rows of different
/// adapters share forward passes) equals each job run alone.
fn check_mixed(engine: &Engine, names: &[&str]) {
    let t = texts();
    let jobs: Vec<PredictJob<'_>> = names.iter().map(|n| PredictJob::new(n, &t)).collect();
    let mixed = engine.predict_mixed(&jobs);
    assert_eq!(mixed.len(), names.len());
    for (name, got) in names.iter().zip(mixed) {
        let got = serde_json::to_value(got.unwrap()).unwrap();
        let alone = serde_json::to_value(engine.predict(name, &t).unwrap()).unwrap();
        if let Err(e) = json_close(&got, &alone, 1e-5) {
            panic!("adapter {name}: mixed batch differs from running alone: {e}");
        }
    }
}

#[test]
fn mixed_adapter_batch_equals_each_adapter_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = setup(tmp.path()).with_max_batch_rows(5);
    check_mixed(
        &engine,
        &["ner-a", "tc-a", "ner-b", "tc-b", "tc-c", "ner-a"],
    );
}

#[test]
fn adapters_change_the_predictions() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = setup(tmp.path());
    let t = texts();
    let a = serde_json::to_value(engine.predict("tc-a", &t).unwrap()).unwrap();
    let b = serde_json::to_value(engine.predict("tc-b", &t).unwrap()).unwrap();
    assert_ne!(a, b);
}

#[test]
fn prediction_shapes_and_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = setup(tmp.path());
    let t = texts();
    let ner = serde_json::to_value(engine.predict("ner-a", &t).unwrap()).unwrap();
    for (i, r) in ner.as_array().unwrap().iter().enumerate() {
        assert_eq!(r["text"], t[i]);
        assert!(r["entities"].is_array());
        assert!(
            r.get("truncated").is_none(),
            "NER is windowed, never truncated"
        );
        for e in r["entities"].as_array().unwrap() {
            let (s, e2) = (
                e["start"].as_u64().unwrap() as usize,
                e["end"].as_u64().unwrap() as usize,
            );
            let covered: String = t[i].chars().skip(s).take(e2 - s).collect();
            assert_eq!(e["text"], covered);
        }
    }
    let tc = serde_json::to_value(engine.predict("tc-a", &t).unwrap()).unwrap();
    let rows = tc.as_array().unwrap();
    assert_eq!(rows[1]["truncated"], true, "{}", rows[1]);
    assert!(rows[0].get("truncated").is_none());
    let scores = rows[0]["scores"].as_object().unwrap();
    assert_eq!(scores.len(), 3);
    let sum: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-5);
    assert!(scores.contains_key(rows[0]["label"].as_str().unwrap()));
}

#[test]
fn register_unregister_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = setup(tmp.path());
    assert_eq!(
        engine.adapter_names(),
        ["ner-a", "ner-b", "tc-a", "tc-b", "tc-c"]
    );
    let dir = tmp.path().join("adapters/ner-a");
    assert!(matches!(
        engine.register("ner-a", &dir),
        Err(Error::AdapterExists(_))
    ));
    assert!(matches!(
        engine.register("bad/name", &dir),
        Err(Error::BadRequest(_))
    ));
    assert!(matches!(
        engine.register("", &dir),
        Err(Error::BadRequest(_))
    ));
    assert!(engine.register("x", &tmp.path().join("nope")).is_err());
    // A second name for the same directory is a separate adapter with its own group.
    engine.register("ner-a2", &dir).unwrap();
    engine.unregister("ner-a").unwrap();
    assert!(matches!(
        engine.unregister("ner-a"),
        Err(Error::UnknownAdapter(_))
    ));
    assert!(matches!(
        engine.predict("ner-a", &texts()),
        Err(Error::UnknownAdapter(_))
    ));
    assert!(engine.predict("ner-a2", &texts()).is_ok());
    assert!(matches!(
        engine.predict("ner-a2", &["  ".to_string()]),
        Err(Error::BadRequest(_))
    ));
    // One bad job does not fail the others of a mixed batch.
    let t = texts();
    let out = engine.predict_mixed(&[PredictJob::new("nope", &t), PredictJob::new("tc-a", &t)]);
    assert!(matches!(out[0], Err(Error::UnknownAdapter(_))));
    assert!(out[1].is_ok());

    // Broken adapter directories.
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    assert!(engine.register("broken", &broken).is_err());
    for f in [
        "adapter.json",
        "labels.json",
        "head.safetensors",
        "adapter_config.json",
        "adapter_model.safetensors",
    ] {
        std::fs::copy(dir.join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("labels.json"), r#"["O","B-PER"]"#).unwrap();
    let e = engine.register("broken", &broken).unwrap_err();
    assert!(e.to_string().contains("labels"), "{e}");
    std::fs::copy(dir.join("labels.json"), broken.join("labels.json")).unwrap();
    std::fs::write(broken.join("adapter_model.safetensors"), b"garbage").unwrap();
    assert!(engine.register("broken", &broken).is_err());
    let full = std::fs::read_to_string(dir.join("adapter.json"))
        .unwrap()
        .replace("\"lora\"", "\"full\"");
    std::fs::write(broken.join("adapter.json"), full).unwrap();
    let e = engine.register("broken", &broken).unwrap_err();
    assert!(e.to_string().contains("own backbone"), "{e}");
    assert!(!engine.adapter_names().contains(&"broken".to_string()));
}

/// The same equivalence on the real MiniLM backbone (6 layers, 384 wide).
#[test]
fn mixed_batch_on_the_real_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = real_model_dir();
    let (base, _) = prefine_model::Encoder::from_model_dir(&model).unwrap();
    let engine = Engine::load(&model).unwrap().with_max_batch_rows(4);
    for (name, spec) in [
        (
            "ner",
            Spec {
                max_length: 24,
                ..Spec::ner(true, 21)
            },
        ),
        ("tc", Spec::tc(true, 22)),
        ("tc-head", Spec::tc(false, 23)),
    ] {
        let dir = tmp.path().join(name);
        write_adapter(&base, &model, &dir, spec);
        engine.register(name, &dir).unwrap();
    }
    check_mixed(&engine, &["ner", "tc", "tc-head"]);
}

/// A bare PEFT adapter (adapter_config.json + adapter_model.safetensors with the head as
/// modules_to_save) plus labels.json registers too.
#[test]
fn bare_peft_adapters_register() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = setup(tmp.path());
    let peft = |from: &str, to: &str| {
        let (src, dst) = (tmp.path().join("adapters").join(from), tmp.path().join(to));
        std::fs::create_dir_all(&dst).unwrap();
        for f in [
            "adapter_config.json",
            "adapter_model.safetensors",
            "labels.json",
        ] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        dst
    };
    let ner = peft("ner-a", "peft-ner");
    let info = engine.register("peft-ner", &ner).unwrap();
    assert!(info.has_lora);
    // Same LoRA pairs and head as the finetune-format original: same predictions (on texts
    // that fit one window: PEFT adapters get the default window of 128, the original has 16).
    let t = texts();
    let short = [t[0].clone(), t[2].clone()];
    let a = serde_json::to_value(engine.predict("peft-ner", &short).unwrap()).unwrap();
    let b = serde_json::to_value(engine.predict("ner-a", &short).unwrap()).unwrap();
    json_close(&a, &b, 1e-6).unwrap();
    // SEQ_CLS runs through the BERT pooler (the backbone's here).
    let tc = peft("tc-a", "peft-tc");
    engine.register("peft-tc", &tc).unwrap();
    assert_eq!(engine.predict("peft-tc", &t).unwrap().len(), t.len());
    check_mixed(&engine, &["peft-ner", "peft-tc", "ner-a"]);
    // Without labels.json it is refused with a reason.
    std::fs::remove_file(tc.join("labels.json")).unwrap();
    let e = engine.register("peft-tc2", &tc).unwrap_err();
    assert!(e.to_string().contains("labels.json"), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = engine.register("empty", &empty).unwrap_err();
    assert!(e.to_string().contains("adapter_config.json"), "{e}");
}

/// `Engine::logits`: TC rows are the logits of `predict`'s scores; NER has one row per subword
/// (special tokens included); batching does not change them.
#[test]
fn logits_match_predictions_and_batching() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = setup(tmp.path()).with_max_batch_rows(2);
    let t = vec![
        "Barack Obama visited Paris in 2015.".to_string(),
        "ok".to_string(),
        "a gripping, funny film".to_string(),
    ];
    for name in ["tc-a", "tc-b", "tc-c"] {
        let logits = engine.logits(name, &t).unwrap();
        let preds = serde_json::to_value(engine.predict(name, &t).unwrap()).unwrap();
        for (i, l) in logits.iter().enumerate() {
            assert_eq!(l.len(), 1);
            let max = l[0].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = l[0].iter().map(|x| (x - max).exp()).sum();
            let labels = engine.adapter(name).unwrap().labels;
            for (c, label) in labels.iter().enumerate() {
                let p = ((l[0][c] - max).exp() / z) as f64;
                let q = preds[i]["scores"][label].as_f64().unwrap();
                assert!((p - q).abs() < 1e-5, "{name} text {i} {label}: {p} vs {q}");
            }
        }
    }
    for name in ["ner-a", "ner-b"] {
        let all = engine.logits(name, &t).unwrap();
        for (i, text) in t.iter().enumerate() {
            let n = engine.tokenizer().encode(i, text).unwrap().ids.len();
            assert_eq!(all[i].len(), n);
            let alone = engine.logits(name, std::slice::from_ref(text)).unwrap();
            let d = alone[0]
                .iter()
                .flatten()
                .zip(all[i].iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "{name} text {i}: batched differs by {d}");
        }
    }
    assert!(matches!(
        engine.logits("nope", &t),
        Err(Error::UnknownAdapter(_))
    ));
}
