//! PEFT compatibility: adapters saved by Python PEFT 0.21 reproduce Python's logits, and what
//! we save has PEFT's key names and config fields.

mod common;

use std::collections::BTreeMap;

use common::*;
use prefine_model::bert::Pooler;
use prefine_model::heads::{
    Classifier, Pooling, SequenceClassificationHead, TokenClassificationHead,
};
use prefine_model::peft::{load_adapter, save_adapter, PeftTaskType};
use prefine_model::{
    seed_rng, Encoder, EncoderConfig, EncoderInput, Forward, LoraConfig, LoraTarget, Param,
};

fn batch(r: &serde_json::Value) -> EncoderInput {
    let input_ids = ids(&r["input_ids"]);
    let types: Vec<Vec<u32>> = input_ids.iter().map(|r| vec![0; r.len()]).collect();
    EncoderInput::from_vecs(&input_ids, &types, &ids(&r["attention_mask"])).unwrap()
}

#[test]
fn token_cls_fixture_reproduces_python_logits() {
    let r = reference("peft_fixtures/expected_logits.json");
    let (mut enc, _) = Encoder::from_model_dir(model_dir()).unwrap();
    let dir = shared_dir().join("reference/peft_fixtures/token_cls");
    let loaded = load_adapter(&mut enc, &dir, "app").unwrap();
    assert_eq!(loaded.task_type, PeftTaskType::TokenCls);
    assert_eq!(loaded.config.rank, 4);
    assert_eq!(
        loaded.config.targets,
        vec![LoraTarget::Query, LoraTarget::Value]
    );
    assert_eq!(loaded.config.layers, None);
    let head = TokenClassificationHead {
        classifier: Classifier::from_tensors(
            &loaded.extra["classifier.weight"],
            &loaded.extra["classifier.bias"],
        )
        .unwrap(),
        dropout: 0.1,
    };
    let input = batch(&r);
    let h = enc.forward(&input, Forward::eval(Some("app"))).unwrap();
    let logits = head.forward(&h, None).unwrap();
    let d = max_abs_diff(
        &logits.flatten_all().unwrap().to_vec1().unwrap(),
        &flat(&r["token_cls"]["logits"]),
    );
    assert!(d <= 1e-4, "max abs diff {d}");
    // Merging the adapter gives the same logits.
    enc.merge_group("app").unwrap();
    let merged = head
        .forward(
            &enc.forward(&input, Forward::eval(Some("app"))).unwrap(),
            None,
        )
        .unwrap();
    let d = max_abs_diff(
        &merged.flatten_all().unwrap().to_vec1().unwrap(),
        &flat(&r["token_cls"]["logits"]),
    );
    assert!(d <= 1e-4, "merged: max abs diff {d}");
}

#[test]
fn seq_cls_fixture_reproduces_python_logits() {
    let r = reference("peft_fixtures/expected_logits.json");
    let (mut enc, _) = Encoder::from_model_dir(model_dir()).unwrap();
    let dir = shared_dir().join("reference/peft_fixtures/seq_cls");
    let loaded = load_adapter(&mut enc, &dir, "app").unwrap();
    assert_eq!(loaded.task_type, PeftTaskType::SeqCls);
    assert_eq!(loaded.config.layers, Some(vec![4, 5]));
    assert_eq!(loaded.config.targets, LoraTarget::ALL.to_vec());
    let x = &loaded.extra;
    let head = SequenceClassificationHead {
        pooling: Pooling::Cls,
        pooler: Some(Pooler::new(
            Param::new(&x["pooler.dense.weight"]).unwrap(),
            Param::new(&x["pooler.dense.bias"]).unwrap(),
        )),
        classifier: Classifier::from_tensors(&x["classifier.weight"], &x["classifier.bias"])
            .unwrap(),
        dropout: 0.1,
    };
    let input = batch(&r);
    let h = enc.forward(&input, Forward::eval(Some("app"))).unwrap();
    let logits = head.forward(&h, &input.attention_mask, None).unwrap();
    let d = max_abs_diff(
        &logits.flatten_all().unwrap().to_vec1().unwrap(),
        &flat(&r["seq_cls"]["logits"]),
    );
    assert!(d <= 1e-4, "max abs diff {d}");
}

