//! Every encoder family end to end on its tiny checkpoint (`../shared/reference/families`) and
//! its WordPiece tokenizer: fine-tuning in head, LoRA and full mode on real data slices, the
//! saved outputs predicting through the runtime at f32 and int8, and TPL pre-finetuning steps
//! whose outputs load back. Correctness against PyTorch is `prefine-model`'s `family_parity`.

mod common;

use std::path::PathBuf;

use common::{ner_pool, ner_slice, root, tc_pool, tc_slice};
use prefine_model::{Encoder, Precision};
use prefine_runtime::Engine;
use prefine_tokenize::{TextTokenizer, TokenizeConfig};
use prefine_train::finetune::{run_finetune, FinetuneConfig, Mode, TaskKind};
use prefine_train::pretrain::{Pretrainer, Strategy};

fn family_dir(family: &str) -> PathBuf {
    let d = root().join("../shared/reference/families").join(family);
    assert!(d.join("config.json").exists(), "missing {}", d.display());
    d
}

fn end_to_end(family: &str) {
    let model = family_dir(family);
    let tmp = tempfile::tempdir().unwrap();
    let (ner, tc) = (tmp.path().join("ner"), tmp.path().join("tc"));
    std::fs::create_dir_all(&ner).unwrap();
    std::fs::create_dir_all(&tc).unwrap();
    ner_slice(&ner, "conll2003", 24);
    tc_slice(&tc, "sst2", 32);

    // Fine-tuning in every mode.
    let runs = [
        (TaskKind::Ner, Mode::Head, &ner, "ner_head"),
        (TaskKind::Tc, Mode::Lora, &tc, "tc_lora"),
        (TaskKind::Tc, Mode::Full, &tc, "tc_full"),
    ];
    for (task, mode, data, name) in runs {
        let cfg = FinetuneConfig {
            epochs: 2,
            batch_size: 8,
            lr: Some(1e-3),
            warmup_ratio: 0.0,
            ..FinetuneConfig::new(task, mode)
        };
        let report = run_finetune(&cfg, &model, data, &tmp.path().join(name))
            .unwrap_or_else(|e| panic!("{family} {name}: {e:#}"));
        let metric = if task == TaskKind::Ner {
            "f1"
        } else {
            "accuracy"
        };
        assert!(
            report.metrics["test"][metric].is_number(),
            "{family} {name}: {}",
            report.metrics
        );
    }

    // The outputs predict through the runtime (as `serve` and the C ABI do), f32 and int8.
    let texts = vec!["Germany beat England in London .".to_string()];
    for precision in [Precision::F32, Precision::Int8] {
        let engine = Engine::load(&model).unwrap();
        engine.prepare_inference(precision).unwrap();
        for name in ["ner_head", "tc_lora"] {
            engine
                .register(name, &tmp.path().join(name))
                .unwrap_or_else(|e| panic!("{family} {precision} {name}: {e:#}"));
            let p = engine.predict(name, &texts).unwrap();
            assert_eq!(p.len(), 1, "{family} {precision} {name}");
        }
        let e = engine.embed(&texts, None).unwrap();
        let norm: f32 = e[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "{family} {precision}: |e| = {norm}"
        );
    }
    let (full, _) = Encoder::from_model_dir(tmp.path().join("tc_full/model")).unwrap();
    assert_eq!(
        full.config().model_type,
        Encoder::from_model_dir(&model)
            .unwrap()
            .0
            .config()
            .model_type
    );

    // `prefine bench` runs every workload on any model directory (ids within its vocabulary).
    use prefine_train::bench::{run, BenchOptions, Workload};
    for w in ["train_full", "train_lora", "infer_b1", "infer_b32"] {
        let opts = BenchOptions {
            batch: Some(2),
            seq: Some(24),
            runs: Some((0, 1)),
            ..Default::default()
        };
        let (enc, _) = Encoder::from_model_dir(&model).unwrap();
        let r = run(Workload::parse(w).unwrap(), enc, &opts)
            .unwrap_or_else(|e| panic!("{family} bench {w}: {e:#}"));
        assert!(r.tokens_per_s > 0.0, "{family} bench {w}");
    }

    // TPL pre-finetuning: a few steps, then the outputs load in the runtime.
    let (enc, _) = Encoder::from_model_dir(&model).unwrap();
    let tokenizer = TextTokenizer::from_model_dir(&model, TokenizeConfig::default()).unwrap();
    let cfg = common::pretrain_config(Strategy::Tpl, 4);
    let mut trainer = Pretrainer::new(cfg, enc, tokenizer, Some(ner_pool()), Some(tc_pool()))
        .unwrap_or_else(|e| panic!("{family} pretrain: {e:#}"));
    for _ in 0..4 {
        let (_, loss) = trainer.train_step().unwrap();
        assert!(loss.is_finite(), "{family}: pre-finetuning loss {loss}");
    }
    let out = tmp.path().join("pretrain");
    trainer.save_outputs(&out, &model).unwrap();
    let (mut back, report) = Encoder::from_model_dir(out.join("backbone")).unwrap();
    assert!(
        report.unexpected.is_empty(),
        "{family}: {:?}",
        report.unexpected
    );
    for g in ["ner", "tc"] {
        prefine_model::peft::load_adapter(&mut back, &out.join("adapters").join(g), g)
            .unwrap_or_else(|e| panic!("{family} {g} adapter: {e:#}"));
    }
    let tok = TextTokenizer::from_model_dir(&model, TokenizeConfig::default()).unwrap();
    let b = tok.encode_batch(&texts).unwrap();
    let input =
        prefine_model::EncoderInput::from_vecs(&b.input_ids, &b.type_ids, &b.attention_mask)
            .unwrap();
    let run = |group| {
        back.forward(&input, prefine_model::Forward::eval(group))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_ne!(
        run(Some("tc")),
        run(None),
        "{family}: the TC group changes the states"
    );
}

#[test]
fn distilbert_end_to_end() {
    end_to_end("distilbert");
}

#[test]
fn electra_end_to_end() {
    end_to_end("electra");
}

#[test]
fn modernbert_end_to_end() {
    end_to_end("modernbert");
}

#[test]
fn mobilebert_end_to_end() {
    end_to_end("mobilebert");
}
