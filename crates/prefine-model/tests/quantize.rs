//! Quantised backbones (`Encoder::quantize`): int8 and bf16 forward passes against f32 on the
//! real MiniLM, quantised checkpoints written and read back bit-exactly, mixed-adapter batches,
//! and clear errors for everything a quantised (inference-only) encoder cannot do. Packed f32
//! backbones (`Encoder::prepare_inference(F32)`) are checked the same way, for exactness.

mod common;

use candle_core::{IndexOp, Tensor, Var, D};
use prefine_model::models::Body;
use prefine_model::params::normal;
use prefine_model::{
    seed_rng, Encoder, EncoderConfig, EncoderInput, Error, Forward, LoraConfig, LoraTarget,
    Precision,
};
use prefine_tokenize::{TextTokenizer, TokenizeConfig};

const TEXTS: [&str; 6] = [
    "Barack Obama visited Paris in 2015 with the French president.",
    "The movie was surprisingly good, although the ending felt rushed.",
    "What is the capital of Australia?",
    "EU rejects German call to boycott British lamb.",
    "i cant believe its already december lol",
    "Shares of Apple rose 3% after the quarterly earnings report beat expectations.",
];

fn minilm() -> (Encoder, EncoderInput) {
    let dir = common::model_dir();
    let (enc, _) = Encoder::from_model_dir(&dir).unwrap();
    let tok = TextTokenizer::from_model_dir(&dir, TokenizeConfig::default()).unwrap();
    let b = tok.encode_batch(&TEXTS).unwrap();
    let input = EncoderInput::from_vecs(&b.input_ids, &b.type_ids, &b.attention_mask).unwrap();
    (enc, input)
}

