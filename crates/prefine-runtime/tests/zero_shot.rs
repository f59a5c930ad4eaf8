//! Zero-shot inference: a `prefine pretrain`-shaped output scores with the saved scorer
//! (`sigmoid(scale * cos + bias)`) exactly where the base-model baseline scores the cosine;
//! entities carry character offsets; an output without `zero_shot.json` is refused by name.

mod common;

use std::path::Path;

use common::tiny_model;
use prefine_model::zero_shot::{NerZeroShot, TcZeroShot, ZeroShotSpec, ZERO_SHOT_VERSION};
use prefine_runtime::zero_shot::ZeroShotPrediction;
use prefine_runtime::{ZeroShot, ZeroShotConfig};

const SCALE: f32 = 10.0;
const BIAS: f32 = -2.0;

/// A pre-finetuning output whose backbone is the tiny model and whose scorer is known.
fn pretrain_output(dir: &Path) {
    tiny_model(&dir.join("backbone"));
    ZeroShotSpec {
        version: ZERO_SHOT_VERSION,
        ner: Some(NerZeroShot {
            adapter: None,
            scale: SCALE,
            bias: BIAS,
            name_pooling: "mean".into(),
            name_encoder: None,
        }),
        tc: Some(TcZeroShot {
            adapter: None,
            pooling: "mean".into(),
            temperature: prefine_runtime::zero_shot::BASE_TC_TEMPERATURE,
        }),
    }
    .save(dir)
    .unwrap();
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn learned_scorer_is_the_sigmoid_of_the_baseline_cosine() {
    let tmp = tempfile::tempdir().unwrap();
    pretrain_output(tmp.path());
    let zs = ZeroShot::load(tmp.path(), ZeroShotConfig::default()).unwrap();
    let base = ZeroShot::load(&tmp.path().join("backbone"), ZeroShotConfig::default()).unwrap();
    assert!(!zs.is_baseline() && base.is_baseline());
    let types = s(&["person", "city", "book title"]);
    let words = vec![vec!["Zoë", "visited", "Paris", "in", "May", "."]];
    let learned = zs
        .word_scores(&words, &zs.type_embeddings(&types).unwrap())
        .unwrap();
    let cos = base
        .word_scores(&words, &base.type_embeddings(&types).unwrap())
        .unwrap();
    for (lw, cw) in learned[0].iter().zip(&cos[0]) {
        for (&l, &c) in lw.iter().zip(cw) {
            assert!((-1.0..=1.0).contains(&c), "cosine {c}");
            let want = 1.0 / (1.0 + (-(SCALE * c + BIAS)).exp());
            assert!((l - want).abs() < 1e-5, "{l} vs {want}");
        }
    }
    // Same decisions at corresponding thresholds; offsets in characters.
    let text = s(&["Zoë visited Paris in May."]);
    let th_cos = 0.0;
    let a = base.predict_ner(&text, &types, Some(th_cos)).unwrap();
    let b = zs
        .predict_ner(
            &text,
            &types,
            Some(1.0 / (1.0 + (-(SCALE * th_cos + BIAS)).exp())),
        )
        .unwrap();
    let spans = |p: &ZeroShotPrediction| match p {
        ZeroShotPrediction::Ner { entities, .. } => entities
            .iter()
            .map(|e| (e.start, e.end, e.entity_type.clone(), e.text.clone()))
            .collect::<Vec<_>>(),
        _ => panic!("not NER"),
    };
    assert_eq!(spans(&a[0]), spans(&b[0]));
    // A threshold below every cosine: every word is in an entity; offsets are characters.
    let all = base.predict_ner(&text, &types, Some(-2.0)).unwrap();
    let chars: Vec<char> = text[0].chars().collect();
    let mut covered = 0;
    for (start, end, _, t) in spans(&all[0]) {
        assert_eq!(chars[start..end].iter().collect::<String>(), t);
        covered += t.split_whitespace().count();
    }
    assert!(covered >= 5, "{:?}", spans(&all[0]));
    // TC: same temperature, same backbone: the same probabilities; each row sums to 1.
    let labels = s(&["travel", "cooking"]);
    let texts = s(&["We flew to Rome.", "Stir the sauce slowly."]);
    let p = zs
        .classify(&texts, &labels, Some("This text is about {}."))
        .unwrap();
    let q = base
        .classify(&texts, &labels, Some("This text is about {}."))
        .unwrap();
    for (pr, qr) in p.iter().zip(&q) {
        assert!((pr.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        for (x, y) in pr.iter().zip(qr) {
            assert!((x - y).abs() < 1e-6);
        }
    }
    let err = zs.classify(&texts, &labels, Some("no slot")).unwrap_err();
    assert!(err.to_string().contains("{}"), "{err}");
    let err = zs
        .predict_ner(&text, &s(&["city", "city"]), None)
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn an_output_without_zero_shot_json_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(&tmp.path().join("backbone"));
    let err = ZeroShot::load(tmp.path(), ZeroShotConfig::default()).unwrap_err();
    assert!(err.to_string().contains("zero_shot.json"), "{err}");
}
