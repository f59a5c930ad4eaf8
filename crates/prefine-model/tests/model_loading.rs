//! Loading and saving whole backbones: HF directory round trip, DistilBERT, and bad inputs.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use prefine_model::{seed_rng, Encoder, EncoderConfig, EncoderInput, Forward};

fn input() -> EncoderInput {
    EncoderInput::from_vecs(&[vec![2, 5, 9, 3]], &[vec![0; 4]], &[vec![1; 4]]).unwrap()
}

fn out(enc: &Encoder) -> Vec<f32> {
    enc.forward(&input(), Forward::eval(None))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn save_pretrained_round_trips_with_hf_names() {
    let enc = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    enc.save_pretrained(tmp.path(), None).unwrap();
    let t =
        prefine_model::weights::load_safetensors(&tmp.path().join("model.safetensors")).unwrap();
    assert!(t.contains_key("encoder.layer.1.attention.self.query.weight"));
    assert!(t.contains_key("embeddings.LayerNorm.weight"));
    assert!(t.contains_key("pooler.dense.bias"));
    let (back, report) = Encoder::from_model_dir(tmp.path()).unwrap();
    assert!(report.unexpected.is_empty());
    assert_eq!(out(&enc), out(&back));
    assert!(!tmp.path().join(".model.safetensors.tmp").exists());
}

#[test]
fn real_model_saves_and_reloads_identically() {
    let (enc, _) = Encoder::from_model_dir(model_dir()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    enc.save_pretrained(tmp.path(), Some(&model_dir())).unwrap();
    assert!(tmp.path().join("tokenizer.json").exists());
    let (back, _) = Encoder::from_model_dir(tmp.path()).unwrap();
    let input =
        EncoderInput::from_vecs(&[vec![101, 7592, 2088, 102]], &[vec![0; 4]], &[vec![1; 4]])
            .unwrap();
    let a = enc.forward(&input, Forward::eval(None)).unwrap();
    let b = back.forward(&input, Forward::eval(None)).unwrap();
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn bert_prefix_and_legacy_layer_norm_names_are_accepted() {
    let enc = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    let mut tensors = HashMap::new();
    for (name, p) in enc.base_params() {
        let name = format!(
            "bert.{}",
            name.replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta")
        );
        tensors.insert(name, p.t());
    }
    tensors.insert(
        "classifier.weight".into(),
        candle_core::Tensor::zeros((3, 16), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
    );
    let (back, report) = Encoder::from_tensors(
        EncoderConfig::tiny_bert(),
        tensors,
        Path::new("m.safetensors"),
    )
    .unwrap();
    assert_eq!(report.unexpected, vec!["classifier.weight".to_string()]);
    assert_eq!(out(&enc), out(&back));
}

#[test]
fn missing_and_misshapen_tensors_are_listed() {
    let enc = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    let mut tensors: HashMap<String, candle_core::Tensor> = enc
        .base_params()
        .into_iter()
        .map(|(n, p)| (n, p.t()))
        .collect();
    tensors.remove("encoder.layer.1.output.dense.weight");
    tensors.insert(
        "encoder.layer.0.attention.self.key.bias".into(),
        candle_core::Tensor::zeros(5, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let err = Encoder::from_tensors(
        EncoderConfig::tiny_bert(),
        tensors,
        Path::new("m.safetensors"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("m.safetensors"), "{err}");
    assert!(err.contains("encoder.layer.1.output.dense.weight"), "{err}");
    assert!(
        err.contains("encoder.layer.0.attention.self.key.bias: expected [16], found [5]"),
        "{err}"
    );
}

#[test]
fn distilbert_checkpoints_load_and_run() {
    let raw = serde_json::json!({"model_type":"distilbert","vocab_size":64,"dim":16,"n_layers":2,"n_heads":4,
        "hidden_dim":32,"activation":"gelu","max_position_embeddings":32});
    let cfg = EncoderConfig::from_json_str(&raw.to_string(), Path::new("config.json")).unwrap();
    let enc = Encoder::random(cfg, &mut seed_rng(1)).unwrap();
    let names: Vec<String> = enc.base_params().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"transformer.layer.0.attention.q_lin.weight".to_string()));
    assert!(names.contains(&"transformer.layer.1.ffn.lin2.bias".to_string()));
    assert!(names.contains(&"transformer.layer.1.sa_layer_norm.weight".to_string()));
    let tmp = tempfile::tempdir().unwrap();
    enc.save_pretrained(tmp.path(), None).unwrap();
    let (back, _) = Encoder::from_model_dir(tmp.path()).unwrap();
    assert_eq!(out(&enc), out(&back));
}

#[test]
fn bad_model_directories_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Encoder::from_model_dir(tmp.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("not found"), "{err}");
    let err = Encoder::from_model_dir(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type":"t5"}"#).unwrap();
    let err = Encoder::from_model_dir(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("t5") && err.contains("bert, distilbert"),
        "{err}"
    );
    std::fs::write(
        tmp.path().join("config.json"),
        EncoderConfig::tiny_bert().to_json().to_string(),
    )
    .unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), b"garbage").unwrap();
    let err = Encoder::from_model_dir(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn out_of_range_inputs_are_errors_not_panics() {
    let enc = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    let bad_id = EncoderInput::from_vecs(&[vec![2, 500]], &[vec![0; 2]], &[vec![1; 2]]).unwrap();
    assert!(enc
        .forward(&bad_id, Forward::eval(None))
        .unwrap_err()
        .to_string()
        .contains("vocabulary"));
    let long = EncoderInput::from_vecs(&[vec![1; 40]], &[vec![0; 40]], &[vec![1; 40]]).unwrap();
    assert!(enc
        .forward(&long, Forward::eval(None))
        .unwrap_err()
        .to_string()
        .contains("max_position_embeddings"));
    assert!(EncoderInput::from_vecs(
        &[vec![1, 2], vec![1]],
        &[vec![0; 2], vec![0]],
        &[vec![1; 2], vec![1]]
    )
    .is_err());
}
