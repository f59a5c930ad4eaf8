//! Pre-finetuning on a tiny random BERT (real tokenizer, small in-memory pools): objectives
//! learn, negatives are restricted by source, TPL routes gradients, and resume is exact.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::{ner_pool, tc_pool};
use prefine_model::{seed_rng, Encoder, EncoderConfig};
use prefine_tokenize::{TextTokenizer, TokenizeConfig};
use prefine_train::pretrain::ner_objective::build_batch;
use prefine_train::pretrain::sampler::Family;
use prefine_train::pretrain::{
    BackboneGradFrom, GradientSurgery, PretrainConfig, Pretrainer, Strategy,
};

fn tokenizer() -> TextTokenizer {
    let d = std::env::var_os("PREFINE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2")
        });
    assert!(
        d.join("tokenizer.json").exists(),
        "run scripts/setup.sh first"
    );
    TextTokenizer::from_model_dir(d, TokenizeConfig::default()).unwrap()
}

fn tiny() -> Encoder {
    Encoder::random(EncoderConfig::tiny_bert_with_vocab(30522), &mut seed_rng(3)).unwrap()
}

fn cfg(strategy: Strategy, steps: u64) -> PretrainConfig {
    common::pretrain_config(strategy, steps)
}

fn trainer(c: PretrainConfig) -> Pretrainer {
    Pretrainer::new(c, tiny(), tokenizer(), Some(ner_pool()), Some(tc_pool())).unwrap()
}

fn mean_loss(t: &mut Pretrainer, n: usize) -> f32 {
    (0..n).map(|_| t.train_step().unwrap().1).sum::<f32>() / n as f32
}

#[test]
fn ner_and_tc_objectives_learn() {
    for s in [Strategy::Ner, Strategy::Tc] {
        let mut t = trainer(cfg(s, 1000));
        let first = mean_loss(&mut t, 5);
        for _ in 0..30 {
            t.train_step().unwrap();
        }
        let last = mean_loss(&mut t, 5);
        assert!(first.is_finite() && last.is_finite());
        assert!(last < first * 0.8, "{s:?}: loss {first} -> {last}");
    }
}

#[test]
fn negatives_are_restricted_to_the_source_types() {
    let pool = ner_pool();
    let tok = tokenizer();
    let b = build_batch(&pool, &[0, 2], &tok, 64).unwrap();
    assert_eq!(b.concepts, vec!["GENE", "LOC", "PER"]);
    let valid: Vec<Vec<f32>> = b.valid.to_vec2().unwrap();
    let targets: Vec<Vec<f32>> = b.targets.to_vec2().unwrap();
    let n_first = valid.len()
        - tok
            .inner()
            .encode("The p53 protein binds DNA", false)
            .unwrap()
            .get_ids()
            .len();
    // News tokens are scored against PER and LOC only; bio tokens against GENE only.
    for row in &valid[..n_first] {
        assert_eq!(row, &vec![0.0, 1.0, 1.0]);
    }
    for row in &valid[n_first..] {
        assert_eq!(row, &vec![1.0, 0.0, 0.0]);
    }
    // "Barack" is a positive for PER; every subword of "p53" for GENE.
    assert_eq!(targets[0], vec![0.0, 0.0, 1.0]);
    assert!(targets[n_first..].iter().any(|r| r[0] == 1.0));
}

