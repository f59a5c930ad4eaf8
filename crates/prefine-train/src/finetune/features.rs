//! Turning datasets into model inputs: NER sentences into owned windows with per-position
//! labels, TC texts into truncated encodings with a label id; length-bucketed batches.

use prefine_data::{LabelSet, NerSentence, TcExample};
use prefine_model::EncoderInput;
use prefine_tokenize::{windows, TextTokenizer, WindowConfig};
use rand::seq::SliceRandom;

use crate::error::{Error, Result};
use prefine_model::SeedRng as TrainRng;

/// One NER window: subword ids and, at owned first subwords, the word's label id.
#[derive(Debug, Clone)]
pub struct NerFeature {
    /// Index of the sentence in its dataset.
    pub sentence: usize,
    /// Subword ids (`[CLS] ... [SEP]`).
    pub ids: Vec<u32>,
    /// Per position: `(word index, label id)` where the window owns the word's first subword.
    /// Label ids of words whose tag is unknown to the label set are `None` (evaluated, not trained).
    pub owned: Vec<Option<(usize, Option<u32>)>>,
}

/// One TC example: subword ids and a label id (`None` for a label unseen in training).
#[derive(Debug, Clone)]
pub struct TcFeature {
    /// Subword ids.
    pub ids: Vec<u32>,
    /// Label id.
    pub label: Option<u32>,
}

/// Windows of every sentence. Tags not in `labels` get `None`.
pub fn ner_features(
    tok: &TextTokenizer,
    sentences: &[NerSentence],
    labels: &LabelSet,
    max_length: usize,
    stride: usize,
) -> Result<Vec<NerFeature>> {
    let cfg = WindowConfig { max_length, stride };
    let mut out = Vec::new();
    for (si, s) in sentences.iter().enumerate() {
        let words: Vec<&str> = s.tokens.iter().map(String::as_str).collect();
        let wins = windows(tok, &words, cfg)
            .map_err(|e| Error::Data(format!("sentence {}: {e}", si + 1)))?;
        for w in wins {
            let owned = w
                .owner_word
                .iter()
                .map(|o| o.map(|wi| (wi, labels.id(&s.tags[wi]).map(|i| i as u32))))
                .collect();
            out.push(NerFeature {
                sentence: si,
                ids: w.ids,
                owned,
            });
        }
    }
    Ok(out)
}

/// Encodings of every text, truncated to `max_length` (counted and logged).
pub fn tc_features(
    tok: &TextTokenizer,
    examples: &[TcExample],
    labels: &LabelSet,
) -> Result<(Vec<TcFeature>, usize)> {
    let mut truncated = 0;
    let mut out = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        let enc = tok
            .encode(i, &ex.text)
            .map_err(|e| Error::Data(format!("example {}: {e}", i + 1)))?;
        truncated += enc.truncated as usize;
        out.push(TcFeature {
            ids: enc.ids,
            label: labels.id(&ex.label).map(|l| l as u32),
        });
    }
    Ok((out, truncated))
}

/// Cuts a seeded shuffle of the indices into batches (no grouping by length).
pub fn shuffled_batches(n: usize, batch: usize, rng: &mut TrainRng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    idx.chunks(batch).map(<[usize]>::to_vec).collect()
}

/// Groups indices into batches of similar length: shuffle (when `rng` is given), sort by length
/// inside chunks of 50 batches, cut, then shuffle the batch order.
pub fn bucketed_batches(
    lengths: &[usize],
    batch: usize,
    rng: Option<&mut TrainRng>,
) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    match rng {
        Some(rng) => {
            idx.shuffle(rng);
            for chunk in idx.chunks_mut(batch * 50) {
                chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            }
            let mut batches: Vec<Vec<usize>> = idx.chunks(batch).map(<[usize]>::to_vec).collect();
            batches.shuffle(rng);
            batches
        }
        None => {
            idx.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            idx.chunks(batch).map(<[usize]>::to_vec).collect()
        }
    }
}

/// Pads id sequences into an encoder input (pad id 0, segment 0).
pub fn pad_batch(seqs: &[&[u32]], pad_id: u32) -> Result<EncoderInput> {
    let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len());
    let mut mask = Vec::with_capacity(seqs.len());
    for s in seqs {
        let mut v = s.to_vec();
        v.resize(len, pad_id);
        ids.push(v);
        let mut m = vec![1u32; s.len()];
        m.resize(len, 0);
        mask.push(m);
    }
    let types = vec![vec![0u32; len]; seqs.len()];
    Ok(EncoderInput::from_vecs(&ids, &types, &mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_batchings_cover_every_example_once() {
        let lengths: Vec<usize> = (0..103).map(|i| 1 + (i * 37) % 61).collect();
        let mut rng = prefine_model::seed_rng(7);
        let plain = shuffled_batches(lengths.len(), 10, &mut rng);
        let grouped = bucketed_batches(&lengths, 10, Some(&mut rng));
        for batches in [&plain, &grouped] {
            assert_eq!(batches.len(), 11);
            let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..103).collect::<Vec<_>>());
        }
        // Grouping by length gives batches with a smaller spread of lengths.
        let spread = |b: &Vec<Vec<usize>>| -> usize {
            b.iter()
                .map(|x| {
                    let l = x.iter().map(|&i| lengths[i]);
                    l.clone().max().unwrap() - l.min().unwrap()
                })
                .sum()
        };
        assert!(spread(&grouped) < spread(&plain));
        // Seeded: the same seed gives the same batches.
        assert_eq!(
            plain,
            shuffled_batches(103, 10, &mut prefine_model::seed_rng(7))
        );
    }
}
