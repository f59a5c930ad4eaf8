//! The standard benchmark workloads (`../shared/bench/WORKLOAD.md`), implemented exactly:
//! token-classification training (full and LoRA) and forward-only inference, dropout off,
//! pseudo-random token ids in [1000, 30000) (within the vocabulary of a smaller model), median
//! step time over timed runs.

use std::time::Instant;

use candle_core::{Device, Tensor};
use prefine_model::heads::Classifier;
use prefine_model::ops::{with_matmul_precision, MatmulPrecision};
use prefine_model::{seed_rng, Encoder, EncoderInput, Forward, LoraConfig, Precision};
use rand::Rng;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::loss::masked_cross_entropy;
use crate::optim::{AdamW, AdamWConfig};

/// One of the four standard workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// All parameters trainable, token-classification head, batch 32 x 64.
    TrainFull,
    /// Frozen backbone, LoRA r=8 alpha=16 on query/value of every layer, batch 32 x 64.
    TrainLora,
    /// Forward only, batch 1 x 32.
    InferB1,
    /// Forward only, batch 32 x 128.
    InferB32,
}

impl Workload {
    /// Parses the workload's name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "train_full" => Self::TrainFull,
            "train_lora" => Self::TrainLora,
            "infer_b1" => Self::InferB1,
            "infer_b32" => Self::InferB32,
            _ => return None,
        })
    }

    /// The workload's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::TrainFull => "train_full",
            Self::TrainLora => "train_lora",
            Self::InferB1 => "infer_b1",
            Self::InferB32 => "infer_b32",
        }
    }

    /// `(warm-up runs, timed runs, batch, sequence length)` from WORKLOAD.md.
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        match self {
            Self::TrainFull | Self::TrainLora => (3, 10, 32, 64),
            Self::InferB1 => (5, 50, 1, 32),
            Self::InferB32 => (2, 10, 32, 128),
        }
    }
}

/// Overrides of the standard shape (for scaling studies); `None` keeps WORKLOAD.md's value.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Batch size.
    pub batch: Option<usize>,
    /// Sequence length.
    pub seq: Option<usize>,
    /// Warm-up and timed runs.
    pub runs: Option<(usize, usize)>,
    /// Precision of the backbone's linear weights (inference workloads), or of the matmuls
    /// (training workloads: `bf16` is mixed precision, `int8` is refused).
    pub precision: Precision,
}

/// One JSON line, with the same keys as the PyTorch anchor.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Always `"prefine"`.
    pub framework: &'static str,
    /// The workload's name.
    pub workload: &'static str,
    /// `batch * seq / median step seconds`.
    pub tokens_per_s: f64,
    /// Median step (or forward) time in milliseconds.
    pub step_ms_median: f64,
    /// Peak resident set size of the process, MB.
    pub peak_rss_mb: f64,
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq_len: usize,
    /// Warm-up runs.
    pub warmup: usize,
    /// Timed runs.
    pub timed_steps: usize,
    /// Worker threads.
    pub threads: usize,
    /// Precision of the backbone's linear weights (inference) or matmuls (training).
    pub precision: Precision,
    /// Loss of the last step (training workloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_loss: Option<f32>,
}

/// Peak resident set size (`VmHWM`) in MB, 0 where unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The workload's token ids are drawn from `[1000, 30000)`; a model with a smaller vocabulary
/// (any model directory can be benchmarked) draws from its upper three quarters instead.
fn id_range(vocab: usize) -> std::ops::Range<u32> {
    if vocab >= 30000 {
        1000..30000
    } else {
        (vocab / 4) as u32..vocab as u32
    }
}