/// Mean-pooled, L2-normalised sentence embeddings `[batch, hidden]`.
fn pooled(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.unsqueeze(2).unwrap();
    let sum = hidden.broadcast_mul(&m).unwrap().sum(1).unwrap();
    let n = m.sum(1).unwrap();
    let mean = sum.broadcast_div(&n).unwrap();
    let norm = mean.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    mean.broadcast_div(&norm).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest |diff| over real (unpadded) tokens, and the smallest cosine of pooled embeddings.
fn compare(f32_h: &Tensor, q_h: &Tensor, mask: &Tensor) -> (f32, f32) {
    let m = mask.unsqueeze(2).unwrap();
    let d = max_abs_diff(
        &f32_h.broadcast_mul(&m).unwrap(),
        &q_h.broadcast_mul(&m).unwrap(),
    );
    let cos = (pooled(f32_h, mask) * pooled(q_h, mask))
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .min(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (d, cos)
}

/// Tolerances from a measurement on MiniLM over these six texts (printed by the test; f32
/// hidden states reach |h| = 5.8): bf16 max |diff| 0.0084 and worst cosine of pooled
/// embeddings 0.999993; int8 max |diff| 0.147 and worst cosine 0.9985 (0.120 before the word and
/// position tables and the pooler were int8 too). The bounds leave about 2.4x headroom on the
/// differences (int8's error is dominated by per-token activation ranges:
/// one outlier dimension widens a row's step to ~range/255).
#[test]
fn quantized_forward_is_close_to_f32_on_minilm() {
    let (enc, input) = minilm();
    let want = enc.forward(&input, Forward::eval(None)).unwrap();
    let hmax = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    eprintln!("f32 max |h| = {}", hmax.to_scalar::<f32>().unwrap());
    for (p, max_diff, min_cos) in [
        (Precision::Bf16, 0.03f32, 0.9999f32),
        (Precision::Int8, 0.35, 0.995),
    ] {
        let mut q = enc.clone();
        q.quantize(p).unwrap();
        assert_eq!(q.precision(), p);
        assert_eq!(q.num_base_parameters(), enc.num_base_parameters());
        assert!(q.weight_bytes() < enc.weight_bytes());
        let got = q.forward(&input, Forward::eval(None)).unwrap();
        let (d, cos) = compare(&want, &got, &input.attention_mask);
        eprintln!("{p}: max |diff| {d}, min cosine of pooled embeddings {cos}");
        assert!(d < max_diff, "{p}: max |diff| {d} >= {max_diff}");
        assert!(cos > min_cos, "{p}: cosine {cos} <= {min_cos}");
    }
    // The f32 encoder it was cloned from is untouched.
    let again = enc.forward(&input, Forward::eval(None)).unwrap();
    assert_eq!(max_abs_diff(&again, &want), 0.0);
}

/// Packing f32 weights for inference changes the layout only: MiniLM's hidden states equal the
/// unpacked encoder's, the weights unpack to the originals, and the memory held is the same.
#[test]
fn packed_f32_forward_equals_unpacked_on_minilm() {
    let (enc, input) = minilm();
    let want = enc.forward(&input, Forward::eval(None)).unwrap();
    let mut packed = enc.clone();
    packed.prepare_inference(Precision::F32).unwrap();
    assert!(packed.is_packed() && packed.is_inference_only());
    assert_eq!(packed.precision(), Precision::F32);
    assert_eq!(packed.weight_bytes(), enc.weight_bytes());
    packed.prepare_inference(Precision::F32).unwrap();
    let got = packed.forward(&input, Forward::eval(None)).unwrap();
    let d = max_abs_diff(&want, &got);
    assert!(d <= 1e-6, "packed vs unpacked: max |diff| {d}");
    for ((_, lin), (t, b0)) in packed.linears().into_iter().zip(enc.linears()) {
        let w = lin.quantized.as_ref().unwrap().dequantize().unwrap();
        let orig = b0.weight.t().detach();
        assert_eq!(max_abs_diff(&w, &orig), 0.0, "{t:?}");
    }
}

#[test]
fn quantized_checkpoint_round_trips_bit_exactly() {
    let (enc, input) = minilm();
    for p in [Precision::Int8, Precision::Bf16] {
        let mut q = enc.clone();
        q.quantize(p).unwrap();
        let dir = tempfile::tempdir().unwrap();
        q.save_quantized(dir.path(), Some(&common::model_dir()))
            .unwrap();
        assert!(dir.path().join("tokenizer.json").is_file());
        let size = std::fs::metadata(dir.path().join("model.safetensors"))
            .unwrap()
            .len();
        let (back, report) = Encoder::from_model_dir(dir.path()).unwrap();
        assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
        assert_eq!(back.precision(), p);
        let a = q.forward(&input, Forward::eval(None)).unwrap();
        let b = back.forward(&input, Forward::eval(None)).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{p}");
        for (((layer, t), lin), (_, bl)) in q.linears().into_iter().zip(back.linears()) {
            let x = lin.quantized.as_ref().unwrap().dequantize().unwrap();
            let y = bl.quantized.as_ref().unwrap().dequantize().unwrap();
            assert_eq!(max_abs_diff(&x, &y), 0.0, "layer {layer} {t:?}");
        }
        if p == Precision::Int8 {
            // The int8 tables and pooler round-trip too; the word table stays in the mapped
            // file, and a load from bytes in memory copies it and gives the same outputs.
            assert!(!dir.path().join("vocab.txt").exists());
            let tables = |e: &Encoder| match &e.body {
                Body::Bert(m) => [
                    m.embeddings.word_int8.clone().unwrap(),
                    m.embeddings.position_int8.clone().unwrap(),
                ],
                Body::ModernBert(_) | Body::MobileBert(_) => unreachable!("a BERT model"),
            };
            let [word, pos] = tables(&back);
            assert!(word.is_mapped() && pos.is_mapped());
            for (x, y) in tables(&q).iter().zip(tables(&back)) {
                let (x, y) = (x.dequantize().unwrap(), y.dequantize().unwrap());
                assert_eq!(max_abs_diff(&x, &y), 0.0);
            }
            assert!(back.pooler.as_ref().unwrap().quantized.is_some());
            assert_eq!(back.num_base_parameters(), enc.num_base_parameters());
            let config = std::fs::read(dir.path().join("config.json")).unwrap();
            let weights = std::fs::read(dir.path().join("model.safetensors")).unwrap();
            let path = dir.path().join("model.safetensors");
            let (mem, _) = Encoder::from_bytes(&config, &weights, &path).unwrap();
            assert!(!tables(&mem)[0].is_mapped());
            let c = mem.forward(&input, Forward::eval(None)).unwrap();
            assert_eq!(max_abs_diff(&a, &c), 0.0);
        }
        eprintln!("{p}: model.safetensors {size} bytes");
    }
}

/// A tiny encoder with two frozen groups whose B matrices are non-zero.
fn tiny_with_groups() -> Encoder {
    let mut rng = seed_rng(3);
    let mut enc = Encoder::random(EncoderConfig::tiny_bert(), &mut rng).unwrap();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: LoraTarget::ALL.to_vec(),
        ..Default::default()
    };
    for g in ["a", "b"] {
        enc.add_lora_group(g, &cfg, &mut rng).unwrap();
        enc.set_group_trainable(g, false).unwrap();
    }
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

/// LoRA deltas stay f32 beside the quantised base: the quantised output with a group differs
/// from the quantised output without it exactly as in f32 (up to the quantisation of the base),
/// and a mixed batch equals each row alone.
#[test]
fn lora_groups_and_mixed_batches_on_a_quantized_encoder() {
    let f32_enc = tiny_with_groups();
    let ids = vec![
        vec![2, 5, 9, 11, 3],
        vec![2, 7, 3, 0, 0],
        vec![2, 8, 13, 21, 3],
    ];
    let mask = vec![vec![1, 1, 1, 1, 1], vec![1, 1, 1, 0, 0], vec![1; 5]];
    let input = EncoderInput::from_vecs(&ids, &vec![vec![0; 5]; 3], &mask).unwrap();
    for p in [Precision::Int8, Precision::Bf16, Precision::F32] {
        let mut enc = f32_enc.clone();
        enc.prepare_inference(p).unwrap();
        let with_a = enc.forward(&input, Forward::eval(Some("a"))).unwrap();
        let without = enc.forward(&input, Forward::eval(None)).unwrap();
        let f32_a = f32_enc.forward(&input, Forward::eval(Some("a"))).unwrap();
        assert!(
            max_abs_diff(&with_a, &without) > 1e-2,
            "{p}: the group changes nothing"
        );
        let d = max_abs_diff(&with_a, &f32_a);
        assert!(d < 0.1, "{p}: quantised + LoRA vs f32 + LoRA: {d}");
        let groups = [Some("a"), None, Some("b")];
        let mixed = enc.forward_mixed(&input, &groups).unwrap();
        for (i, g) in groups.iter().enumerate() {
            let n = mask[i].iter().filter(|&&m| m == 1).count();
            let one =
                EncoderInput::from_vecs(&[ids[i][..n].to_vec()], &[vec![0; n]], &[vec![1; n]])
                    .unwrap();
            let alone = enc.forward(&one, Forward::eval(*g)).unwrap().i(0).unwrap();
            let got = mixed.i(i).unwrap().narrow(0, 0, n).unwrap();
            let d = max_abs_diff(&got, &alone);
            assert!(d <= 1e-5, "{p}: row {i} mixed vs alone: {d}");
        }
    }
}

fn assert_inference_only<T: std::fmt::Debug>(r: prefine_model::Result<T>, what: &str) {
    match r {
        Err(e @ Error::InferenceOnly { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("inference-only"), "{what}: {msg}");
        }
        other => panic!("{what}: expected an InferenceOnly error, got {other:?}"),
    }
}

/// What every inference-only encoder refuses: training mode, a trainable backbone, merging,
/// writing a Hugging Face checkpoint and copying f32 base weights.
fn assert_training_refused(enc: &Encoder) {
    let input = EncoderInput::from_vecs(&[vec![2, 5, 3]], &[vec![0; 3]], &[vec![1; 3]]).unwrap();
    let mut rng = seed_rng(0);
    assert_inference_only(
        enc.forward(&input, Forward::train(Some("a"), &mut rng)),
        "train forward",
    );
    let mut full = enc.clone();
    full.set_backbone_trainable(true);
    assert_inference_only(full.forward(&input, Forward::eval(None)), "trainable base");
    assert_inference_only(enc.clone().merge_group("a"), "merge");
    let dir = tempfile::tempdir().unwrap();
    assert_inference_only(enc.save_pretrained(dir.path(), None), "save_pretrained");
    assert_inference_only(enc.deep_copy_base(), "deep copy");
}

#[test]
fn training_a_quantized_encoder_fails_clearly() {
    let mut enc = tiny_with_groups();
    enc.quantize(Precision::Int8).unwrap();
    assert_training_refused(&enc);
    let input = EncoderInput::from_vecs(&[vec![2, 5, 3]], &[vec![0; 3]], &[vec![1; 3]]).unwrap();
    let mut rng = seed_rng(0);
    // A trainable LoRA group.
    let mut lora = enc.clone();
    lora.add_lora_group("new", &LoraConfig::default(), &mut rng)
        .unwrap();
    assert_inference_only(
        lora.forward(&input, Forward::eval(Some("new"))),
        "trainable group",
    );
    assert_inference_only(lora.forward_mixed(&input, &[Some("new")]), "mixed");
    // Baking, re-quantising.
    assert_inference_only(enc.clone().bake_group("a"), "bake");
    assert_inference_only(enc.clone().quantize(Precision::Bf16), "re-quantise");
    assert_inference_only(enc.clone().quantize(Precision::F32), "back to f32");
    assert!(
        enc.clone().quantize(Precision::Int8).is_ok(),
        "same precision is a no-op"
    );
    // A backward pass through a quantised layer names the problem.
    let q = enc
        .linears()
        .into_iter()
        .find_map(|(id, l)| (id == (0, LoraTarget::Query)).then_some(l))
        .unwrap()
        .quantized
        .clone()
        .unwrap();
    let (out, inp) = q.dims();
    let x = Var::from_tensor(&normal(2, inp, 1.0, &mut rng).unwrap()).unwrap();
    let bias = Tensor::zeros(out, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let y = q.forward(x.as_tensor(), &bias).unwrap();
    let err = y.sum_all().unwrap().backward().unwrap_err().to_string();
    assert!(err.contains("inference-only"), "{err}");
    // Quantising with a merged group is refused too.
    let mut merged = tiny_with_groups();
    merged.merge_group("a").unwrap();
    assert!(merged.quantize(Precision::Int8).is_err());
    assert!(merged.prepare_inference(Precision::F32).is_err());
}

#[test]
fn training_a_packed_f32_encoder_fails_clearly() {
    let mut enc = tiny_with_groups();
    enc.prepare_inference(Precision::F32).unwrap();
    assert_training_refused(&enc);
    let dir = tempfile::tempdir().unwrap();
    assert_inference_only(enc.save_quantized(dir.path(), None), "save_quantized");
    assert_inference_only(enc.clone().quantize(Precision::Int8), "quantise packed");
    // A quantised encoder is not packed back to f32.
    let mut q = tiny_with_groups();
    q.quantize(Precision::Int8).unwrap();
    assert_inference_only(q.prepare_inference(Precision::F32), "int8 to packed f32");
    assert!(
        q.prepare_inference(Precision::Int8).is_ok(),
        "same precision"
    );
}
