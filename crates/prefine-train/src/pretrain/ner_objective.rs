//! NER pre-finetuning (NuNER-style): token embeddings against entity-type ("concept")
//! embeddings, binary cross-entropy over (token, concept) pairs. Positives: every subword of
//! a span of that type. Negatives: the other concepts of the batch, restricted to the types
//! the sentence's source annotates (an unlabelled span is no evidence against another
//! source's type).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{Device, Tensor};
use prefine_data::{read_conll, ConllOptions, NerSentence};
use prefine_model::heads::{l2_normalize, mean_pool};
use prefine_model::{Encoder, Forward, Param, SeedRng};
use prefine_tokenize::align::subwords;
use prefine_tokenize::TextTokenizer;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::finetune::features::pad_batch;

/// One source corpus of the pool.
#[derive(Debug, Clone)]
pub struct Source {
    /// Name.
    pub name: String,
    /// Sentence range `[start, end)` in `train.conll`.
    pub range: (usize, usize),
    /// Entity types it annotates.
    pub types: BTreeSet<String>,
}

/// The NER pre-finetuning pool.
#[derive(Debug, Clone)]
pub struct NerPool {
    /// Sentences (IOB2).
    pub sentences: Vec<NerSentence>,
    /// Source index of each sentence.
    pub source_of: Vec<usize>,
    /// Sources.
    pub sources: Vec<Source>,
    /// Readable name of each type.
    pub concept_names: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct SourceJson {
    train: (usize, usize),
    labels: Vec<String>,
}

#[derive(Deserialize)]
struct ConceptsJson {
    concepts: BTreeMap<String, String>,
}

/// A readable concept name derived from a type tag: underscores/hyphens to spaces, camelCase
/// split, lower-cased (the rule `concept_names.json` documents).
pub fn derive_concept_name(tag: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for ch in tag.chars() {
        if ch == '_' || ch == '-' {
            out.push(' ');
            prev_lower = false;
            continue;
        }
        if ch.is_uppercase() && prev_lower {
            out.push(' ');
        }
        prev_lower = ch.is_lowercase();
        out.extend(ch.to_lowercase());
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The sources of a pool: from `sources.json` (`text`), or one source annotating every type seen.
fn read_sources(
    dir: &Path,
    sentences: &[NerSentence],
    text: Option<String>,
) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    match text {
        Some(text) => {
            let map: BTreeMap<String, SourceJson> = serde_json::from_str(&text)
                .map_err(|e| Error::json(&dir.join("sources.json"), e))?;
            for (name, s) in map {
                if s.train.1 > sentences.len() || s.train.0 > s.train.1 {
                    return Err(Error::File {
                        path: dir.join("sources.json"),
                        reason: format!(
                            "source {name}: range {:?} outside the {} sentences",
                            s.train,
                            sentences.len()
                        ),
                    });
                }
                sources.push(Source {
                    name,
                    range: s.train,
                    types: s.labels.into_iter().collect(),
                });
            }
        }
        None => {
            let types = sentences
                .iter()
                .flat_map(|s| s.tags.iter().filter_map(|t| t.get(2..).map(str::to_string)))
                .collect();
            sources.push(Source {
                name: "all".into(),
                range: (0, sentences.len()),
                types,
            });
        }
    }
    Ok(sources)
}

impl NerPool {
    /// Loads `train.conll`, `sources.json` and `concept_names.json` from `dir`. Without
    /// `sources.json` the whole file is one source annotating every type seen.
    pub fn load(dir: &Path) -> Result<Self> {
        let sentences = read_conll(
            dir.join("train.conll"),
            &ConllOptions {
                repair: true,
                ..Default::default()
            },
        )?
        .sentences;
        let read_json = |name: &str| -> Result<Option<String>> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            std::fs::read_to_string(&p)
                .map(Some)
                .map_err(|e| Error::io(&p, e))
        };
        let sources = read_sources(dir, &sentences, read_json("sources.json")?)?;
        let mut source_of = vec![usize::MAX; sentences.len()];
        for (i, s) in sources.iter().enumerate() {
            for slot in &mut source_of[s.range.0..s.range.1] {
                *slot = i;
            }
        }
        if let Some(i) = source_of.iter().position(|&s| s == usize::MAX) {
            return Err(Error::Data(format!(
                "sentence {} of {} belongs to no source",
                i + 1,
                dir.display()
            )));
        }
        let mut concept_names: BTreeMap<String, String> = match read_json("concept_names.json")? {
            Some(text) => {
                serde_json::from_str::<ConceptsJson>(&text)
                    .map_err(|e| Error::json(&dir.join("concept_names.json"), e))?
                    .concepts
            }
            None => BTreeMap::new(),
        };
        for s in &sources {
            for t in &s.types {
                concept_names
                    .entry(t.clone())
                    .or_insert_with(|| derive_concept_name(t));
            }
        }
        Ok(Self {
            sentences,
            source_of,
            sources,
            concept_names,
        })
    }

    /// Number of sentences.
    pub fn len(&self) -> usize {
        self.sentences.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.sentences.is_empty()
    }
}

/// The tensors of one NER batch.
#[derive(Debug)]
pub struct NerBatch {
    /// Padded subword ids.
    pub input: prefine_model::EncoderInput,
    /// Flat `b * seq + pos` indices of the scored tokens.
    pub token_index: Tensor,
    /// Concept type keys of the batch (columns).
    pub concepts: Vec<String>,
    /// `[tokens, concepts]` 1 for positive pairs.
    pub targets: Tensor,
    /// `[tokens, concepts]` 1 where the pair is scored (concept annotated by the token's source).
    pub valid: Tensor,
}

/// Builds a batch from sentence indices.
pub fn build_batch(
    pool: &NerPool,
    idx: &[usize],
    tok: &TextTokenizer,
    max_length: usize,
) -> Result<NerBatch> {
    let concepts: Vec<String> = idx
        .iter()
        .flat_map(|&i| pool.sources[pool.source_of[i]].types.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let col: BTreeMap<&str, usize> = concepts
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let cls = tok.token_to_id("[CLS]").unwrap_or(101);
    let sep = tok.token_to_id("[SEP]").unwrap_or(102);
    let mut seqs = Vec::new();
    let mut rows: Vec<(usize, usize, usize, Option<usize>)> = Vec::new(); // (batch row, pos, sentence, positive col)
    for (b, &si) in idx.iter().enumerate() {
        let s = &pool.sentences[si];
        let words: Vec<&str> = s.tokens.iter().map(String::as_str).collect();
        let (ids, word_of) = subwords(tok, &words)?;
        let keep = ids.len().min(max_length - 2);
        let mut seq = Vec::with_capacity(keep + 2);
        seq.push(cls);
        seq.extend_from_slice(&ids[..keep]);
        seq.push(sep);
        for (p, &w) in word_of[..keep].iter().enumerate() {
            let ty = s.tags[w].get(2..).filter(|_| s.tags[w] != "O");
            rows.push((b, p + 1, si, ty.and_then(|t| col.get(t).copied())));
        }
        seqs.push(seq);
    }
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let input = pad_batch(&refs, tok.pad_id())?;
    let seq_len = input.dims()?.1;
    let c = concepts.len();
    let mut targets = vec![0f32; rows.len() * c];
    let mut valid = vec![0f32; rows.len() * c];
    let mut flat = Vec::with_capacity(rows.len());
    for (r, &(b, p, si, pos)) in rows.iter().enumerate() {
        flat.push((b * seq_len + p) as u32);
        let types = &pool.sources[pool.source_of[si]].types;
        for (j, name) in concepts.iter().enumerate() {
            if types.contains(name) {
                valid[r * c + j] = 1.0;
            }
        }
        if let Some(j) = pos {
            targets[r * c + j] = 1.0;
            valid[r * c + j] = 1.0;
        }
    }
    let n = rows.len();
    Ok(NerBatch {
        input,
        token_index: Tensor::from_vec(flat, n, &Device::Cpu)?,
        concepts,
        targets: Tensor::from_vec(targets, (n, c), &Device::Cpu)?,
        valid: Tensor::from_vec(valid, (n, c), &Device::Cpu)?,
    })
}

/// Learned logit scale and bias of the token–concept score.
#[derive(Debug, Clone)]
pub struct ConceptScorer {
    /// log of the scale.
    pub log_scale: Param,
    /// Bias.
    pub bias: Param,
}

impl ConceptScorer {
    /// New scorer; trainable when `learned`.
    pub fn new(initial_scale: f64, learned: bool) -> Result<Self> {
        let mut log_scale = Param::new(&Tensor::new(&[initial_scale.ln() as f32], &Device::Cpu)?)?;
        let mut bias = Param::new(&Tensor::new(&[-2f32], &Device::Cpu)?)?;
        log_scale.set_trainable(learned);
        bias.set_trainable(learned);
        Ok(Self { log_scale, bias })
    }
}

/// Balanced binary cross-entropy with logits: mean over valid positive pairs and mean over valid
/// negative pairs, averaged (positives are ~1% of the pairs).
pub fn balanced_bce(logits: &Tensor, targets: &Tensor, valid: &Tensor) -> Result<Tensor> {
    // softplus(x) - x*y, computed stably: relu(x) - x*y + log(1 + exp(-|x|)).
    let sp = (logits.relu()? + ((logits.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    let per = (sp - (logits * targets)?)?;
    let pos_mask = (targets * valid)?;
    let neg_mask = ((targets.ones_like()? - targets)? * valid)?;
    let npos = pos_mask.sum_all()?.to_scalar::<f32>()?;
    let nneg = neg_mask.sum_all()?.to_scalar::<f32>()?;
    let mut parts = Vec::new();
    if npos > 0.0 {
        parts.push(((&per * &pos_mask)?.sum_all()? / npos as f64)?);
    }
    if nneg > 0.0 {
        parts.push(((&per * &neg_mask)?.sum_all()? / nneg as f64)?);
    }
    if parts.is_empty() {
        return Ok(Tensor::new(0f32, &Device::Cpu)?);
    }
    let n = parts.len() as f64;
    let sum = parts
        .into_iter()
        .reduce(|a, b| (a + b).expect("same shape"))
        .expect("non-empty");
    Ok((sum / n)?)
}

/// The NER objective's loss on a batch. `concept_encoder` is the encoder for concept names
/// (the same one for `shared`), run with `concept_group`.
#[allow(clippy::too_many_arguments)]
pub fn ner_loss(
    encoder: &Encoder,
    fwd: Forward<'_>,
    concept_encoder: &Encoder,
    concept_group: Option<&str>,
    scorer: &ConceptScorer,
    batch: &NerBatch,
    pool: &NerPool,
    tok: &TextTokenizer,
) -> Result<Tensor> {
    let h = encoder.forward(&batch.input, fwd)?;
    let (b, s, d) = h.dims3()?;
    let tokens = l2_normalize(&h.reshape((b * s, d))?.index_select(&batch.token_index, 0)?)?;
    let names: Vec<String> = batch
        .concepts
        .iter()
        .map(|c| {
            pool.concept_names
                .get(c)
                .cloned()
                .unwrap_or_else(|| derive_concept_name(c))
        })
        .collect();
    let enc = tok.encode_batch(&names)?;
    let cin =
        prefine_model::EncoderInput::from_vecs(&enc.input_ids, &enc.type_ids, &enc.attention_mask)?;
    let ch = concept_encoder.forward(
        &cin,
        Forward {
            group: concept_group,
            dropout_rng: None,
            also: None,
        },
    )?;
    let concepts = l2_normalize(&mean_pool(&ch, &cin.attention_mask)?)?;
    let scale = scorer.log_scale.t().exp()?;
    let logits = tokens
        .matmul(&concepts.t()?)?
        .broadcast_mul(&scale)?
        .broadcast_add(&scorer.bias.t())?;
    balanced_bce(&logits, &batch.targets, &batch.valid)
}

/// Draws `n` sentence indices uniformly.
pub fn sample_indices(pool_len: usize, n: usize, rng: &mut SeedRng) -> Vec<usize> {
    use rand::Rng;
    (0..n).map(|_| rng.random_range(0..pool_len)).collect()
}
