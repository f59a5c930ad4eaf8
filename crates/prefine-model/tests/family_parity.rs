//! Parity of every encoder family with PyTorch on the tiny random checkpoints of
//! `../shared/reference/families/<family>` (see its README): hidden states of a padded batch
//! within 1e-4, the mean-pooled normalised embedding within 1e-4, the loss of a fixed head
//! within 1e-5 and every parameter's gradient L2 norm within 1e-3 relative.

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::*;
use prefine_model::heads::{l2_normalize, mean_pool};
use prefine_model::{Encoder, EncoderInput, Forward};

fn family_dir(family: &str) -> std::path::PathBuf {
    shared_dir().join("reference/families").join(family)
}

fn expected(family: &str) -> serde_json::Value {
    let p = family_dir(family).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn l2(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs every check of one family.
fn check(family: &str) {
    let r = expected(family);
    let (mut enc, report) = Encoder::from_model_dir(family_dir(family)).unwrap();
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    let input_ids = ids(&r["input_ids"]);
    let mask = ids(&r["attention_mask"]);
    let types: Vec<Vec<u32>> = input_ids.iter().map(|r| vec![0; r.len()]).collect();
    let input = EncoderInput::from_vecs(&input_ids, &types, &mask).unwrap();
    let lens: Vec<usize> = mask
        .iter()
        .map(|m| m.iter().filter(|&&x| x == 1).count())
        .collect();

    // Hidden states of the unpadded positions.
    let h = enc.forward(&input, Forward::eval(None)).unwrap();
    let hidden = h.dim(2).unwrap();
    let mut ours = Vec::new();
    for (b, &n) in lens.iter().enumerate() {
        let row = h.get(b).unwrap().narrow(0, 0, n).unwrap();
        ours.extend(row.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    let reference = flat(&r["last_hidden_state"]);
    let d = max_abs_diff(&ours, &reference);
    assert!(d <= 1e-4, "{family}: hidden states differ by {d}");

    // transformers' mean-pooled, normalised embedding, computed from the reference states.
    let emb = l2_normalize(&mean_pool(&h, &input.attention_mask).unwrap()).unwrap();
    let mut want = Vec::new();
    let mut off = 0;
    for &n in &lens {
        let rows = &reference[off * hidden..(off + n) * hidden];
        let mean: Vec<f32> = (0..hidden)
            .map(|j| (0..n).map(|t| rows[t * hidden + j]).sum::<f32>() / n as f32)
            .collect();
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
        want.extend(mean.iter().map(|v| v / norm));
        off += n;
    }
    let d = max_abs_diff(&emb.flatten_all().unwrap().to_vec1().unwrap(), &want);
    assert!(d <= 1e-4, "{family}: embeddings differ by {d}");

    // Loss of the fixed head and every parameter's gradient.
    enc.set_backbone_trainable(true);
    let h = enc.forward(&input, Forward::eval(None)).unwrap();
    let w: Vec<f32> = (0..9)
        .flat_map(|j| (0..hidden).map(move |i| 0.01 * ((9 * i + j) as f32).sin()))
        .collect();
    let w = Tensor::from_vec(w, (9, hidden), &Device::Cpu).unwrap();
    let logits = h.broadcast_matmul(&w.t().unwrap()).unwrap();
    let (b, s) = input.dims().unwrap();
    let labels: Vec<u32> = (0..b)
        .flat_map(|_| (0..s).map(|t| (t % 9) as u32))
        .collect();
    let labels = Tensor::from_vec(labels, (b, s, 1), &Device::Cpu).unwrap();
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let picked = logp.gather(&labels, 2).unwrap().squeeze(2).unwrap();
    let m = input.attention_mask.to_dtype(DType::F32).unwrap();
    let n: usize = lens.iter().sum();
    let loss = ((picked * &m).unwrap().sum_all().unwrap().neg().unwrap() / n as f64).unwrap();
    let loss_v = loss.to_scalar::<f32>().unwrap();
    let gc = &r["grad_check"];
    let want = gc["loss_value"].as_f64().unwrap() as f32;
    assert!(
        (loss_v - want).abs() <= 1e-5,
        "{family}: loss {loss_v} vs {want}"
    );
    let grads = loss.backward().unwrap();
    let params = enc.base_params();
    let refs = gc["grads"].as_object().unwrap();
    let ours: Vec<&String> = params.iter().map(|(n, _)| n).collect();
    for name in refs.keys() {
        assert!(ours.contains(&name), "{family}: no parameter {name}");
    }
    for (name, p) in &params {
        let norm = grads.get(p.var().as_tensor()).map_or(0.0, l2);
        let Some(g) = refs.get(name) else {
            // PyTorch lists only the parameters the loss reaches (not MobileBERT's pooler).
            assert_eq!(norm, 0.0, "{family}: {name} has no reference gradient");
            continue;
        };
        let want = g["grad_l2_norm"].as_f64().unwrap() as f32;
        assert!(
            (norm - want).abs() <= 1e-3 * want.max(1e-6),
            "{family}: {name}: grad norm {norm} vs {want}"
        );
    }
}

#[test]
fn distilbert_matches_pytorch() {
    check("distilbert");
}

#[test]
fn electra_matches_pytorch() {
    check("electra");
}

#[test]
fn mobilebert_matches_pytorch() {
    check("mobilebert");
}

#[test]
fn modernbert_matches_pytorch() {
    check("modernbert");
}

/// Runs `enc` on the reference batch and returns the hidden states.
fn run(enc: &Encoder, family: &str, group: Option<&str>) -> Vec<f32> {
    let r = expected(family);
    let input_ids = ids(&r["input_ids"]);
    let mask = ids(&r["attention_mask"]);
    let types: Vec<Vec<u32>> = input_ids.iter().map(|r| vec![0; r.len()]).collect();
    let input = EncoderInput::from_vecs(&input_ids, &types, &mask).unwrap();
    enc.forward(&input, Forward::eval(group))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// LoRA groups on every linear layer, `save_pretrained` and the PEFT adapter round trip, int8
/// and bf16 inference, on each family's tiny checkpoint.
fn round_trips(family: &str) {
    use prefine_model::peft::{load_adapter, save_adapter, PeftTaskType};
    use prefine_model::{seed_rng, LoraConfig, LoraTarget, Precision};
    let (mut enc, _) = Encoder::from_model_dir(family_dir(family)).unwrap();
    let base = run(&enc, family, None);
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: LoraTarget::ALL.to_vec(),
        ..Default::default()
    };
    let mut rng = seed_rng(3);
    enc.add_lora_group("g", &cfg, &mut rng).unwrap();
    for (_, lin) in enc.linears_mut() {
        for pair in lin.loras.values_mut() {
            let (o, r) = pair.b.var().dims2().unwrap();
            pair.b
                .set(&prefine_model::params::normal(o, r, 0.1, &mut rng).unwrap())
                .unwrap();
        }
    }
    let adapted = run(&enc, family, Some("g"));
    assert!(
        max_abs_diff(&base, &adapted) > 1e-3,
        "{family}: LoRA has no effect"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (model_dir, adapter_dir) = (tmp.path().join("model"), tmp.path().join("adapter"));
    enc.save_pretrained(&model_dir, Some(&family_dir(family)))
        .unwrap();
    save_adapter(
        &enc,
        "g",
        PeftTaskType::FeatureExtraction,
        &std::collections::BTreeMap::new(),
        "tiny",
        &adapter_dir,
    )
    .unwrap();
    if family == "modernbert" {
        // PEFT's own names for ModernBERT's layers.
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            cfg["target_modules"],
            serde_json::json!(["Wqkv", "Wo", "Wi"])
        );
    }
    let (mut back, report) = Encoder::from_model_dir(&model_dir).unwrap();
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert_eq!(run(&back, family, None), base, "{family}: save_pretrained");
    load_adapter(&mut back, &adapter_dir, "g").unwrap();
    let d = max_abs_diff(&run(&back, family, Some("g")), &adapted);
    assert!(
        d <= 1e-5,
        "{family}: PEFT adapter round trip differs by {d}"
    );
    for p in [Precision::Int8, Precision::Bf16] {
        let mut q = back.clone();
        q.quantize(p).unwrap();
        let quantized = run(&q, family, Some("g"));
        let d = max_abs_diff(&quantized, &adapted);
        assert!(d < 0.1, "{family} {p}: max |diff| {d}");
        // A quantised model directory reads back to the same outputs.
        let qdir = tmp.path().join(format!("q-{p}"));
        q.save_quantized(&qdir, Some(&family_dir(family))).unwrap();
        let (mut q2, report) = Encoder::from_model_dir(&qdir).unwrap();
        assert!(
            report.unexpected.is_empty(),
            "{family} {p}: {:?}",
            report.unexpected
        );
        assert_eq!(q2.precision(), p);
        assert_eq!(
            q2.weight_bytes(),
            q.weight_bytes(),
            "{family} {p}: same tables as int8"
        );
        load_adapter(&mut q2, &adapter_dir, "g").unwrap();
        assert_eq!(
            run(&q2, family, Some("g")),
            quantized,
            "{family} {p}: save_quantized"
        );
    }
}

#[test]
fn distilbert_round_trips() {
    round_trips("distilbert");
}

#[test]
fn electra_round_trips() {
    round_trips("electra");
}

#[test]
fn modernbert_round_trips() {
    round_trips("modernbert");
}

#[test]
fn mobilebert_round_trips() {
    round_trips("mobilebert");
}

/// `Encoder::random` builds every family from its config alone, with the parameters (names and
/// shapes) of the loaded checkpoint.
#[test]
fn random_init_builds_every_family() {
    use prefine_model::{seed_rng, EncoderConfig};
    for family in ["distilbert", "electra", "mobilebert", "modernbert"] {
        let config = EncoderConfig::from_model_dir(family_dir(family)).unwrap();
        let random = Encoder::random(config, &mut seed_rng(1)).unwrap();
        let (loaded, _) = Encoder::from_model_dir(family_dir(family)).unwrap();
        let shapes = |e: &Encoder| -> Vec<(String, Vec<usize>)> {
            let mut v: Vec<_> = e
                .base_params()
                .into_iter()
                .filter(|(n, _)| !n.starts_with("pooler."))
                .map(|(n, p)| (n, p.dims().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(shapes(&random), shapes(&loaded), "{family}");
        let h = run(&random, family, None);
        assert!(h.iter().all(|v| v.is_finite()), "{family}");
    }
}
