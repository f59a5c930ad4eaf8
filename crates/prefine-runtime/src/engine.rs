//! [`Engine`]: one backbone in memory, any number of named adapters (a LoRA group and/or a
//! head with its label map, as written by `prefine finetune`) registered and unregistered at
//! run time, and predictions for batches whose texts use different adapters in ONE forward pass
//! ([`Encoder::forward_mixed`]).
//!
//! Registering an adapter reads only its small files (LoRA pairs, head, labels) and installs
//! them on a shallow copy of the encoder (weights are shared, not copied), which then replaces
//! the current one atomically: requests in flight keep the state they started with, and
//! switching between adapters per request costs nothing but a map lookup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use candle_core::Tensor;
use prefine_data::LabelSet;
use prefine_model::peft::{
    load_adapter_bytes, LoadedAdapter, PeftTaskType, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use prefine_model::{Encoder, EncoderInput, Forward, Precision};
use prefine_tokenize::{
    split_words, windows_and_subwords, Overflow, TextTokenizer, TokenizeConfig, WindowConfig,
};
use serde::Serialize;

use crate::artifact::{
    check_classes, peft_head_tensors, peft_manifest, read_finetune_parts_with, AdapterFiles,
    AdapterParts, Mode, TaskKind, TcPooling, LABELS_FILE,
};
use crate::backbone::BackboneFiles;
use crate::embed::{embed_texts, EmbedderConfig};
use crate::error::{report, Error, Result};
use crate::head::TaskHead;
use crate::predict::{
    argmax, decode_entities, Aggregation, Prediction, SubwordScores, TextPrediction,
};

/// Rows (NER windows or TC texts) per forward pass unless configured otherwise.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 64;

/// The longest adapter name accepted.
pub const MAX_ADAPTER_NAME: usize = 64;

/// What a registered adapter is (the `GET /v1/adapters` entries).
#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    /// The name requests use.
    pub name: String,
    /// Task family.
    pub task: TaskKind,
    /// How it was trained (`head` or `lora`; `full` needs its own backbone and is refused).
    pub mode: Mode,
    /// Whether it carries a LoRA group.
    pub has_lora: bool,
    /// Class labels (index = class id).
    pub labels: Vec<String>,
    /// Window length (NER) or truncation length (TC) in subwords.
    pub max_length: usize,
    /// Window overlap (NER).
    pub stride: usize,
    /// The directory it was loaded from.
    pub path: PathBuf,
    /// Number of LoRA parameters (elements) it adds to the backbone.
    pub lora_parameters: usize,
}

/// A registered adapter: head, labels and the encoder group holding its LoRA pairs.
struct Adapter {
    info: AdapterInfo,
    head: TaskHead,
    labels: LabelSet,
    group: Option<String>,
}

/// One immutable state of the engine; replaced as a whole on (un)registration.
struct Registry {
    encoder: Encoder,
    adapters: BTreeMap<String, Arc<Adapter>>,
}

/// One request of a mixed batch: an adapter, its texts and (NER) how subwords become entities.
#[derive(Debug, Clone, Copy)]
pub struct PredictJob<'a> {
    /// The adapter's name.
    pub adapter: &'a str,
    /// The texts.
    pub texts: &'a [String],
    /// NER aggregation strategy (ignored for TC).
    pub aggregation: Aggregation,
}

impl<'a> PredictJob<'a> {
    /// A job with the default aggregation.
    pub fn new(adapter: &'a str, texts: &'a [String]) -> Self {
        Self {
            adapter,
            texts,
            aggregation: Aggregation::default(),
        }
    }
}

/// The shared backbone and its adapters.
pub struct Engine {
    model_dir: PathBuf,
    tokenizer: TextTokenizer,
    max_positions: usize,
    max_batch_rows: usize,
    state: RwLock<Arc<Registry>>,
    /// Serialises registrations (readers never wait on it).
    writer: Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model_dir", &self.model_dir)
            .field("adapters", &self.adapter_names())
            .finish()
    }
}

