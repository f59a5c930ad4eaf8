//! Zero-shot NER and classification: entity types and labels given by *name* at request time,
//! no fine-tuning, from a `prefine pretrain` output (its `zero_shot.json`, backbone and family
//! adapters) or from a plain model directory (the base-model baseline).
//!
//! - **NER.** Every word (its first subword, in the window that owns it) is scored against the
//!   embedding of each type name: `sigmoid(scale * cos + bias)` with the pre-finetuning
//!   objective's learned scale and bias (pre-finetuned backbone), or the plain cosine (base
//!   model). A word takes the best type when that score reaches the threshold, else `O`;
//!   consecutive words of one type form one entity (BIO by the best type above a threshold).
//!   Type names go through the same encoder and NER adapter, mean-pooled and L2-normalised, as
//!   in pre-finetuning.
//! - **TC.** Texts and label names (optionally put into a template such as
//!   `"This text is about {}."`) are mean-pooled and L2-normalised through the TC adapter; the
//!   scores are the softmax over labels of `cos / temperature` (the InfoNCE temperature of
//!   pre-finetuning; 0.05 for the base model).
//!
//! Depends only on the model, tokenizer and metrics crates (and prefine-data's example types);
//! reading data files for evaluation is the CLI's (`prefine evaluate --zero-shot`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use prefine_data::{NerSentence, TcExample};
use prefine_eval::{entities, ner_metrics, tc_metrics, NerMetrics, NerMode, TcMetrics};
use prefine_model::heads::{l2_normalize, mean_pool};
use prefine_model::peft::load_adapter;
use prefine_model::zero_shot::{ZeroShotSpec, ZERO_SHOT_FILE};
use prefine_model::{Encoder, EncoderInput, Forward, Precision};
use prefine_tokenize::{
    split_words, windows, Overflow, TextTokenizer, TokenizeConfig, WindowConfig,
};

use crate::error::{Error, Result};
use crate::predict::{PredictedEntity, Prediction};

/// Default NER threshold on `sigmoid(scale * cos + bias)` (pre-finetuned backbone), chosen by
/// the mean strict F1 on the dev splits of the six out-of-domain NER tasks
/// (docs/EXPERIMENTS.md, "Zero-shot").
pub const DEFAULT_NER_THRESHOLD: f32 = 0.9;

/// Default NER threshold on the plain cosine (base model baseline), chosen the same way.
pub const DEFAULT_COSINE_THRESHOLD: f32 = 0.2;

/// Softmax temperature of the base-model baseline for TC (it has no trained temperature).
pub const BASE_TC_TEMPERATURE: f32 = 0.05;

/// Settings of zero-shot inference.
#[derive(Debug, Clone)]
pub struct ZeroShotConfig {
    /// NER window length in subwords (special tokens included); TC truncation length.
    pub max_length: usize,
    /// NER window overlap in subwords.
    pub stride: usize,
    /// Rows (windows or texts) per forward pass.
    pub batch_size: usize,
}

impl Default for ZeroShotConfig {
    fn default() -> Self {
        Self {
            max_length: 128,
            stride: 32,
            batch_size: 32,
        }
    }
}

/// Zero-shot predictions use the `prefine predict` shapes.
pub type ZeroShotPrediction = Prediction;

/// How token–name cosines become scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NerScoring {
    /// `sigmoid(scale * cos + bias)`: the pre-finetuning objective's scorer.
    Learned {
        /// Logit scale.
        scale: f32,
        /// Logit bias.
        bias: f32,
    },
    /// The plain cosine (base model).
    Cosine,
}

impl NerScoring {
    fn apply(self, cos: f32) -> f32 {
        match self {
            Self::Learned { scale, bias } => 1.0 / (1.0 + (-(scale * cos + bias)).exp()),
            Self::Cosine => cos,
        }
    }

    /// The default threshold for this scoring.
    pub fn default_threshold(self) -> f32 {
        match self {
            Self::Learned { .. } => DEFAULT_NER_THRESHOLD,
            Self::Cosine => DEFAULT_COSINE_THRESHOLD,
        }
    }
}

/// The adapter group names installed on the encoder.
const NER_GROUP: &str = "zero_shot_ner";
const TC_GROUP: &str = "zero_shot_tc";

/// A backbone ready for zero-shot NER and TC.
pub struct ZeroShot {
    encoder: Encoder,
    name_encoder: Option<Encoder>,
    tokenizer: TextTokenizer,
    ner_group: Option<&'static str>,
    tc_group: Option<&'static str>,
    ner: Option<NerScoring>,
    tc_temperature: Option<f32>,
    baseline: bool,
    config: ZeroShotConfig,
}

