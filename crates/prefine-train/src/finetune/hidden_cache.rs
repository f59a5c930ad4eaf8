//! [`HiddenCache`]: the frozen backbone's token states, computed once per distinct input.
//!
//! In `head` mode nothing below the head trains, so the encoder output of an input never changes:
//! every epoch, every dev evaluation and (in the evaluation suite) every fraction and seed of the
//! same backbone and task can reuse it. Entries are keyed by the token ids of one unpadded row;
//! inputs are single segments, so the ids determine the output. States are computed in
//! evaluation mode (no backbone dropout): the standard feature-extraction linear probe. The
//! head's own dropout still applies in training.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use prefine_model::{Encoder, EncoderInput, Forward};

use crate::error::Result;

/// Cached `[len, hidden]` states per unpadded id sequence, bounded by a byte budget.
pub struct HiddenCache {
    owner: String,
    budget_bytes: usize,
    inner: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    map: HashMap<Vec<u32>, Tensor>,
    bytes: usize,
    hits: u64,
    misses: u64,
}

impl std::fmt::Debug for HiddenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.lock().map(|s| (s.map.len(), s.bytes));
        f.debug_struct("HiddenCache")
            .field("owner", &self.owner)
            .field("entries_bytes", &s.ok())
            .finish()
    }
}

impl HiddenCache {
    /// An empty cache for the encoder identified by `owner` (e.g. model directory + adapter),
    /// holding at most `budget_mb` MiB of states (further inputs are computed, not stored).
    pub fn new(owner: impl Into<String>, budget_mb: usize) -> Self {
        Self {
            owner: owner.into(),
            budget_bytes: budget_mb.saturating_mul(1 << 20),
            inner: Mutex::new(CacheState::default()),
        }
    }

    /// Which encoder the states belong to.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// `(entries, bytes, hits, misses)`.
    pub fn stats(&self) -> (usize, usize, u64, u64) {
        let s = self.inner.lock().expect("cache lock");
        (s.map.len(), s.bytes, s.hits, s.misses)
    }

    /// The encoder output for a padded batch, `[batch, seq, hidden]`, with padding positions
    /// zero; rows seen before come from the cache, the others run through `encoder` (with the
    /// frozen `group`, if any) in one sub-batch.
    pub fn hidden(
        &self,
        encoder: &Encoder,
        group: Option<&str>,
        input: &EncoderInput,
    ) -> Result<Tensor> {
        let (b, s) = input.dims()?;
        let ids = input.input_ids.to_vec2::<u32>()?;
        let mask = input.attention_mask.to_vec2::<f32>()?;
        let rows: Vec<Vec<u32>> = ids
            .iter()
            .zip(&mask)
            .map(|(r, m)| {
                let len = m.iter().filter(|&&x| x > 0.0).count();
                r[..len].to_vec()
            })
            .collect();
        let mut found: Vec<Option<Tensor>> = {
            let mut st = self.inner.lock().expect("cache lock");
            let v: Vec<Option<Tensor>> = rows.iter().map(|r| st.map.get(r).cloned()).collect();
            let hits = v.iter().filter(|x| x.is_some()).count() as u64;
            st.hits += hits;
            st.misses += b as u64 - hits;
            v
        };
        let missing: Vec<usize> = (0..b).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let width = missing.iter().map(|&i| rows[i].len()).max().unwrap_or(1);
            let mut sub_ids = Vec::with_capacity(missing.len());
            let mut sub_mask = Vec::with_capacity(missing.len());
            for &i in &missing {
                let mut r = rows[i].clone();
                let len = r.len();
                r.resize(width, 0);
                sub_ids.push(r);
                let mut m = vec![1u32; len];
                m.resize(width, 0);
                sub_mask.push(m);
            }
            let types = vec![vec![0u32; width]; missing.len()];
            let sub = EncoderInput::from_vecs(&sub_ids, &types, &sub_mask)?;
            let h = encoder.forward(&sub, Forward::eval(group))?;
            let mut st = self.inner.lock().expect("cache lock");
            for (k, &i) in missing.iter().enumerate() {
                let len = rows[i].len();
                let row = h.get(k)?.narrow(0, 0, len)?.contiguous()?;
                let bytes = row.elem_count() * 4;
                if st.bytes + bytes <= self.budget_bytes && !st.map.contains_key(&rows[i]) {
                    st.bytes += bytes;
                    st.map.insert(rows[i].clone(), row.clone());
                }
                found[i] = Some(row);
            }
        }
        let hidden_size = encoder.hidden_size();
        let padded: Vec<Tensor> = found
            .into_iter()
            .map(|t| {
                let t = t.expect("every row filled");
                let len = t.dim(0)?;
                if len == s {
                    Ok(t)
                } else {
                    let z = Tensor::zeros((s - len, hidden_size), DType::F32, &Device::Cpu)?;
                    Ok(Tensor::cat(&[&t, &z], 0)?)
                }
            })
            .collect::<Result<_>>()?;
        Ok(Tensor::stack(&padded, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prefine_model::{seed_rng, EncoderConfig};

    #[test]
    fn cached_states_equal_a_fresh_forward() {
        let mut rng = seed_rng(3);
        let enc = Encoder::random(EncoderConfig::tiny_bert(), &mut rng).unwrap();
        let cache = HiddenCache::new("tiny", 16);
        let ids = vec![vec![2, 5, 7, 3], vec![2, 9, 3, 0]];
        let mask = vec![vec![1, 1, 1, 1], vec![1, 1, 1, 0]];
        let types = vec![vec![0; 4]; 2];
        let input = EncoderInput::from_vecs(&ids, &types, &mask).unwrap();
        let direct = enc.forward(&input, Forward::eval(None)).unwrap();
        let first = cache.hidden(&enc, None, &input).unwrap();
        let second = cache.hidden(&enc, None, &input).unwrap();
        assert_eq!(cache.stats().0, 2);
        assert_eq!(cache.stats().2, 2, "second call is served from the cache");
        let m = input.attention_mask.unsqueeze(2).unwrap();
        let want = direct.broadcast_mul(&m).unwrap();
        for got in [first, second] {
            let diff = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{diff}");
        }
    }

    #[test]
    fn a_zero_budget_stores_nothing() {
        let mut rng = seed_rng(3);
        let enc = Encoder::random(EncoderConfig::tiny_bert(), &mut rng).unwrap();
        let cache = HiddenCache::new("tiny", 0);
        let input =
            EncoderInput::from_vecs(&[vec![2, 5, 3]], &[vec![0; 3]], &[vec![1; 3]]).unwrap();
        cache.hidden(&enc, None, &input).unwrap();
        assert_eq!(cache.stats().0, 0);
    }
}