/// What one text turns into before the forward pass.
enum Work {
    Ner {
        /// Byte offsets of each word.
        words: Vec<(usize, usize)>,
        /// The text's subwords with the probabilities their owning window gave them.
        subwords: Vec<SubwordScores>,
    },
    Tc {
        probs: Vec<f32>,
        truncated: bool,
    },
}

/// One encoder row: a NER window or a TC text.
struct Row {
    job: usize,
    text: usize,
    ids: Vec<u32>,
    /// NER: per position, the text's subword this window predicts there.
    owner: Option<Vec<Option<usize>>>,
}

impl Engine {
    /// Loads the backbone (`config.json`, `model.safetensors` f32 or quantised,
    /// `tokenizer.json`) once.
    pub fn load(model_dir: impl AsRef<Path>) -> Result<Self> {
        let dir = model_dir.as_ref();
        let _span = tracing::debug_span!("load_backbone", dir = %dir.display()).entered();
        let (encoder, _) = Encoder::from_model_dir(dir)?;
        let tokenizer = TextTokenizer::from_model_dir(dir, Self::tokenize_config(&encoder))?;
        Ok(Self::from_parts(dir, encoder, tokenizer))
    }

    /// Loads the backbone from its files held in memory (see [`BackboneFiles`]).
    pub fn from_memory(files: &BackboneFiles) -> Result<Self> {
        let _span = tracing::debug_span!("load_backbone_from_memory").entered();
        let (encoder, _) = Encoder::from_bytes(
            &files.config,
            &files.weights,
            &files.origin.join("model.safetensors"),
        )?;
        let tokenizer = TextTokenizer::from_bytes(
            &files.tokenizer,
            &files.origin.join("tokenizer.json"),
            Self::tokenize_config(&encoder),
        )?;
        Ok(Self::from_parts(&files.origin, encoder, tokenizer))
    }

    fn tokenize_config(encoder: &Encoder) -> TokenizeConfig {
        TokenizeConfig {
            max_length: encoder.config().max_position_embeddings,
            overflow: Overflow::Truncate,
            ..Default::default()
        }
    }

    /// An engine over an already loaded encoder and tokenizer (its LoRA groups are ignored
    /// unless registered through [`Engine::register`]).
    pub fn from_parts(model_dir: &Path, encoder: Encoder, tokenizer: TextTokenizer) -> Self {
        Self {
            model_dir: model_dir.to_path_buf(),
            max_positions: encoder.config().max_position_embeddings,
            tokenizer,
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
            state: RwLock::new(Arc::new(Registry {
                encoder,
                adapters: BTreeMap::new(),
            })),
            writer: Mutex::new(()),
        }
    }

    /// Sets the most rows (NER windows or TC texts) per forward pass (at least 1).
    pub fn with_max_batch_rows(mut self, rows: usize) -> Self {
        self.max_batch_rows = rows.max(1);
        self
    }

    /// The backbone directory.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// The tokenizer of the backbone.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Number of backbone parameters (elements).
    pub fn num_backbone_parameters(&self) -> usize {
        self.snapshot().encoder.num_base_parameters()
    }

    /// The number format of the backbone's linear weights.
    pub fn precision(&self) -> Precision {
        self.snapshot().encoder.precision()
    }

    /// Bytes of the backbone's weights in memory (see [`Encoder::weight_bytes`]).
    pub fn backbone_weight_bytes(&self) -> usize {
        self.snapshot().encoder.weight_bytes()
    }