fn tiny_with_group(cfg: &LoraConfig) -> Encoder {
    let mut enc = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    enc.add_lora_group("ner", cfg, &mut seed_rng(2)).unwrap();
    let mut rng = seed_rng(3);
    for (_, _, p) in enc.group_pairs("ner") {
        let d = p.b.var().dims().to_vec();
        p.b.set(&prefine_model::params::normal(d[0], d[1], 0.3, &mut rng).unwrap())
            .unwrap();
    }
    enc
}

#[test]
fn saved_adapter_has_peft_names_and_round_trips() {
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.05,
        targets: vec![LoraTarget::Query, LoraTarget::Value],
        layers: Some(vec![1]),
        use_rslora: false,
    };
    let enc = tiny_with_group(&cfg);
    let tmp = tempfile::tempdir().unwrap();
    // Bare encoder adapter: BertModel key names.
    save_adapter(
        &enc,
        "ner",
        PeftTaskType::FeatureExtraction,
        &BTreeMap::new(),
        "tiny",
        tmp.path(),
    )
    .unwrap();
    let tensors =
        prefine_model::weights::load_safetensors(&tmp.path().join("adapter_model.safetensors"))
            .unwrap();
    let mut keys: Vec<_> = tensors.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "base_model.model.encoder.layer.1.attention.self.query.lora_A.weight",
            "base_model.model.encoder.layer.1.attention.self.query.lora_B.weight",
            "base_model.model.encoder.layer.1.attention.self.value.lora_A.weight",
            "base_model.model.encoder.layer.1.attention.self.value.lora_B.weight",
        ]
    );
    let c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(c["peft_type"], "LORA");
    assert_eq!(c["r"], 4);
    assert_eq!(c["lora_alpha"], 8.0);
    assert_eq!(c["lora_dropout"], 0.05);
    assert_eq!(c["target_modules"], serde_json::json!(["query", "value"]));
    assert_eq!(c["layers_to_transform"], serde_json::json!([1]));
    assert_eq!(c["bias"], "none");
    assert_eq!(c["fan_in_fan_out"], false);
    assert_eq!(c["task_type"], serde_json::Value::Null);
    // Load back into a fresh copy of the same backbone: identical outputs.
    let mut fresh = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    let loaded = load_adapter(&mut fresh, tmp.path(), "ner").unwrap();
    assert_eq!(loaded.config, cfg);
    let input = EncoderInput::from_vecs(&[vec![2, 5, 9, 3]], &[vec![0; 4]], &[vec![1; 4]]).unwrap();
    let a: Vec<f32> = enc
        .forward(&input, Forward::eval(Some("ner")))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = fresh
        .forward(&input, Forward::eval(Some("ner")))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // The same weights. The source's pairs are trainable, so its LoRA layers multiply by the
    // merged weight W + s·BA (the training path); the loaded pairs are frozen and keep the
    // unmerged products: the outputs agree to rounding, not bit for bit.
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "round trip changed the outputs by {diff}");
}

#[test]
fn saved_adapter_with_head_uses_task_model_names() {
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: LoraTarget::ALL.to_vec(),
        ..Default::default()
    };
    let enc = tiny_with_group(&cfg);
    let clf = Classifier::init(16, 3, &mut seed_rng(4)).unwrap();
    let mut head = BTreeMap::new();
    head.insert("classifier.weight".to_string(), clf.weight.t());
    head.insert("classifier.bias".to_string(), clf.bias.t());
    let tmp = tempfile::tempdir().unwrap();
    save_adapter(
        &enc,
        "ner",
        PeftTaskType::TokenCls,
        &head,
        "tiny",
        tmp.path(),
    )
    .unwrap();
    let tensors =
        prefine_model::weights::load_safetensors(&tmp.path().join("adapter_model.safetensors"))
            .unwrap();
    assert!(
        tensors.contains_key("base_model.model.bert.encoder.layer.0.output.dense.lora_B.weight")
    );
    assert!(tensors.contains_key(
        "base_model.model.bert.encoder.layer.1.attention.output.dense.lora_A.weight"
    ));
    assert!(tensors.contains_key("base_model.model.classifier.weight"));
    assert_eq!(tensors.len(), 2 * 6 * 2 + 2);
    let c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(c["task_type"], "TOKEN_CLS");
    assert_eq!(c["modules_to_save"], serde_json::json!(["classifier"]));
    assert_eq!(
        c["target_modules"],
        serde_json::json!([
            "query",
            "key",
            "value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense"
        ])
    );
    let mut fresh = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    let loaded = load_adapter(&mut fresh, tmp.path(), "ner").unwrap();
    assert_eq!(loaded.extra.len(), 2);
}