#[test]
fn tpl_routes_gradients_to_the_family_group_and_the_backbone() {
    let mut t = trainer(cfg(Strategy::Tpl, 100));
    let snapshot = |t: &Pretrainer, g: &str| -> Vec<f32> {
        t.encoder
            .group_pairs(g)
            .iter()
            .flat_map(|(_, _, p)| p.a.t().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    let backbone = |t: &Pretrainer| -> Vec<f32> {
        t.encoder.base_params()[5]
            .1
            .t()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        let (ner_before, tc_before, bb_before) =
            (snapshot(&t, "ner"), snapshot(&t, "tc"), backbone(&t));
        let (fam, _) = t.train_step().unwrap();
        seen.insert(fam);
        let (ner_after, tc_after, bb_after) =
            (snapshot(&t, "ner"), snapshot(&t, "tc"), backbone(&t));
        assert_ne!(
            bb_before, bb_after,
            "the backbone learns from {fam:?} batches"
        );
        match fam {
            Family::Ner => {
                assert_eq!(tc_before, tc_after, "group tc untouched on NER batches");
                assert_ne!(ner_before, ner_after);
            }
            Family::Tc => {
                assert_eq!(ner_before, ner_after, "group ner untouched on TC batches");
                assert_ne!(tc_before, tc_after);
            }
        }
    }
    assert_eq!(seen.len(), 2, "both families were sampled");
    let c = t.conflict().unwrap();
    assert!(
        c.contains_key("embeddings") && c.contains_key("layer.01"),
        "{c:?}"
    );
    assert!(c.values().all(|v| (-1.0..=1.0).contains(v)));
}

#[test]
fn resume_from_a_checkpoint_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let c = PretrainConfig {
        conflict_every: 2,
        ..cfg(Strategy::Tpl, 6)
    };
    let mut straight = trainer(c.clone());
    for _ in 0..6 {
        straight.train_step().unwrap();
    }
    let mut first = trainer(c.clone());
    for _ in 0..3 {
        first.train_step().unwrap();
    }
    first.save_checkpoint(&tmp.path().join("ckpt")).unwrap();
    drop(first);
    let mut resumed = trainer(c);
    resumed.load_checkpoint(&tmp.path().join("ckpt")).unwrap();
    assert_eq!(resumed.step(), 3);
    for _ in 0..3 {
        resumed.train_step().unwrap();
    }
    let all = |t: &Pretrainer| -> Vec<Vec<f32>> {
        let mut v: Vec<Vec<f32>> = t
            .encoder
            .base_params()
            .iter()
            .map(|(_, p)| p.t().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        for g in ["ner", "tc"] {
            for (_, _, p) in t.encoder.group_pairs(g) {
                v.push(p.b.t().flatten_all().unwrap().to_vec1().unwrap());
            }
        }
        v
    };
    assert!(
        all(&straight) == all(&resumed),
        "bit-identical parameters after resume"
    );
}

#[test]
fn outputs_carry_the_zero_shot_spec() {
    use prefine_model::zero_shot::ZeroShotSpec;
    let mut t = trainer(cfg(Strategy::Tpl, 2));
    t.train_step().unwrap();
    t.train_step().unwrap();
    let spec = t.zero_shot_spec().unwrap();
    let ner = spec.ner.as_ref().unwrap();
    assert_eq!(
        ner.adapter.as_deref(),
        Some(std::path::Path::new("adapters/ner"))
    );
    assert!(ner.scale > 0.0 && ner.scale.is_finite() && ner.bias.is_finite());
    assert_eq!(spec.tc.as_ref().unwrap().temperature, 0.05);
    let dir = tempfile::tempdir().unwrap();
    spec.save(dir.path()).unwrap();
    assert_eq!(ZeroShotSpec::load(dir.path()).unwrap(), spec);
    let only_ner = trainer(cfg(Strategy::Ner, 1)).zero_shot_spec().unwrap();
    assert!(only_ner.tc.is_none() && only_ner.ner.unwrap().adapter.is_none());
}

fn group_values(t: &Pretrainer, g: &str) -> Vec<f32> {
    t.encoder
        .group_pairs(g)
        .iter()
        .flat_map(|(_, _, p)| p.a.t().flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn backbone_values(t: &Pretrainer) -> Vec<f32> {
    t.encoder
        .base_params()
        .iter()
        .flat_map(|(_, p)| p.t().flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn the_backbone_takes_only_the_chosen_familys_gradient() {
    let mut t = trainer(PretrainConfig {
        backbone_grad_from: BackboneGradFrom::Ner,
        ..cfg(Strategy::Tpl, 100)
    });
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        let (bb, tc) = (backbone_values(&t), group_values(&t, "tc"));
        let (fam, _) = t.train_step().unwrap();
        seen.insert(fam);
        match fam {
            Family::Ner => assert_ne!(bb, backbone_values(&t), "NER batches train the backbone"),
            Family::Tc => {
                assert_eq!(bb, backbone_values(&t), "TC batches leave the backbone");
                assert_ne!(tc, group_values(&t, "tc"), "TC batches train group tc");
            }
        }
    }
    assert_eq!(seen.len(), 2, "both families were sampled");
    // Only TPL has groups to train when a family's gradient skips the backbone.
    let bad = PretrainConfig {
        backbone_grad_from: BackboneGradFrom::Tc,
        ..cfg(Strategy::Naive, 10)
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("backbone_grad_from"));
}

#[test]
fn pcgrad_steps_train_both_groups_and_log_the_projection() {
    let c = PretrainConfig {
        gradient_surgery: GradientSurgery::Pcgrad,
        ..cfg(Strategy::Tpl, 3)
    };
    let mut t = trainer(c);
    let (bb, ner, tc) = (
        backbone_values(&t),
        group_values(&t, "ner"),
        group_values(&t, "tc"),
    );
    let (fam, loss) = t.train_step().unwrap();
    assert_eq!(fam, Family::Ner);
    assert!(loss.is_finite());
    // One step = one batch of each family: both groups and the backbone move.
    assert_ne!(bb, backbone_values(&t));
    assert_ne!(ner, group_values(&t, "ner"));
    assert_ne!(tc, group_values(&t, "tc"));
    let tmp = tempfile::tempdir().unwrap();
    let report = t.run(tmp.path()).unwrap();
    assert_eq!(report.steps, 3);
    assert!(report.last_loss.contains_key("ner") && report.last_loss.contains_key("tc"));
    let text = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["family"], "both");
    let cos = last["pcgrad"]["cosine"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&cos));
    assert_eq!(last["pcgrad"]["projected"].as_bool().unwrap(), cos < 0.0);
    // PCGrad needs two families.
    let bad = PretrainConfig {
        gradient_surgery: GradientSurgery::Pcgrad,
        ..cfg(Strategy::Ner, 3)
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("gradient_surgery"));
}