impl std::fmt::Debug for ZeroShot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroShot")
            .field("ner", &self.ner)
            .field("tc_temperature", &self.tc_temperature)
            .field("baseline", &self.baseline)
            .finish()
    }
}

impl ZeroShot {
    /// Loads a `prefine pretrain` output (`zero_shot.json`, `backbone/`, `adapters/`) or, for
    /// the baseline, a plain model directory (`config.json` at its root).
    pub fn load(dir: &Path, config: ZeroShotConfig) -> Result<Self> {
        if !dir.join(ZERO_SHOT_FILE).is_file() && dir.join("config.json").is_file() {
            return Self::load_base(dir, config);
        }
        let spec = ZeroShotSpec::load(dir)?;
        let backbone = dir.join("backbone");
        let (mut encoder, _) = Encoder::from_model_dir(&backbone)?;
        let tokenizer = tokenizer(&backbone, config.max_length)?;
        let install = |enc: &mut Encoder, rel: &Option<PathBuf>, group: &'static str| {
            rel.as_ref()
                .map(|r| {
                    load_adapter(enc, &dir.join(r), group)
                        .map(|_| group)
                        .map_err(Error::from)
                })
                .transpose()
        };
        let (mut ner_group, mut tc_group) = (None, None);
        let mut name_encoder = None;
        let mut ner = None;
        if let Some(n) = &spec.ner {
            ner_group = install(&mut encoder, &n.adapter, NER_GROUP)?;
            ner = Some(NerScoring::Learned {
                scale: n.scale,
                bias: n.bias,
            });
            if let Some(rel) = &n.name_encoder {
                name_encoder = Some(Encoder::from_model_dir(dir.join(rel))?.0);
            }
        }
        let mut tc_temperature = None;
        if let Some(t) = &spec.tc {
            tc_group = install(&mut encoder, &t.adapter, TC_GROUP)?;
            tc_temperature = Some(t.temperature);
        }
        Ok(Self {
            encoder,
            name_encoder,
            tokenizer,
            ner_group,
            tc_group,
            ner,
            tc_temperature,
            baseline: false,
            config,
        })
    }

    /// The base-model baseline: token-to-name cosine for NER, mean-pooled cosine for TC.
    pub fn load_base(model_dir: &Path, config: ZeroShotConfig) -> Result<Self> {
        let (encoder, _) = Encoder::from_model_dir(model_dir)?;
        Ok(Self {
            encoder,
            name_encoder: None,
            tokenizer: tokenizer(model_dir, config.max_length)?,
            ner_group: None,
            tc_group: None,
            ner: Some(NerScoring::Cosine),
            tc_temperature: Some(BASE_TC_TEMPERATURE),
            baseline: true,
            config,
        })
    }

    /// Whether this is the base-model baseline (no pre-finetuning output).
    pub fn is_baseline(&self) -> bool {
        self.baseline
    }

    /// The NER scoring, if the backbone was pre-finetuned for NER (always, for the baseline).
    pub fn ner_scoring(&self) -> Option<NerScoring> {
        self.ner
    }

    /// Packs or quantises the backbone for inference.
    pub fn prepare_inference(&mut self, precision: Precision) -> Result<()> {
        self.encoder.prepare_inference(precision)?;
        if let Some(e) = &mut self.name_encoder {
            e.prepare_inference(precision)?;
        }
        Ok(())
    }

    fn ner_scoring_or_err(&self) -> Result<NerScoring> {
        self.ner.ok_or_else(|| {
            Error::BadRequest(format!(
                "zero-shot NER: the backbone was not pre-finetuned for NER ({ZERO_SHOT_FILE} has \
                 no \"ner\" section)"
            ))
        })
    }

    fn tc_temperature_or_err(&self) -> Result<f32> {
        self.tc_temperature.ok_or_else(|| {
            Error::BadRequest(format!(
                "zero-shot classification: the backbone was not pre-finetuned for TC \
                 ({ZERO_SHOT_FILE} has no \"tc\" section)"
            ))
        })
    }

    /// Mean-pooled, L2-normalised embeddings `[n, hidden]` of short texts through `encoder`
    /// with `group`, in batches.
    fn embed(&self, encoder: &Encoder, group: Option<&str>, texts: &[String]) -> Result<Tensor> {
        let mut parts = Vec::new();
        for chunk in texts.chunks(self.config.batch_size.max(1)) {
            let enc = self.tokenizer.encode_batch(chunk)?;
            let input =
                EncoderInput::from_vecs(&enc.input_ids, &enc.type_ids, &enc.attention_mask)?;
            let h = encoder.forward(&input, Forward::eval(group))?;
            parts.push(l2_normalize(&mean_pool(&h, &input.attention_mask)?)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Embeddings of entity-type names `[types, hidden]`, as the NER objective computes them.
    pub fn type_embeddings(&self, names: &[String]) -> Result<Tensor> {
        check_names(names, "entity type")?;
        match &self.name_encoder {
            Some(e) => self.embed(e, None, names),
            None => self.embed(&self.encoder, self.ner_group, names),
        }
    }

    /// Per sentence, per word, per type: the word's score (its first subword in the window that
    /// owns it) against each of `types` (`[types, hidden]`, from [`ZeroShot::type_embeddings`]).
    pub fn word_scores(
        &self,
        sentences: &[Vec<&str>],
        types: &Tensor,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let scoring = self.ner_scoring_or_err()?;
        let cfg = WindowConfig {
            max_length: self.config.max_length,
            stride: self
                .config
                .stride
                .min(self.config.max_length.saturating_sub(3)),
        };
        // Rows: (sentence, window ids, owner per position).
        let mut rows = Vec::new();
        for (s, words) in sentences.iter().enumerate() {
            if words.is_empty() {
                continue;
            }
            for w in windows(&self.tokenizer, words, cfg)? {
                rows.push((s, w.ids, w.owner_word));
            }
        }
        // Similar lengths together: less padding.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&r| rows[r].1.len());
        let n_types = types.dims2()?.0;
        let mut out: Vec<Vec<Vec<f32>>> = sentences
            .iter()
            .map(|w| vec![vec![f32::NEG_INFINITY; n_types]; w.len()])
            .collect();
        let pad = self.tokenizer.pad_id();
        for chunk in order.chunks(self.config.batch_size.max(1)) {
            let seq = chunk.iter().map(|&r| rows[r].1.len()).max().unwrap_or(0);
            let mut ids = Vec::with_capacity(chunk.len());
            let mut mask = Vec::with_capacity(chunk.len());
            let mut flat = Vec::new();
            let mut target = Vec::new();
            for (b, &r) in chunk.iter().enumerate() {
                let (s, wids, owner) = &rows[r];
                let mut v = wids.clone();
                v.resize(seq, pad);
                let mut m = vec![1u32; wids.len()];
                m.resize(seq, 0);
                ids.push(v);
                mask.push(m);
                for (p, o) in owner.iter().enumerate() {
                    if let Some(w) = o {
                        flat.push((b * seq + p) as u32);
                        target.push((*s, *w));
                    }
                }
            }
            if flat.is_empty() {
                continue;
            }
            let types_ids = vec![vec![0u32; seq]; chunk.len()];
            let input = EncoderInput::from_vecs(&ids, &types_ids, &mask)?;
            let h = self
                .encoder
                .forward(&input, Forward::eval(self.ner_group))?;
            let (b, s, d) = h.dims3()?;
            let idx = Tensor::from_vec(flat, target.len(), &Device::Cpu)?;
            let tokens = l2_normalize(&h.reshape((b * s, d))?.index_select(&idx, 0)?)?;
            let cos = tokens.matmul(&types.t()?)?.to_vec2::<f32>()?;
            for ((s, w), row) in target.into_iter().zip(cos) {
                out[s][w] = row.into_iter().map(|c| scoring.apply(c)).collect();
            }
        }
        Ok(out)
    }

    /// Zero-shot NER on raw texts: entities of the named `types` with character offsets.
    pub fn predict_ner(
        &self,
        texts: &[String],
        types: &[String],
        threshold: Option<f32>,
    ) -> Result<Vec<ZeroShotPrediction>> {
        check_texts(texts)?;
        let threshold = threshold.unwrap_or(self.ner_scoring_or_err()?.default_threshold());
        let emb = self.type_embeddings(types)?;
        let split: Vec<Vec<(&str, (usize, usize))>> =
            texts.iter().map(|t| split_words(t)).collect();
        let words: Vec<Vec<&str>> = split
            .iter()
            .map(|w| w.iter().map(|x| x.0).collect())
            .collect();
        let scores = self.word_scores(&words, &emb)?;
        let mut out = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let (tags, best) = decode_bio(&scores[i], types, threshold);
            let char_of = |byte: usize| text[..byte].chars().count();
            let mut list = Vec::new();
            for e in entities(&tags, NerMode::Strict)? {
                let (bs, be) = (split[i][e.start].1 .0, split[i][e.end - 1].1 .1);
                list.push(PredictedEntity {
                    start: char_of(bs),
                    end: char_of(be),
                    entity_type: e.entity_type,
                    text: text[bs..be].to_string(),
                    score: best[e.start..e.end].iter().sum::<f32>() / (e.end - e.start) as f32,
                });
            }
            out.push(Prediction::Ner {
                text: text.clone(),
                entities: list,
            });
        }
        Ok(out)
    }

    /// Probabilities `[texts][labels]`: softmax over labels of `cos(text, name) / T`; each
    /// label name is put into `template` (`{}` marks the place) when one is given.
    pub fn classify(
        &self,
        texts: &[String],
        labels: &[String],
        template: Option<&str>,
    ) -> Result<Vec<Vec<f32>>> {
        let t = self.tc_temperature_or_err()?;
        check_texts(texts)?;
        check_names(labels, "label")?;
        let names: Vec<String> = match template {
            Some(tpl) => {
                if !tpl.contains("{}") {
                    return Err(Error::BadRequest(format!(
                        "template {tpl:?} has no {{}} for the label name"
                    )));
                }
                labels.iter().map(|l| tpl.replace("{}", l)).collect()
            }
            None => labels.to_vec(),
        };
        let l = self.embed(&self.encoder, self.tc_group, &names)?;
        let x = self.embed(&self.encoder, self.tc_group, texts)?;
        let logits = (x.matmul(&l.t()?)? / t as f64)?;
        Ok(candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?)
    }

    /// Zero-shot classification of raw texts.
    pub fn predict_tc(
        &self,
        texts: &[String],
        labels: &[String],
        template: Option<&str>,
    ) -> Result<Vec<ZeroShotPrediction>> {
        let probs = self.classify(texts, labels, template)?;
        Ok(texts
            .iter()
            .zip(probs)
            .map(|(t, p)| Prediction::Tc {
                text: t.clone(),
                label: labels[argmax(&p)].clone(),
                scores: labels.iter().cloned().zip(p).collect(),
            })
            .collect())
    }

    /// Strict (seqeval IOB2) metrics of zero-shot NER on labelled sentences at each threshold
    /// (the forward passes run once). `names` maps each type tag of the data to its name.
    pub fn evaluate_ner(
        &self,
        sentences: &[NerSentence],
        names: &BTreeMap<String, String>,
        thresholds: &[f32],
    ) -> Result<Vec<(f32, NerMetrics)>> {
        let tags: Vec<String> = names.keys().cloned().collect();
        let name_list: Vec<String> = names.values().cloned().collect();
        let emb = self.type_embeddings(&name_list)?;
        let words: Vec<Vec<&str>> = sentences
            .iter()
            .map(|s| s.tokens.iter().map(String::as_str).collect())
            .collect();
        let scores = self.word_scores(&words, &emb)?;
        let gold: Vec<&Vec<String>> = sentences.iter().map(|s| &s.tags).collect();
        thresholds
            .iter()
            .map(|&th| {
                let pred: Vec<Vec<String>> =
                    scores.iter().map(|s| decode_bio(s, &tags, th).0).collect();
                Ok((th, ner_metrics(&gold, &pred, NerMode::Strict)?))
            })
            .collect()
    }

    /// Metrics of zero-shot classification on labelled texts; `names` maps each label of the
    /// data to its name.
    pub fn evaluate_tc(
        &self,
        examples: &[TcExample],
        names: &BTreeMap<String, String>,
        template: Option<&str>,
    ) -> Result<TcMetrics> {
        let labels: Vec<String> = names.keys().cloned().collect();
        let name_list: Vec<String> = names.values().cloned().collect();
        let texts: Vec<String> = examples.iter().map(|e| e.text.clone()).collect();
        let probs = self.classify(&texts, &name_list, template)?;
        let pred: Vec<&str> = probs.iter().map(|p| labels[argmax(p)].as_str()).collect();
        let gold: Vec<&str> = examples.iter().map(|e| e.label.as_str()).collect();
        Ok(tc_metrics(&gold, &pred)?)
    }
}

fn tokenizer(dir: &Path, max_length: usize) -> Result<TextTokenizer> {
    Ok(TextTokenizer::from_model_dir(
        dir,
        TokenizeConfig {
            max_length,
            overflow: Overflow::Truncate,
            ..Default::default()
        },
    )?)
}

fn check_texts(texts: &[String]) -> Result<()> {
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(Error::BadRequest(format!("text #{} is empty", i + 1)));
    }
    Ok(())
}

