//! Frozen base weights get no weight-gradient computed (a test binary of its own, because it
//! reads a process-wide counter).

use prefine_model::ops::weight_grad_count;
use prefine_model::{
    seed_rng, Encoder, EncoderConfig, EncoderInput, Forward, LoraConfig, LoraTarget,
};

#[test]
fn lora_training_computes_only_adapter_gradients() {
    let mut enc = Encoder::random(EncoderConfig::tiny_bert(), &mut seed_rng(1)).unwrap();
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![LoraTarget::Query, LoraTarget::Value],
        ..Default::default()
    };
    enc.add_lora_group("g", &cfg, &mut seed_rng(2)).unwrap();
    let input = EncoderInput::from_vecs(&[vec![2, 5, 9, 3]], &[vec![0; 4]], &[vec![1; 4]]).unwrap();
    let before = weight_grad_count();
    let loss = enc
        .forward(&input, Forward::eval(Some("g")))
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    // Only LoRA A and B matrices (2 layers x 2 targets x 2) get weight gradients.
    assert_eq!(weight_grad_count() - before, 8);
    let trainable = enc.trainable_params();
    assert_eq!(trainable.len(), 8);
    for (name, p) in &trainable {
        assert!(
            grads.get(p.var().as_tensor()).is_some(),
            "{name} has a gradient"
        );
    }
    for (name, p) in enc.base_params() {
        assert!(
            grads.get(p.var().as_tensor()).is_none(),
            "frozen {name} got a gradient"
        );
    }
    // Full fine-tuning: every linear weight gets one (2 layers x 6 linears) plus the 8 LoRA.
    enc.set_backbone_trainable(true);
    let before = weight_grad_count();
    let loss = enc
        .forward(&input, Forward::eval(Some("g")))
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(weight_grad_count() - before, 12 + 8);
    for (name, p) in enc.base_params() {
        if !name.starts_with("pooler") {
            assert!(
                grads.get(p.var().as_tensor()).is_some(),
                "{name} has no gradient"
            );
        }
    }
}
