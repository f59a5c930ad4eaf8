//! TC pre-finetuning: sentence embeddings (mean pooling, L2-normalised) trained with InfoNCE and
//! in-batch negatives on weakly related pairs, and supervised-contrastive on weakly labelled
//! texts (two texts of a label form a positive pair; texts sharing a label are never negatives).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, D};
use prefine_data::{read_jsonl, TcExample};
use prefine_model::heads::{l2_normalize, mean_pool};
use prefine_model::{Encoder, EncoderInput, Forward, SeedRng};
use prefine_tokenize::TextTokenizer;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::finetune::features::pad_batch;

/// The TC pre-finetuning pools.
#[derive(Debug, Clone, Default)]
pub struct TcPool {
    /// `(anchor, positive)` pairs.
    pub pairs: Vec<(String, String)>,
    /// Labelled texts.
    pub labelled: Vec<TcExample>,
    /// Indices of `labelled` per label, only labels with at least two texts.
    pub by_label: BTreeMap<String, Vec<usize>>,
}

#[derive(Deserialize)]
struct PairJson {
    anchor: String,
    positive: String,
}

impl TcPool {
    /// Reads the pools (either may be absent).
    pub fn load(pairs: Option<&Path>, labelled: Option<&Path>) -> Result<Self> {
        let mut pool = TcPool::default();
        if let Some(p) = pairs {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let j: PairJson = serde_json::from_str(line).map_err(|e| Error::File {
                    path: p.to_path_buf(),
                    reason: format!("line {}: {e}", i + 1),
                })?;
                if j.anchor.trim().is_empty() || j.positive.trim().is_empty() {
                    return Err(Error::File {
                        path: p.to_path_buf(),
                        reason: format!("line {}: empty text", i + 1),
                    });
                }
                pool.pairs.push((j.anchor, j.positive));
            }
        }
        if let Some(p) = labelled {
            pool.labelled = read_jsonl(p)?;
            let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (i, e) in pool.labelled.iter().enumerate() {
                by.entry(e.label.clone()).or_default().push(i);
            }
            by.retain(|_, v| v.len() >= 2);
            pool.by_label = by;
        }
        if pool.pairs.is_empty() && pool.by_label.is_empty() {
            return Err(Error::Data("the TC pre-finetuning pools are empty".into()));
        }
        Ok(pool)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.pairs.len() + self.labelled.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One contrastive batch: anchors, positives and a group id per pair (pairs of the same group
/// are not negatives of each other).
#[derive(Debug, Clone)]
pub struct TcBatch {
    /// Anchor texts.
    pub anchors: Vec<String>,
    /// Positive texts.
    pub positives: Vec<String>,
    /// Group of each pair (`None`: only its own positive is excluded).
    pub groups: Vec<Option<String>>,
}

/// Draws a batch: from the pairs pool with probability `pairs_fraction`, else `n` pairs of
/// same-label texts (distinct labels where possible).
pub fn sample_batch(pool: &TcPool, n: usize, pairs_fraction: f64, rng: &mut SeedRng) -> TcBatch {
    let use_pairs = pool.by_label.is_empty()
        || (!pool.pairs.is_empty() && rng.random::<f64>() < pairs_fraction);
    let mut b = TcBatch {
        anchors: Vec::new(),
        positives: Vec::new(),
        groups: Vec::new(),
    };
    if use_pairs {
        for _ in 0..n {
            let (a, p) = &pool.pairs[rng.random_range(0..pool.pairs.len())];
            b.anchors.push(a.clone());
            b.positives.push(p.clone());
            b.groups.push(None);
        }
    } else {
        let labels: Vec<&String> = pool.by_label.keys().collect();
        let chosen: Vec<&&String> = if labels.len() >= n {
            labels.choose_multiple(rng, n).collect()
        } else {
            (0..n)
                .map(|_| labels.choose(rng).expect("non-empty"))
                .collect()
        };
        for l in chosen {
            let idx = &pool.by_label[*l];
            let two: Vec<&usize> = idx.choose_multiple(rng, 2).collect();
            b.anchors.push(pool.labelled[*two[0]].text.clone());
            b.positives.push(pool.labelled[*two[1]].text.clone());
            b.groups.push(Some((*l).clone()));
        }
    }
    b
}

fn embed(
    encoder: &Encoder,
    fwd: Forward<'_>,
    tok: &TextTokenizer,
    texts: &[String],
    max_length: usize,
) -> Result<Tensor> {
    let mut seqs = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let mut ids = tok.encode(i, t)?.ids;
        if ids.len() > max_length {
            let last = *ids.last().expect("non-empty");
            ids.truncate(max_length);
            ids[max_length - 1] = last;
        }
        seqs.push(ids);
    }
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let input: EncoderInput = pad_batch(&refs, tok.pad_id())?;
    let h = encoder.forward(&input, fwd)?;
    Ok(l2_normalize(&mean_pool(&h, &input.attention_mask)?)?)
}

/// InfoNCE with in-batch negatives over `sim [n, n]` (row i's positive is column i), with
/// `exclude [n, n]` = 1 where a pair must not be used as a negative.
pub fn info_nce(
    sim: &Tensor,
    exclude: &Tensor,
    temperature: f64,
    symmetric: bool,
) -> Result<Tensor> {
    let n = sim.dims2()?.0;
    let bias = (exclude * -1e4)?;
    let targets = Tensor::arange(0u32, n as u32, &Device::Cpu)?;
    let one_way = |s: &Tensor| -> Result<Tensor> {
        let logits = ((s / temperature)? + &bias)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        Ok(logp.gather(&targets.unsqueeze(1)?, 1)?.mean_all()?.neg()?)
    };
    let l = one_way(sim)?;
    if symmetric {
        Ok(((l + one_way(&sim.t()?.contiguous()?)?)? * 0.5)?)
    } else {
        Ok(l)
    }
}

/// The exclusion mask of a batch: `[i, j]` = 1 when `i != j` and both pairs share a group.
pub fn exclusion_mask(groups: &[Option<String>]) -> Result<Tensor> {
    let n = groups.len();
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            if i != j && groups[i].is_some() && groups[i] == groups[j] {
                m[i * n + j] = 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(m, (n, n), &Device::Cpu)?)
}

/// The TC objective's loss on a batch.
#[allow(clippy::too_many_arguments)]
pub fn tc_loss(
    encoder: &Encoder,
    group: Option<&str>,
    also: Option<&str>,
    mut dropout_rng: Option<&mut SeedRng>,
    tok: &TextTokenizer,
    batch: &TcBatch,
    max_length: usize,
    temperature: f64,
    symmetric: bool,
) -> Result<Tensor> {
    let a = embed(
        encoder,
        Forward {
            group,
            also,
            dropout_rng: dropout_rng.as_deref_mut(),
        },
        tok,
        &batch.anchors,
        max_length,
    )?;
    let p = embed(
        encoder,
        Forward {
            group,
            also,
            dropout_rng,
        },
        tok,
        &batch.positives,
        max_length,
    )?;
    let sim = a.matmul(&p.t()?)?;
    info_nce(
        &sim,
        &exclusion_mask(&batch.groups)?,
        temperature,
        symmetric,
    )
}