fn check_names(names: &[String], what: &str) -> Result<()> {
    if names.is_empty() {
        return Err(Error::BadRequest(format!("no {what} names given")));
    }
    if let Some(i) = names.iter().position(|t| t.trim().is_empty()) {
        return Err(Error::BadRequest(format!(
            "{what} name #{} is empty",
            i + 1
        )));
    }
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(Error::BadRequest(format!(
                "{what} name {n:?} is given twice"
            )));
        }
    }
    Ok(())
}

fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// BIO tags from per-word type scores: a word takes its best type when that score reaches
/// `threshold` (else `O`); consecutive words of one type form one entity. Also returns the
/// best score of each word.
pub fn decode_bio(
    scores: &[Vec<f32>],
    types: &[String],
    threshold: f32,
) -> (Vec<String>, Vec<f32>) {
    let mut tags = Vec::with_capacity(scores.len());
    let mut best_scores = Vec::with_capacity(scores.len());
    let mut prev: Option<usize> = None;
    for s in scores {
        let j = argmax(s);
        let v = s.get(j).copied().unwrap_or(f32::NEG_INFINITY);
        best_scores.push(v);
        if v >= threshold && j < types.len() {
            tags.push(if prev == Some(j) {
                format!("I-{}", types[j])
            } else {
                format!("B-{}", types[j])
            });
            prev = Some(j);
        } else {
            tags.push("O".into());
            prev = None;
        }
    }
    (tags, best_scores)
}