    /// Prepares the backbone's linear weights for inference in place: int8 / bf16 quantise,
    /// f32 packs them once for the GEMM kernel (see [`Encoder::prepare_inference`]); adapters
    /// stay registered and f32, and requests in flight finish with the previous weights.
    /// Quantised backbones cannot be converted again.
    pub fn prepare_inference(&self, precision: Precision) -> Result<()> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snapshot();
        let mut encoder = cur.encoder.clone();
        encoder.prepare_inference(precision)?;
        let adapters = cur.adapters.clone();
        drop(cur);
        self.install(Registry { encoder, adapters });
        Ok(())
    }

    fn snapshot(&self) -> Arc<Registry> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn install(&self, reg: Registry) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(reg);
    }

    /// The registered adapters, sorted by name.
    pub fn adapters(&self) -> Vec<AdapterInfo> {
        self.snapshot()
            .adapters
            .values()
            .map(|a| a.info.clone())
            .collect()
    }

    /// The names of the registered adapters, sorted.
    pub fn adapter_names(&self) -> Vec<String> {
        self.snapshot().adapters.keys().cloned().collect()
    }

    /// One adapter's description.
    pub fn adapter(&self, name: &str) -> Option<AdapterInfo> {
        self.snapshot().adapters.get(name).map(|a| a.info.clone())
    }

    /// Registers the adapter directory `dir` under `name`: a `prefine finetune` output in
    /// `head` or `lora` mode, or a bare PEFT LoRA adapter (`TOKEN_CLS` / `SEQ_CLS`, head in
    /// `modules_to_save`) with a `labels.json`. The backbone is not reloaded.
    pub fn register(&self, name: &str, dir: &Path) -> Result<AdapterInfo> {
        validate_name(name)?;
        let files = AdapterFiles::read_dir(dir)?;
        self.register_files(name, &files)
    }

    /// Registers an adapter from its files (read from a directory or handed in as bytes).
    pub fn register_files(&self, name: &str, files: &AdapterFiles) -> Result<AdapterInfo> {
        self.register_inner(name, files, false)
    }

    /// Opens one application, as `prefine predict` does: the backbone `model` (default: the
    /// one recorded in `adapter.json`; a `full` output's own `model/`), converted to
    /// `precision`, with the adapter `dir` registered as `name`.
    pub fn open_application(
        dir: &Path,
        model: Option<&Path>,
        precision: Precision,
        name: &str,
    ) -> Result<Self> {
        let files = AdapterFiles::read_dir(dir)?;
        files.check_format()?;
        let (backbone, full) = if files.is_finetune_output() {
            let manifest: crate::artifact::ArtifactManifest =
                files.json(crate::artifact::MANIFEST_FILE)?;
            if manifest.mode == Mode::Full {
                (dir.join("model"), true)
            } else {
                (
                    model.map_or_else(|| manifest.base_model.clone(), Path::to_path_buf),
                    false,
                )
            }
        } else {
            let m = model.ok_or_else(|| Error::Adapter {
                path: dir.to_path_buf(),
                reason: "a bare PEFT adapter records no backbone: give the model directory".into(),
            })?;
            (m.to_path_buf(), false)
        };
        let engine = Self::load(&backbone)?;
        engine.register_inner(name, &files, full)?;
        engine.prepare_inference(precision)?;
        Ok(engine)
    }

    fn register_inner(
        &self,
        name: &str,
        files: &AdapterFiles,
        own_backbone: bool,
    ) -> Result<AdapterInfo> {
        validate_name(name)?;
        let _span = tracing::debug_span!("register_adapter", name).entered();
        files.check_format()?;
        let parts = if files.is_finetune_output() {
            Some(read_finetune_parts_with(files, own_backbone)?)
        } else {
            None
        };
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snapshot();
        if cur.adapters.contains_key(name) {
            return Err(Error::AdapterExists(name.to_string()));
        }
        let mut encoder = cur.encoder.clone();
        let g = group_name(name);
        if encoder.group_config(&g).is_some() {
            encoder.remove_lora_group(&g)?;
        }
        let adapter_err = |source| Error::AdapterLoad {
            path: files.origin.clone(),
            source,
        };
        let load = |encoder: &mut Encoder| {
            load_adapter_bytes(
                encoder,
                files.get(ADAPTER_CONFIG)?,
                files.get(ADAPTER_WEIGHTS)?,
                &files.origin,
                &g,
            )
            .map_err(adapter_err)
        };
        let parts = match parts {
            Some(p) => {
                if p.manifest.has_lora {
                    load(&mut encoder)?;
                }
                p
            }
            None => {
                let loaded = load(&mut encoder)?;
                peft_parts(&encoder, files, loaded)?
            }
        };
        let hidden = encoder.hidden_size();
        let head_hidden = parts.head.hidden_size();
        if head_hidden != hidden {
            return Err(Error::Adapter {
                path: files.origin.clone(),
                reason: format!(
                    "the head expects hidden size {head_hidden}, the backbone has {hidden}"
                ),
            });
        }
        let group = parts.manifest.has_lora.then_some(g);
        let lora_parameters = group.as_ref().map_or(0, |g| {
            encoder
                .group_pairs(g)
                .iter()
                .map(|(_, _, p)| p.a.elem_count() + p.b.elem_count())
                .sum()
        });
        let info = AdapterInfo {
            name: name.to_string(),
            task: parts.manifest.task,
            mode: parts.manifest.mode,
            has_lora: group.is_some(),
            labels: parts.labels.labels().to_vec(),
            max_length: parts.manifest.max_length.min(self.max_positions),
            stride: parts.manifest.stride,
            path: files.origin.clone(),
            lora_parameters,
        };
        let mut adapters = cur.adapters.clone();
        adapters.insert(
            name.to_string(),
            Arc::new(Adapter {
                info: info.clone(),
                head: parts.head,
                labels: parts.labels,
                group,
            }),
        );
        self.install(Registry { encoder, adapters });
        Ok(info)
    }

    /// Unregisters an adapter; requests already running with it finish normally.
    pub fn unregister(&self, name: &str) -> Result<()> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snapshot();
        let Some(ad) = cur.adapters.get(name) else {
            return Err(Error::UnknownAdapter(name.to_string()));
        };
        let mut encoder = cur.encoder.clone();
        if let Some(g) = &ad.group {
            encoder.remove_lora_group(g)?;
        }
        let mut adapters = cur.adapters.clone();
        adapters.remove(name);
        self.install(Registry { encoder, adapters });
        Ok(())
    }

    /// Sentence embeddings of `texts` (sentence-transformers semantics: mean pooling over the
    /// attention mask, L2-normalised) through the backbone, with `adapter`'s LoRA group active
    /// when one is named.
    pub fn embed(&self, texts: &[String], adapter: Option<&str>) -> Result<Vec<Vec<f32>>> {
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(Error::BadRequest(format!("text #{} is empty", i + 1)));
        }
        let reg = self.snapshot();
        let group = match adapter {
            Some(a) => reg
                .adapters
                .get(a)
                .ok_or_else(|| Error::UnknownAdapter(a.to_string()))?
                .group
                .clone(),
            None => None,
        };
        let cfg = EmbedderConfig {
            group,
            batch_size: self.max_batch_rows,
            ..Default::default()
        };
        embed_texts(&reg.encoder, &self.tokenizer, texts, &cfg)
    }

    /// The backbone's last hidden states for token ids given as a `batch x seq` row-major
    /// matrix (every position attended, token type 0): `batch x seq x hidden` values, what
    /// a transformers `BertModel`'s `last_hidden_state` (or an ONNX export of it) returns.
    pub fn hidden_states(&self, input_ids: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        if batch == 0 || seq == 0 || input_ids.len() != batch * seq {
            return Err(Error::BadRequest(format!(
                "input_ids: {} ids for a {batch} x {seq} batch",
                input_ids.len()
            )));
        }
        if seq > self.max_positions {
            return Err(Error::BadRequest(format!(
                "input_ids: {seq} positions, the backbone has {}",
                self.max_positions
            )));
        }
        let reg = self.snapshot();
        let vocab = reg.encoder.config().vocab_size;
        if let Some(bad) = input_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::BadRequest(format!(
                "input_ids: id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let ids: Vec<Vec<u32>> = input_ids.chunks(seq).map(<[u32]>::to_vec).collect();
        let zeros = vec![vec![0u32; seq]; batch];
        let ones = vec![vec![1u32; seq]; batch];
        let input = EncoderInput::from_vecs(&ids, &zeros, &ones)?;
        let h = reg.encoder.forward(&input, Forward::eval(None))?;
        Ok(h.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The width of [`Engine::embed`]'s vectors.
    pub fn embedding_dim(&self) -> usize {
        self.snapshot().encoder.hidden_size()
    }

    /// Predictions for one adapter's texts.
    pub fn predict(&self, adapter: &str, texts: &[String]) -> Result<Vec<TextPrediction>> {
        self.predict_with(adapter, texts, Aggregation::default())
    }

    /// [`Engine::predict`] with a NER aggregation strategy.
    pub fn predict_with(
        &self,
        adapter: &str,
        texts: &[String],
        aggregation: Aggregation,
    ) -> Result<Vec<TextPrediction>> {
        self.predict_mixed(&[PredictJob {
            adapter,
            texts,
            aggregation,
        }])
        .pop()
        .unwrap_or_else(|| Err(Error::BadRequest("no job".into())))
    }

    /// The head's raw outputs (before the softmax) for one adapter's texts, as a transformers
    /// `*ForTokenClassification` / `*ForSequenceClassification` model returns them: NER one row
    /// per subword of the whole text, special tokens included (`[subwords, classes]`, no
    /// windows: cut at the backbone's maximum length); TC one row (`[1, classes]`, cut to the
    /// adapter's `max_length` as [`Engine::predict`] does).
    pub fn logits(&self, adapter: &str, texts: &[String]) -> Result<Vec<Vec<Vec<f32>>>> {
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(Error::BadRequest(format!("text #{} is empty", i + 1)));
        }
        let reg = self.snapshot();
        let ad = reg
            .adapters
            .get(adapter)
            .cloned()
            .ok_or_else(|| Error::UnknownAdapter(adapter.to_string()))?;
        let mut ids = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let enc = self
                .tokenizer
                .encode(i, text)
                .map_err(|e| Error::BadRequest(format!("text #{}: {e}", i + 1)))?;
            ids.push(match ad.info.task {
                TaskKind::Ner => enc.ids,
                TaskKind::Tc => truncate_ids(enc.ids, &enc.word_ids, ad.info.max_length).0,
            });
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        let pad = self.tokenizer.pad_id();
        for chunk in order.chunks(self.max_batch_rows) {
            let len = chunk.iter().map(|&i| ids[i].len()).max().unwrap_or(0);
            let padded: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&i| {
                    let mut v = ids[i].clone();
                    v.resize(len, pad);
                    v
                })
                .collect();
            let mask: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&i| (0..len).map(|p| u32::from(p < ids[i].len())).collect())
                .collect();
            let input = EncoderInput::from_vecs(&padded, &vec![vec![0; len]; chunk.len()], &mask)?;
            let groups = vec![ad.group.as_deref(); chunk.len()];
            let hidden = reg.encoder.forward_mixed(&input, &groups)?;
            let logits = ad.head.logits(&hidden, &input.attention_mask)?;
            match &ad.head {
                TaskHead::Token(_) => {
                    for (k, rows) in logits.to_vec3::<f32>()?.into_iter().enumerate() {
                        let i = chunk[k];
                        out[i] = rows.into_iter().take(ids[i].len()).collect();
                    }
                }
                TaskHead::Sequence(_) => {
                    for (k, row) in logits.to_vec2::<f32>()?.into_iter().enumerate() {
                        out[chunk[k]] = vec![row];
                    }
                }
            }
        }
        Ok(out)
    }

    /// Predictions for several jobs (any adapters, NER and TC mixed) computed together: all
    /// rows are length-sorted and run through [`Encoder::forward_mixed`] in batches of at most
    /// `max_batch_rows` rows, each row with its adapter's LoRA group and head. A job that fails
    /// (unknown adapter, empty text) gets its error; the others are unaffected.
    pub fn predict_mixed(&self, jobs: &[PredictJob<'_>]) -> Vec<Result<Vec<TextPrediction>>> {
        let _span = tracing::debug_span!("predict", jobs = jobs.len()).entered();
        let reg = self.snapshot();
        let mut adapters: Vec<Option<Arc<Adapter>>> = Vec::with_capacity(jobs.len());
        let mut errors: Vec<Option<Error>> = Vec::with_capacity(jobs.len());
        let mut work: Vec<Vec<Work>> = Vec::with_capacity(jobs.len());
        let mut rows: Vec<Row> = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            let prepared = reg
                .adapters
                .get(job.adapter)
                .cloned()
                .ok_or_else(|| Error::UnknownAdapter(job.adapter.to_string()))
                .and_then(|ad| {
                    let mut job_rows = Vec::new();
                    let w = self.prepare(&ad, j, job.texts, &mut job_rows)?;
                    Ok((ad, w, job_rows))
                });
            match prepared {
                Ok((ad, w, job_rows)) => {
                    adapters.push(Some(ad));
                    errors.push(None);
                    work.push(w);
                    rows.extend(job_rows);
                }
                Err(e) => {
                    adapters.push(None);
                    errors.push(Some(e));
                    work.push(Vec::new());
                }
            }
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.ids.len()));
        for chunk in rows.chunks(self.max_batch_rows) {
            if let Err(e) = self.run_chunk(&reg, chunk, &adapters, &mut work) {
                // Only the jobs with rows in this chunk fail.
                let msg = report(&e);
                for r in chunk {
                    if errors[r.job].is_none() {
                        errors[r.job] = Some(Error::Inference(format!("forward pass: {msg}")));
                    }
                }
            }
        }
        jobs.iter()
            .enumerate()
            .map(|(j, job)| {
                if let Some(e) = errors[j].take() {
                    return Err(e);
                }
                let ad = adapters[j].as_ref().expect("set when no error");
                Ok(finish_job(
                    ad,
                    job.texts,
                    std::mem::take(&mut work[j]),
                    job.aggregation,
                ))
            })
            .collect()
    }

    /// Tokenizes one job's texts into rows; returns the per-text work slots.
    fn prepare(
        &self,
        ad: &Adapter,
        job: usize,
        texts: &[String],
        rows: &mut Vec<Row>,
    ) -> Result<Vec<Work>> {
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(Error::BadRequest(format!("text #{} is empty", i + 1)));
        }
        let mut out = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            match ad.info.task {
                TaskKind::Ner => {
                    let split = split_words(text);
                    let mut subwords = Vec::new();
                    let words: Vec<&str> = split.iter().map(|(w, _)| *w).collect();
                    if !words.is_empty() {
                        let cfg = WindowConfig {
                            max_length: ad.info.max_length,
                            stride: ad.info.stride,
                        };
                        let (wins, sub) = windows_and_subwords(&self.tokenizer, &words, cfg)
                            .map_err(|e| Error::BadRequest(format!("text #{}: {e}", i + 1)))?;
                        for w in wins {
                            rows.push(Row {
                                job,
                                text: i,
                                ids: w.ids,
                                owner: Some(w.owned_subword),
                            });
                        }
                        subwords = sub
                            .word_of
                            .iter()
                            .zip(&sub.offsets)
                            .map(|(&w, &(s, e))| {
                                let base = split[w].1 .0;
                                SubwordScores {
                                    word: w,
                                    span: (base + s, base + e),
                                    probs: Vec::new(),
                                }
                            })
                            .collect();
                    }
                    out.push(Work::Ner {
                        subwords,
                        words: split.into_iter().map(|(_, o)| o).collect(),
                    });
                }
                TaskKind::Tc => {
                    let enc = self
                        .tokenizer
                        .encode(i, text)
                        .map_err(|e| Error::BadRequest(format!("text #{}: {e}", i + 1)))?;
                    let (ids, cut) = truncate_ids(enc.ids, &enc.word_ids, ad.info.max_length);
                    rows.push(Row {
                        job,
                        text: i,
                        ids,
                        owner: None,
                    });
                    out.push(Work::Tc {
                        probs: Vec::new(),
                        truncated: enc.truncated || cut,
                    });
                }
            }
        }
        Ok(out)
    }

    /// One mixed forward pass over `chunk`, heads per adapter, results into `work`.
    fn run_chunk(
        &self,
        reg: &Registry,
        chunk: &[Row],
        adapters: &[Option<Arc<Adapter>>],
        work: &mut [Vec<Work>],
    ) -> Result<()> {
        let len = chunk.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let pad = self.tokenizer.pad_id();
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|r| {
                let mut v = r.ids.clone();
                v.resize(len, pad);
                v
            })
            .collect();
        let mask: Vec<Vec<u32>> = chunk
            .iter()
            .map(|r| (0..len).map(|p| u32::from(p < r.ids.len())).collect())
            .collect();
        let input = EncoderInput::from_vecs(&ids, &vec![vec![0; len]; chunk.len()], &mask)?;
        let ad_of = |r: &Row| adapters[r.job].as_ref().expect("rows only for loaded jobs");
        let groups: Vec<Option<&str>> = chunk.iter().map(|r| ad_of(r).group.as_deref()).collect();
        let hidden = reg.encoder.forward_mixed(&input, &groups)?;
        // Rows of the chunk by adapter name.
        let mut by_adapter: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in chunk.iter().enumerate() {
            by_adapter.entry(&ad_of(r).info.name).or_default().push(i);
        }
        for idx in by_adapter.values() {
            let ad = ad_of(&chunk[idx[0]]);
            let (h, m) = if idx.len() == chunk.len() {
                (hidden.clone(), input.attention_mask.clone())
            } else {
                let sel: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                let sel = Tensor::from_vec(sel, idx.len(), hidden.device())?;
                (
                    hidden.index_select(&sel, 0)?,
                    input.attention_mask.index_select(&sel, 0)?,
                )
            };
            let probs = ad.head.probabilities(&h, &m)?;
            match &ad.head {
                TaskHead::Token(_) => {
                    let p = probs.to_vec3::<f32>()?;
                    for (k, &i) in idx.iter().enumerate() {
                        let row = &chunk[i];
                        let owner = row.owner.as_deref().unwrap_or(&[]);
                        if let Work::Ner { subwords, .. } = &mut work[row.job][row.text] {
                            for (pos, o) in owner.iter().enumerate() {
                                if let (Some(s), Some(pr)) = (o, p[k].get(pos)) {
                                    if let Some(slot) = subwords.get_mut(*s) {
                                        slot.probs.clone_from(pr);
                                    }
                                }
                            }
                        }
                    }
                }
                TaskHead::Sequence(_) => {
                    let p = probs.to_vec2::<f32>()?;
                    for (k, &i) in idx.iter().enumerate() {
                        let row = &chunk[i];
                        if let Work::Tc { probs, .. } = &mut work[row.job][row.text] {
                            *probs = p[k].clone();
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Cuts `ids` to `max` tokens, keeping a closing special token (`[SEP]`) as the model saw it.
fn truncate_ids(mut ids: Vec<u32>, word_ids: &[Option<u32>], max: usize) -> (Vec<u32>, bool) {
    if ids.len() <= max || max == 0 {
        return (ids, false);
    }
    let last = *ids.last().unwrap_or(&0);
    let ends_with_special = word_ids.last().is_some_and(Option::is_none);
    ids.truncate(max);
    if ends_with_special {
        ids[max - 1] = last;
    }
    (ids, true)
}

fn finish_job(
    ad: &Adapter,
    texts: &[String],
    work: Vec<Work>,
    aggregation: Aggregation,
) -> Vec<TextPrediction> {
    texts
        .iter()
        .zip(work)
        .map(|(text, w)| match w {
            Work::Ner { words, subwords } => TextPrediction {
                prediction: Prediction::Ner {
                    text: text.clone(),
                    entities: decode_entities(text, &words, &subwords, &ad.labels, aggregation),
                },
                truncated: false,
            },
            Work::Tc { probs, truncated } => TextPrediction {
                prediction: Prediction::Tc {
                    text: text.clone(),
                    label: ad.labels.label(argmax(&probs).0).unwrap_or("").to_string(),
                    scores: probs
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| (ad.labels.label(i).unwrap_or("").to_string(), v))
                        .collect(),
                },
                truncated,
            },
        })
        .collect()
}

/// The encoder group that holds an adapter's LoRA pairs.
fn group_name(adapter: &str) -> String {
    format!("adapter:{adapter}")
}

/// Adapter names: 1 to 64 characters among ASCII letters, digits, `.`, `_` and `-`, not
/// starting with `.`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ADAPTER_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "adapter name {name:?}: use 1 to {MAX_ADAPTER_NAME} ASCII letters, digits, '.', '_' or '-' (not starting with '.')"
        )))
    }
}