#[test]
fn output_dense_alone_is_written_as_an_exact_regex() {
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![LoraTarget::Output],
        layers: Some(vec![0]),
        ..Default::default()
    };
    let enc = tiny_with_group(&cfg);
    let tmp = tempfile::tempdir().unwrap();
    save_adapter(
        &enc,
        "ner",
        PeftTaskType::FeatureExtraction,
        &BTreeMap::new(),
        "tiny",
        tmp.path(),
    )
    .unwrap();
    let c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        c["target_modules"],
        r".*encoder\.layer\.(0)\.(output\.dense)"
    );
    assert_eq!(c["layers_to_transform"], serde_json::Value::Null);
}

#[test]
fn bad_adapters_are_reported_with_the_file() {
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let enc = tiny_with_group(&cfg);
    let tmp = tempfile::tempdir().unwrap();
    save_adapter(
        &enc,
        "ner",
        PeftTaskType::FeatureExtraction,
        &BTreeMap::new(),
        "tiny",
        tmp.path(),
    )
    .unwrap();
    let cfg_path = tmp.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    // Rank mismatch between config and tensors.
    std::fs::write(&cfg_path, text.replace("\"r\": 4", "\"r\": 8")).unwrap();
    let mut fresh = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    let err = load_adapter(&mut fresh, tmp.path(), "x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("r=8"),
        "{err}"
    );
    // Not LoRA.
    std::fs::write(&cfg_path, text.replace("\"LORA\"", "\"IA3\"")).unwrap();
    let err = load_adapter(&mut fresh, tmp.path(), "x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("peft_type"),
        "{err}"
    );
    // Truncated weights.
    std::fs::write(&cfg_path, &text).unwrap();
    std::fs::write(
        tmp.path().join("adapter_model.safetensors"),
        b"\x10\x00\x00",
    )
    .unwrap();
    let err = load_adapter(&mut fresh, tmp.path(), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");
    // A failed load leaves no half-registered group.
    assert!(fresh.group_names().is_empty());
}

#[test]
fn adapter_config_fields_are_checked_before_the_tensors() {
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let enc = tiny_with_group(&cfg);
    let tmp = tempfile::tempdir().unwrap();
    save_adapter(
        &enc,
        "ner",
        PeftTaskType::FeatureExtraction,
        &BTreeMap::new(),
        "tiny",
        tmp.path(),
    )
    .unwrap();
    let cfg_path = tmp.path().join("adapter_config.json");
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let mut fresh = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "target_modules",
            serde_json::json!(["query", "qkv_proj"]),
            "field target_modules: \"qkv_proj\" match no linear layer",
        ),
        (
            "target_modules",
            serde_json::json!(7),
            "field target_modules: 7 is neither",
        ),
        (
            "lora_dropout",
            serde_json::json!(1.5),
            "field lora_dropout: 1.5 is not in [0, 1)",
        ),
        ("bias", serde_json::json!("all"), "field bias: \"all\""),
    ];
    for (key, value, expect) in cases {
        let mut c = good.clone();
        c[key] = value;
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
        let err = load_adapter(&mut fresh, tmp.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("adapter_config.json") && err.contains(expect),
            "{key}: {err}"
        );
    }
    // PEFT's suffix rule: full paths and shorter suffixes of real layers are fine.
    let mut c = good.clone();
    c["target_modules"] = serde_json::json!(["attention.self.query", "self.value", "dense"]);
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    load_adapter(&mut fresh, tmp.path(), "x").unwrap();
}