/// A comma-separated list of names (`"person, organisation"`), trimmed, empty items dropped.
pub fn parse_name_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// A readable name for a tag that has none in the label-name map: underscores, hyphens and dots
/// to spaces, camelCase split, lower-cased (`Restaurant_Name` → "restaurant name").
pub fn readable_name(tag: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for ch in tag.chars() {
        if ch == '_' || ch == '-' || ch == '.' {
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

/// Reads a label-name map (`{"musicalartist": "musical artist", ...}`, JSON object of strings).
pub fn read_label_names(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let map: BTreeMap<String, String> = serde_json::from_str(&text)
        .map_err(|e| Error::file(path, format!("not a JSON object of strings: {e}")))?;
    if let Some((k, _)) = map.iter().find(|(_, v)| v.trim().is_empty()) {
        return Err(Error::file(path, format!("the name of {k:?} is empty")));
    }
    Ok(map)
}

/// The names of `tags`: from `map` where it has them, else [`readable_name`].
pub fn names_for(tags: &[String], map: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| {
            (
                t.clone(),
                map.get(t).cloned().unwrap_or_else(|| readable_name(t)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn decode_groups_consecutive_words_of_one_type() {
        let types = s(&["person", "city"]);
        let scores = vec![
            vec![0.9, 0.1],
            vec![0.7, 0.2],
            vec![0.3, 0.4],
            vec![0.1, 0.8],
            vec![0.2, 0.6],
            vec![0.9, 0.1],
        ];
        let (tags, best) = decode_bio(&scores, &types, 0.5);
        assert_eq!(
            tags,
            s(&["B-person", "I-person", "O", "B-city", "I-city", "B-person"])
        );
        assert_eq!(best[2], 0.4);
    }

    #[test]
    fn names_and_lists() {
        assert_eq!(readable_name("Restaurant_Name"), "restaurant name");
        assert_eq!(readable_name("sci.crypt"), "sci crypt");
        assert_eq!(readable_name("musicGenre"), "music genre");
        assert_eq!(
            parse_name_list(" person, , book title ,"),
            s(&["person", "book title"])
        );
        let mut map = BTreeMap::new();
        map.insert("musicalartist".to_string(), "musical artist".to_string());
        let n = names_for(&s(&["musicalartist", "Year"]), &map);
        assert_eq!(n["musicalartist"], "musical artist");
        assert_eq!(n["Year"], "year");
        assert!(check_names(&s(&["a", "a"]), "label").is_err());
    }

    #[test]
    fn learned_scoring_is_the_objective_sigmoid() {
        let sc = NerScoring::Learned {
            scale: 10.0,
            bias: -2.0,
        };
        assert!((sc.apply(0.2) - 0.5).abs() < 1e-6);
        assert_eq!(NerScoring::Cosine.apply(0.3), 0.3);
    }
}