/// The parts of a bare PEFT adapter (`adapter_config.json`, `adapter_model.safetensors` with
/// the head as `modules_to_save`, and `labels.json`), already loaded onto `encoder`:
/// `TOKEN_CLS` is NER, `SEQ_CLS` is TC through the BERT pooler (the adapter's own, else the
/// backbone's), as `BertForSequenceClassification` does.
fn peft_parts(
    encoder: &Encoder,
    files: &AdapterFiles,
    loaded: LoadedAdapter,
) -> Result<AdapterParts> {
    let bad = |reason: String| Error::Adapter {
        path: files.origin.clone(),
        reason,
    };
    let task = match loaded.task_type {
        PeftTaskType::TokenCls => TaskKind::Ner,
        PeftTaskType::SeqCls => TaskKind::Tc,
        PeftTaskType::FeatureExtraction => {
            return Err(bad(
                "a PEFT adapter without adapter.json must have task_type TOKEN_CLS or SEQ_CLS"
                    .into(),
            ))
        }
    };
    if !files.has(LABELS_FILE) {
        return Err(bad(
            "a PEFT adapter needs labels.json (the label list, index = class id)".into(),
        ));
    }
    let labels: LabelSet = files.json(LABELS_FILE)?;
    let mut tensors = peft_head_tensors(loaded.extra);
    if task == TaskKind::Tc && !tensors.contains_key("pooler.dense.weight") {
        let p = encoder.pooler.as_ref().ok_or_else(|| {
            bad("a SEQ_CLS adapter needs a pooler, and neither it nor the backbone has one".into())
        })?;
        tensors.insert("pooler.dense.weight".into(), p.weight.t().detach());
        tensors.insert("pooler.dense.bias".into(), p.bias.t().detach());
    }
    let wpath = files.path(ADAPTER_WEIGHTS);
    let head = TaskHead::from_tensors(task, &tensors, TcPooling::Pooler, &wpath)?;
    check_classes(&head, &labels, &files.path(LABELS_FILE))?;
    Ok(AdapterParts {
        manifest: peft_manifest(task, &files.origin),
        labels,
        head,
    })
}
