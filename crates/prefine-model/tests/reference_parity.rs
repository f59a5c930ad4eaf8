//! Parity with the PyTorch reference outputs in `../shared/reference` (max abs diff <= 1e-4).

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::*;
use prefine_model::heads::{l2_normalize, mean_pool};
use prefine_model::{Encoder, EncoderInput, Forward};
use prefine_tokenize::{TextTokenizer, TokenizeConfig};

fn encoder() -> Encoder {
    let (mut enc, report) = Encoder::from_model_dir(model_dir()).unwrap();
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    enc.pooler = None;
    enc
}

#[test]
fn hello_world_hidden_states() {
    let r = reference("minilm_l6_hello_world.json");
    let tok = TextTokenizer::from_model_dir(model_dir(), TokenizeConfig::default()).unwrap();
    let batch = tok.encode_batch(&["hello world"]).unwrap();
    assert_eq!(batch.input_ids, ids(&r["input_ids"]), "tokenizer ids");
    let input =
        EncoderInput::from_vecs(&batch.input_ids, &batch.type_ids, &batch.attention_mask).unwrap();
    let h = encoder().forward(&input, Forward::eval(None)).unwrap();
    assert_eq!(h.dims(), &[1, 4, 384]);
    let ours: Vec<f32> = h.flatten_all().unwrap().to_vec1().unwrap();
    let d = max_abs_diff(&ours, &flat(&r["last_hidden_state"]));
    assert!(d <= 1e-4, "max abs diff {d}");
}

fn padded_batch(r: &serde_json::Value) -> (EncoderInput, Vec<Vec<u32>>) {
    let input_ids = ids(&r["input_ids"]);
    let mask = ids(&r["attention_mask"]);
    let types: Vec<Vec<u32>> = input_ids.iter().map(|r| vec![0; r.len()]).collect();
    (
        EncoderInput::from_vecs(&input_ids, &types, &mask).unwrap(),
        mask,
    )
}

#[test]
fn padded_batch_hidden_states_and_embeddings() {
    let r = reference("minilm_l6_batch_and_grads.json");
    let tok = TextTokenizer::from_model_dir(model_dir(), TokenizeConfig::default()).unwrap();
    let texts: Vec<String> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let batch = tok.encode_batch(&texts).unwrap();
    assert_eq!(
        batch.input_ids,
        ids(&r["input_ids"]),
        "tokenizer ids and padding"
    );
    let (input, mask) = padded_batch(&r);
    let h = encoder().forward(&input, Forward::eval(None)).unwrap();
    // The reference omits padded positions.
    let mut ours = Vec::new();
    for (b, m) in mask.iter().enumerate() {
        let n = m.iter().filter(|&&x| x == 1).count();
        ours.extend(
            h.get(b)
                .unwrap()
                .narrow(0, 0, n)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    let d = max_abs_diff(&ours, &flat(&r["last_hidden_state"]));
    assert!(d <= 1e-4, "hidden states: max abs diff {d}");
    let emb = l2_normalize(&mean_pool(&h, &input.attention_mask).unwrap()).unwrap();
    let d = max_abs_diff(
        &emb.flatten_all().unwrap().to_vec1().unwrap(),
        &flat(&r["mean_pooled_normalized"]),
    );
    assert!(d <= 1e-4, "embeddings: max abs diff {d}");
}

#[test]
fn gradient_check_against_pytorch() {
    let r = reference("minilm_l6_batch_and_grads.json");
    let gc = &r["grad_check"];
    let (input, mask) = padded_batch(&r);
    let mut enc = encoder();
    enc.set_backbone_trainable(true);
    let h = enc.forward(&input, Forward::eval(None)).unwrap();
    // W[j][i] = 0.01 * sin(9 i + j), 9 classes, no bias.
    let w: Vec<f32> = (0..9)
        .flat_map(|j| (0..384).map(move |i| 0.01 * ((9 * i + j) as f32).sin()))
        .collect();
    let w = Tensor::from_vec(w, (9, 384), &Device::Cpu).unwrap();
    let logits = h.broadcast_matmul(&w.t().unwrap()).unwrap();
    let (b, s) = input.dims().unwrap();
    let labels: Vec<u32> = (0..b)
        .flat_map(|_| (0..s).map(|t| (t % 9) as u32))
        .collect();
    let labels = Tensor::from_vec(labels, (b, s, 1), &Device::Cpu).unwrap();
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let picked = logp.gather(&labels, 2).unwrap().squeeze(2).unwrap();
    let m = input.attention_mask.to_dtype(DType::F32).unwrap();
    let n: usize = mask.iter().flatten().map(|&x| x as usize).sum();
    let loss = ((picked * &m).unwrap().sum_all().unwrap().neg().unwrap() / n as f64).unwrap();
    let loss_v = loss.to_scalar::<f32>().unwrap();
    let expected = gc["loss_value"].as_f64().unwrap() as f32;
    assert!(
        (loss_v - expected).abs() <= 1e-4,
        "loss {loss_v} vs {expected}"
    );
    let grads = loss.backward().unwrap();
    let params = enc.base_params();
    for (name, g) in gc["grads"].as_object().unwrap() {
        let p = params
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no param {name}"))
            .1;
        let grad = grads
            .get(p.var().as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = grad
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let exp = g["grad_l2_norm"].as_f64().unwrap() as f32;
        assert!(
            (norm - exp).abs() <= 1e-3 * exp,
            "{name}: grad norm {norm} vs {exp}"
        );
        let first: Vec<f32> = grad
            .flatten_all()
            .unwrap()
            .narrow(0, 0, 5)
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = max_abs_diff(&first, &flat(&g["grad_first5_of_row0"]));
        assert!(d <= 1e-5, "{name}: first values differ by {d}");
    }
}