fn inputs(batch: usize, seq: usize, vocab: usize) -> Result<(EncoderInput, Tensor)> {
    let mut rng = seed_rng(0);
    let range = id_range(vocab);
    let ids: Vec<Vec<u32>> = (0..batch)
        .map(|_| (0..seq).map(|_| rng.random_range(range.clone())).collect())
        .collect();
    let types = vec![vec![0u32; seq]; batch];
    let mask = vec![vec![1u32; seq]; batch];
    let labels: Vec<u32> = (0..batch * seq).map(|_| rng.random_range(0..9)).collect();
    Ok((
        EncoderInput::from_vecs(&ids, &types, &mask)?,
        Tensor::from_vec(labels, (batch, seq), &Device::Cpu)?,
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs a workload on `encoder` (dropout is off in every workload). The encoder's pooler is
/// not used (the anchor's token-classification model has none).
pub fn run(workload: Workload, mut encoder: Encoder, opts: &BenchOptions) -> Result<BenchResult> {
    let (mut warmup, mut timed, mut batch, mut seq) = workload.shape();
    batch = opts.batch.unwrap_or(batch);
    seq = opts.seq.unwrap_or(seq);
    if let Some((w, t)) = opts.runs {
        (warmup, timed) = (w, t);
    }
    if batch == 0 || seq == 0 || timed == 0 {
        return Err(Error::Config {
            field: "batch/seq/runs".into(),
            reason: "must be positive".into(),
        });
    }
    encoder.pooler = None;
    let inference = matches!(workload, Workload::InferB1 | Workload::InferB32);
    // Training in bf16 is mixed precision (bf16 matmul operands, f32 weights and
    // accumulation); int8 is inference-only.
    let matmul = training_precision(workload, opts.precision, inference)?;
    if inference {
        // Inference packs f32 weights once (or quantises), as `predict` and `serve` do;
        // PREFINE_NO_PREPACK=1 keeps plain f32 weights, for comparisons.
        if opts.precision != Precision::F32 || std::env::var_os("PREFINE_NO_PREPACK").is_none() {
            encoder.prepare_inference(opts.precision)?;
        }
    }
    let (input, labels) = inputs(batch, seq, encoder.config().vocab_size)?;
    let weight = input.attention_mask.clone();
    let mut times = Vec::with_capacity(timed);
    let mut last_loss = None;
    match workload {
        Workload::InferB1 | Workload::InferB32 => {
            for i in 0..warmup + timed {
                let t0 = Instant::now();
                let h = encoder.forward(&input, Forward::eval(None))?;
                drop(h);
                if i >= warmup {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
        }
        Workload::TrainFull | Workload::TrainLora => {
            let (t, l) = train_steps(
                workload,
                &mut encoder,
                matmul,
                &input,
                &labels,
                &weight,
                warmup + timed,
            )?;
            times = t.into_iter().skip(warmup).collect();
            last_loss = l;
        }
    }
    let med = median(times);
    Ok(BenchResult {
        framework: "prefine",
        workload: workload.name(),
        tokens_per_s: ((batch * seq) as f64 / med * 100.0).round() / 100.0,
        step_ms_median: (med * 1e6).round() / 1e3,
        peak_rss_mb: (peak_rss_mb() * 10.0).round() / 10.0,
        batch,
        seq_len: seq,
        warmup,
        timed_steps: timed,
        threads: rayon::current_num_threads(),
        precision: opts.precision,
        last_loss,
    })
}

/// `steps` training steps of `workload` (`train-full` or `train-lora`): their times and the last
/// loss.
fn train_steps(
    workload: Workload,
    encoder: &mut Encoder,
    matmul: MatmulPrecision,
    input: &EncoderInput,
    labels: &Tensor,
    weight: &Tensor,
    steps: usize,
) -> Result<(Vec<f64>, Option<f32>)> {
    let mut times = Vec::with_capacity(steps);
    let mut last_loss = None;
    let group = if workload == Workload::TrainLora {
        // WORKLOAD.md's group: fine-tuning's default LoRA group, without dropout.
        let cfg = LoraConfig {
            dropout: 0.0,
            ..crate::finetune::FinetuneConfig::default_lora()
        };
        encoder.add_lora_group("bench", &cfg, &mut seed_rng(1))?;
        Some("bench")
    } else {
        encoder.set_backbone_trainable(true);
        None
    };
    let head = Classifier::init(encoder.hidden_size(), 9, &mut seed_rng(2))?;
    let mut params: Vec<(String, candle_core::Var, bool)> = encoder
        .trainable_params()
        .into_iter()
        .map(|(n, p)| (n, p.var().clone(), true))
        .collect();
    params.push(("classifier.weight".into(), head.weight.var().clone(), true));
    params.push(("classifier.bias".into(), head.bias.var().clone(), true));
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: 5e-5,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    for _ in 0..steps {
        let t0 = Instant::now();
        let (h, logits, loss) = with_matmul_precision(matmul, || -> Result<_> {
            let h = encoder.forward(input, Forward::eval(group))?;
            let logits = head.forward(&h)?;
            let loss = masked_cross_entropy(&logits, labels, weight)?;
            Ok((h, logits, loss))
        })?;
        // As the trainers do: the gradients are taken over (and the store freed) one
        // tensor at a time, and the forward graph is gone before the update.
        opt.accumulate(loss.backward()?)?;
        last_loss = Some(loss.to_scalar::<f32>()?);
        drop((h, logits, loss));
        opt.apply(1.0)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok((times, last_loss))
}

/// The matmul precision of a training workload: bf16 is mixed precision (bf16 operands, f32
/// weights and accumulation); int8 is inference-only. Inference runs f32 matmuls.
fn training_precision(
    workload: Workload,
    precision: Precision,
    inference: bool,
) -> Result<MatmulPrecision> {
    Ok(match precision {
        _ if inference => MatmulPrecision::F32,
        Precision::F32 => MatmulPrecision::F32,
        Precision::Bf16 => MatmulPrecision::Bf16,
        Precision::Int8 => {
            return Err(Error::Config {
                field: "precision".into(),
                reason: format!(
                    "{} trains: int8 is inference-only (use f32 or bf16)",
                    workload.name()
                ),
            })
        }
    })
}
