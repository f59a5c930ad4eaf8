//! End to end on the real default model and real shared data slices: fine-tune for a few steps,
//! check that the loss falls, and that evaluate/predict read the saved output directory.

mod common;

use std::path::Path;

use common::{model_dir, ner_slice, tc_slice};

use prefine_train::finetune::artifact::load_artifact;
use prefine_train::finetune::predict::{predict_texts, Prediction};
use prefine_train::finetune::{evaluate_file, run_finetune, FinetuneConfig, Mode, TaskKind};

fn epoch_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn ner_full_finetune_learns_and_its_output_is_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    ner_slice(&data, "conll2003", 48);
    let out = tmp.path().join("out");
    let cfg = FinetuneConfig {
        epochs: 4,
        lr: Some(2e-4),
        batch_size: 16,
        warmup_ratio: 0.0,
        ..FinetuneConfig::new(TaskKind::Ner, Mode::Full)
    };
    let report = run_finetune(&cfg, &model_dir(), &data, &out).unwrap();
    let losses = epoch_losses(&out);
    assert_eq!(losses.len(), 4);
    assert!(losses[3] < losses[0] * 0.7, "loss must fall: {losses:?}");
    for f in [
        "adapter.json",
        "labels.json",
        "head.safetensors",
        "config.toml",
        "metrics.json",
        "curves.svg",
        "model/model.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} written");
    }
    let m = &report.metrics;
    assert!(m["test"]["f1"].is_number() && m["dev"]["per_type"].is_object());
    // evaluate reads the saved output and reproduces the dev metrics.
    let dev = evaluate_file(&out, None, &data.join("dev.conll"), false).unwrap();
    assert_eq!(dev["f1"], m["dev"]["f1"]);
    // predict gives character offsets into the text.
    let art = load_artifact(&out, None).unwrap();
    let text = "Germany beat England in London .".to_string();
    match &predict_texts(&art, std::slice::from_ref(&text), 8).unwrap()[0] {
        Prediction::Ner { entities, .. } => {
            for e in entities {
                assert_eq!(
                    text.chars()
                        .skip(e.start)
                        .take(e.end - e.start)
                        .collect::<String>(),
                    e.text
                );
            }
        }
        other => panic!("expected NER, got {other:?}"),
    }
}

#[test]
fn bf16_mixed_precision_finetune_tracks_f32_and_records_its_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    ner_slice(&data, "conll2003", 32);
    let run = |precision: &str| {
        let cfg = FinetuneConfig::from_toml_str(
            &format!(
                "task = \"ner\"\nmode = \"full\"\nepochs = 3\nlr = 2e-4\nbatch_size = 16\n\
                 warmup_ratio = 0.0\nprecision = \"{precision}\"\n"
            ),
            Path::new("c.toml"),
        )
        .unwrap();
        let out = tmp.path().join(precision);
        run_finetune(&cfg, &model_dir(), &data, &out).unwrap();
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        (epoch_losses(&out), config)
    };
    let (bf16, bf16_config) = run("bf16");
    let (f32, f32_config) = run("f32");
    assert!(
        bf16_config.contains("precision = \"bf16\""),
        "{bf16_config}"
    );
    assert!(
        !f32_config.contains("precision"),
        "f32 is the default: not written"
    );
    assert!(bf16[2] < bf16[0] * 0.8, "bf16 loss must fall: {bf16:?}");
    // Same data, seed and schedule: the curves differ only by bf16 rounding.
    for (b, f) in bf16.iter().zip(&f32) {
        assert!((b - f).abs() < 0.05 * f, "bf16 {bf16:?} vs f32 {f32:?}");
    }
    assert_ne!(bf16, f32, "bf16 rounding had no effect");
}

#[test]
fn tc_lora_finetune_saves_a_peft_adapter_with_its_head() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    tc_slice(&data, "sst2", 64);
    let out = tmp.path().join("out");
    let cfg = FinetuneConfig {
        epochs: 3,
        lr: Some(2e-3),
        batch_size: 16,
        warmup_ratio: 0.0,
        ..FinetuneConfig::new(TaskKind::Tc, Mode::Lora)
    };
    let report = run_finetune(&cfg, &model_dir(), &data, &out).unwrap();
    let losses = epoch_losses(&out);
    assert!(losses[2] < losses[0], "loss must fall: {losses:?}");
    assert!(
        report.metrics["test"]["accuracy"].is_number()
            && report.metrics["test"]["macro_f1"].is_number()
    );
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(c["task_type"], "SEQ_CLS");
    assert_eq!(c["r"], 8);
    let t =
        prefine_model::weights::load_safetensors(&out.join("adapter_model.safetensors")).unwrap();
    assert!(t.contains_key("base_model.model.classifier.weight"));
    assert!(
        t.contains_key("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight")
    );
    let test = evaluate_file(&out, Some(&model_dir()), &data.join("test.jsonl"), false).unwrap();
    assert_eq!(test["accuracy"], report.metrics["test"]["accuracy"]);
    let art = load_artifact(&out, None).unwrap();
    match &predict_texts(&art, &["a wonderful , moving film".to_string()], 8).unwrap()[0] {
        Prediction::Tc { scores, .. } => assert!((scores.values().sum::<f32>() - 1.0).abs() < 1e-4),
        other => panic!("expected TC, got {other:?}"),
    }
}

#[test]
fn bad_data_is_reported_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    tc_slice(&data, "sst2", 8);
    std::fs::write(
        data.join("train.jsonl"),
        "{\"text\": \"fine\", \"label\": \"positive\"}\n{\"text\": \"oops\"\n",
    )
    .unwrap();
    let cfg = FinetuneConfig::new(TaskKind::Tc, Mode::Head);
    let err = run_finetune(&cfg, &model_dir(), &data, &tmp.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.jsonl") && err.contains('2'), "{err}");
    let err = run_finetune(
        &cfg,
        &model_dir(),
        &tmp.path().join("missing"),
        &tmp.path().join("out2"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing"), "{err}");
}
