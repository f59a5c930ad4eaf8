//! LoRA groups on a tiny random BERT: identity at init, merge/unmerge equivalence, group
//! isolation, and parameter bookkeeping.

use candle_core::Tensor;
use prefine_model::{
    seed_rng, Encoder, EncoderConfig, EncoderInput, Forward, LoraConfig, LoraTarget,
};

fn tiny() -> Encoder {
    Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap()
}

fn input() -> EncoderInput {
    EncoderInput::from_vecs(
        &[vec![2, 5, 9, 3, 0, 0], vec![2, 7, 8, 11, 12, 3]],
        &[vec![0; 6], vec![0; 6]],
        &[vec![1, 1, 1, 1, 0, 0], vec![1; 6]],
    )
    .unwrap()
}

fn run(enc: &Encoder, group: Option<&str>) -> Vec<f32> {
    enc.forward(&input(), Forward::eval(group))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Gives every B matrix of `group` random values so that the adapter changes the output.
fn randomise_b(enc: &mut Encoder, group: &str, seed: u64) {
    let mut rng = seed_rng(seed);
    for (_, _, pair) in enc.group_pairs(group) {
        let d = pair.b.var().dims().to_vec();
        let t = prefine_model::params::normal(d[0], d[1], 0.5, &mut rng).unwrap();
        pair.b.set(&t).unwrap();
    }
}

fn all_targets() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: LoraTarget::ALL.to_vec(),
        ..Default::default()
    }
}

#[test]
fn zero_b_gives_the_base_model_exactly() {
    let mut enc = tiny();
    let base = run(&enc, None);
    enc.add_lora_group("ner", &all_targets(), &mut seed_rng(2))
        .unwrap();
    assert_eq!(
        run(&enc, Some("ner")),
        base,
        "B = 0 must be an exact identity"
    );
}

#[test]
fn merged_equals_unmerged_and_unmerge_restores() {
    let mut enc = tiny();
    let base = run(&enc, None);
    enc.add_lora_group("ner", &all_targets(), &mut seed_rng(2))
        .unwrap();
    randomise_b(&mut enc, "ner", 3);
    let unmerged = run(&enc, Some("ner"));
    assert!(
        max_diff(&unmerged, &base) > 1e-3,
        "the adapter must change the output"
    );
    enc.merge_group("ner").unwrap();
    let merged = run(&enc, Some("ner"));
    assert!(
        max_diff(&merged, &unmerged) <= 1e-5,
        "merged vs unmerged: {}",
        max_diff(&merged, &unmerged)
    );
    assert!(
        enc.forward(&input(), Forward::eval(None)).is_err(),
        "running without the merged group is refused"
    );
    enc.unmerge().unwrap();
    assert!(max_diff(&run(&enc, None), &base) <= 1e-5);
    assert!(max_diff(&run(&enc, Some("ner")), &unmerged) <= 1e-5);
}

#[test]
fn groups_are_isolated_and_layer_restricted() {
    let mut enc = tiny();
    let base = run(&enc, None);
    let cfg = all_targets().last_layers(1, 2);
    enc.add_lora_group("ner", &cfg, &mut seed_rng(2)).unwrap();
    enc.add_lora_group("tc", &cfg, &mut seed_rng(3)).unwrap();
    randomise_b(&mut enc, "ner", 4);
    assert_eq!(
        run(&enc, Some("tc")),
        base,
        "tc (B = 0) is unaffected by ner's weights"
    );
    assert_ne!(run(&enc, Some("ner")), base);
    assert_eq!(run(&enc, None), base);
    assert!(enc
        .group_pairs("ner")
        .iter()
        .all(|(_, (layer, _), _)| *layer == 1));
    assert_eq!(enc.group_pairs("ner").len(), 6);
    assert!(enc.forward(&input(), Forward::eval(Some("nope"))).is_err());
    assert!(
        enc.add_lora_group("ner", &cfg, &mut seed_rng(2)).is_err(),
        "duplicate names are refused"
    );
    let bad = LoraConfig {
        layers: Some(vec![7]),
        ..all_targets()
    };
    assert!(enc
        .add_lora_group("x", &bad, &mut seed_rng(2))
        .unwrap_err()
        .to_string()
        .contains("lora.layers"));
    enc.remove_lora_group("ner").unwrap();
    assert_eq!(enc.group_names(), vec!["tc".to_string()]);
}

#[test]
fn peft_initialisation() {
    let mut enc = tiny();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 16.0,
        ..Default::default()
    };
    enc.add_lora_group("g", &cfg, &mut seed_rng(5)).unwrap();
    for (_, _, pair) in enc.group_pairs("g") {
        assert_eq!(pair.scale, 4.0);
        let a: Vec<f32> = pair.a.t().flatten_all().unwrap().to_vec1().unwrap();
        let bound = 1.0 / (16f32).sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| v.abs() > bound / 2.0));
        let b = pair
            .b
            .t()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(b, 0.0);
    }
}

#[test]
fn lora_gradients_match_finite_differences_through_the_encoder() {
    let mut enc = tiny();
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![LoraTarget::Value, LoraTarget::Output],
        ..Default::default()
    };
    enc.add_lora_group("g", &cfg, &mut seed_rng(2)).unwrap();
    randomise_b(&mut enc, "g", 9);
    let probe = prefine_model::params::normal(1, 2 * 6 * 16, 1.0, &mut seed_rng(3))
        .unwrap()
        .reshape((2, 6, 16))
        .unwrap();
    let loss_of = |enc: &Encoder| -> Tensor {
        (enc.forward(&input(), Forward::eval(Some("g"))).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let loss = loss_of(&enc);
    let grads = loss.backward().unwrap();
    let pairs = enc.group_pairs("g");
    let (_, _, pair) = &pairs[pairs.len() - 1];
    for param in [&pair.a, &pair.b] {
        let g: Vec<f32> = grads
            .get(param.var().as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig = param.var().as_tensor().copy().unwrap();
        let vals: Vec<f32> = orig.flatten_all().unwrap().to_vec1().unwrap();
        for j in [0, 3, vals.len() - 1] {
            let h = 1e-2;
            let eval_at = |delta: f32| {
                let mut v = vals.clone();
                v[j] += delta;
                param
                    .set(&Tensor::from_vec(v, orig.shape(), orig.device()).unwrap())
                    .unwrap();
                loss_of(&enc).to_scalar::<f32>().unwrap() as f64
            };
            let num = (eval_at(h) - eval_at(-h)) / (2.0 * h as f64);
            param.set(&orig).unwrap();
            assert!(
                (num - g[j] as f64).abs() <= 2e-3 + 1e-2 * num.abs(),
                "element {j}: {num} vs {}",
                g[j]
            );
        }
    }
}
