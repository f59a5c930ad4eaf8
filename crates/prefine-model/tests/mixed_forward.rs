//! `Encoder::forward_mixed`: a batch whose rows use different LoRA groups gives, row by row,
//! the hidden states of running each row alone with its group.

use candle_core::{IndexOp, Tensor};
use prefine_model::params::normal;
use prefine_model::{
    seed_rng, Encoder, EncoderConfig, EncoderInput, Forward, LoraConfig, LoraTarget,
};

/// A tiny random encoder with two groups whose B matrices are non-zero (PEFT's zero init would
/// make every delta vanish and the test vacuous).
fn encoder() -> Encoder {
    let mut rng = seed_rng(7);
    let mut enc = Encoder::random(EncoderConfig::tiny_bert(), &mut rng).unwrap();
    let a = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let b = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: LoraTarget::ALL.to_vec(),
        layers: Some(vec![1]),
        ..Default::default()
    };
    enc.add_lora_group("a", &a, &mut rng).unwrap();
    enc.add_lora_group("b", &b, &mut rng).unwrap();
    {
        for (_, lin) in enc.linears_mut() {
            for pair in lin.loras.values_mut() {
                let (o, r) = pair.b.var().dims2().unwrap();
                pair.b.set(&normal(o, r, 0.5, &mut rng).unwrap()).unwrap();
            }
        }
    }
    enc
}

fn alone(enc: &Encoder, ids: &[u32], group: Option<&str>) -> Tensor {
    let n = ids.len();
    let input = EncoderInput::from_vecs(&[ids.to_vec()], &[vec![0; n]], &[vec![1; n]]).unwrap();
    enc.forward(&input, Forward::eval(group))
        .unwrap()
        .i(0)
        .unwrap()
}

#[test]
fn mixed_batch_equals_rows_alone() {
    let enc = encoder();
    let rows: Vec<(Vec<u32>, Option<&str>)> = vec![
        (vec![2, 5, 9, 11, 3], Some("a")),
        (vec![2, 7, 3], None),
        (vec![2, 8, 8, 13, 21, 34, 3], Some("b")),
        (vec![2, 40, 41, 3], Some("a")),
        (vec![2, 17, 3], Some("b")),
    ];
    let len = rows.iter().map(|r| r.0.len()).max().unwrap();
    let ids: Vec<Vec<u32>> = rows
        .iter()
        .map(|(r, _)| {
            let mut v = r.clone();
            v.resize(len, 0);
            v
        })
        .collect();
    let mask: Vec<Vec<u32>> = rows
        .iter()
        .map(|(r, _)| (0..len).map(|i| (i < r.len()) as u32).collect())
        .collect();
    let input = EncoderInput::from_vecs(&ids, &vec![vec![0; len]; rows.len()], &mask).unwrap();
    let groups: Vec<Option<&str>> = rows.iter().map(|r| r.1).collect();
    let mixed = enc.forward_mixed(&input, &groups).unwrap();
    let mut max_diff = 0f32;
    for (i, (r, g)) in rows.iter().enumerate() {
        let want = alone(&enc, r, *g);
        let got = mixed.i(i).unwrap().narrow(0, 0, r.len()).unwrap();
        let d = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        max_diff = max_diff.max(d);
        // The groups must actually change the output, or the test proves nothing.
        if g.is_some() {
            let base = alone(&enc, r, None);
            let delta = (base - want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(delta > 1e-3, "group {g:?} changes nothing ({delta})");
        }
    }
    assert!(max_diff <= 1e-5, "mixed vs alone: max |diff| = {max_diff}");
}

#[test]
fn single_group_batch_equals_forward() {
    let enc = encoder();
    let ids = vec![vec![2, 5, 9, 3], vec![2, 6, 3, 0]];
    let mask = vec![vec![1, 1, 1, 1], vec![1, 1, 1, 0]];
    let input = EncoderInput::from_vecs(&ids, &[vec![0; 4], vec![0; 4]], &mask).unwrap();
    let want = enc.forward(&input, Forward::eval(Some("b"))).unwrap();
    let got = enc.forward_mixed(&input, &[Some("b"), Some("b")]).unwrap();
    let d = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() <= 1e-6);
}

#[test]
fn mixed_forward_rejects_bad_routes() {
    let mut enc = encoder();
    let input = EncoderInput::from_vecs(&[vec![2, 5, 3]], &[vec![0; 3]], &[vec![1; 3]]).unwrap();
    assert!(enc.forward_mixed(&input, &[Some("nope")]).is_err());
    assert!(enc.forward_mixed(&input, &[None, None]).is_err());
    enc.merge_group("a").unwrap();
    assert!(enc.forward_mixed(&input, &[Some("a")]).is_err());
    enc.unmerge().unwrap();
    assert!(enc.forward_mixed(&input, &[Some("a")]).is_ok());
}
