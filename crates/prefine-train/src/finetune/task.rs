//! [`FinetuneTask`]: downstream fine-tuning as a [`TrainStep`] for the [`Trainer`]: epochs of
//! shuffled (or length-bucketed) batches, gradient accumulation, a dev evaluation per epoch,
//! the best epoch kept, early stopping.
//!
//! [`Trainer`]: crate::trainer::Trainer

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use prefine_data::LabelSet;
use prefine_model::ops::with_matmul_precision;
use prefine_model::{seed_rng, SeedRng};
use prefine_tokenize::TextTokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::{FinetuneConfig, TaskKind};
use super::data::SplitData;
use super::features::{bucketed_batches, pad_batch, shuffled_batches, NerFeature, TcFeature};
use super::model::TaskModel;
use crate::error::{Error, Result};
use crate::loss::masked_cross_entropy;
use crate::optim::{AdamW, AdamWConfig, LinearSchedule};
use crate::trainer::{finite_loss, EpochOutput, StepOutput, TrainStep};

/// One training example, tokenised.
pub enum Example {
    /// A NER window.
    Ner(NerFeature),
    /// A TC text.
    Tc(TcFeature),
}

impl Example {
    fn ids(&self) -> &[u32] {
        match self {
            Example::Ner(f) => &f.ids,
            Example::Tc(f) => &f.ids,
        }
    }
}

/// The training loop's position and history: everything a checkpoint needs besides weights,
/// optimizer, RNG positions and the best epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: u64,
    /// The epoch in progress (1-based).
    pub epoch: usize,
    /// Batches of the current epoch already trained.
    pub batch_in_epoch: usize,
    /// Shuffle-RNG position before this epoch's shuffle.
    #[serde(with = "crate::checkpoint::rng_pos")]
    pub epoch_start_pos: u128,
    /// Sum of this epoch's batch losses so far.
    pub epoch_loss: f64,
    /// Loss per optimizer step.
    pub losses: Vec<(u64, f32)>,
    /// Dev score per epoch end.
    pub dev_curve: Vec<(u64, f64)>,
    /// Epochs since the best one.
    pub since_best: usize,
    /// Early stopping fired.
    pub stopped_early: bool,
    /// Seconds in training steps.
    pub train_seconds: f64,
}

impl Default for LoopState {
    fn default() -> Self {
        Self {
            step: 0,
            epoch: 1,
            batch_in_epoch: 0,
            epoch_start_pos: 0,
            epoch_loss: 0.0,
            losses: Vec::new(),
            dev_curve: Vec::new(),
            since_best: 0,
            stopped_early: false,
            train_seconds: 0.0,
        }
    }
}

/// The best dev epoch so far, as a checkpoint stores it (its weights are extra tensors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BestRecord {
    /// The headline dev score (NER: strict F1; TC: accuracy).
    pub score: f64,
    /// The epoch (1-based).
    pub epoch: usize,
    /// The dev metric object.
    pub dev: Value,
}

/// The best dev epoch so far with its trainable values.
pub struct BestEpoch {
    /// Score, epoch and dev metrics.
    pub record: BestRecord,
    /// The trainable variables and their values at that epoch.
    pub weights: Vec<(Var, Tensor)>,
}

/// The checkpoint state of a fine-tuning run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneState {
    /// The resolved config (a resume must use the same).
    config: String,
    /// Loop position and history.
    #[serde(rename = "loop")]
    progress: LoopState,
    /// Shuffle-RNG position.
    #[serde(with = "crate::checkpoint::rng_pos")]
    shuffle_rng_word_pos: u128,
    /// Dropout-RNG position.
    #[serde(with = "crate::checkpoint::rng_pos")]
    dropout_rng_word_pos: u128,
    /// The best epoch so far.
    best: Option<BestRecord>,
}

/// Scores the model on a split: the JSON metric object and the headline number.
pub fn evaluate_split(
    model: &TaskModel,
    tok: &TextTokenizer,
    split: &SplitData,
    labels: &LabelSet,
    cfg: &FinetuneConfig,
) -> Result<(Value, f64)> {
    let _span = tracing::debug_span!("evaluate", examples = split.len()).entered();
    match split {
        SplitData::Ner(s) => {
            let p = super::eval::predict_ner(
                model,
                tok,
                s,
                labels,
                cfg.max_length,
                cfg.stride,
                cfg.eval_batch_size,
            )?;
            let scores = super::eval::score_ner(s, &p.tags, labels)?;
            Ok((scores.to_json(false), scores.strict.f1))
        }
        SplitData::Tc(e) => {
            let p = super::eval::predict_tc(model, tok, e, labels, cfg.eval_batch_size)?;
            let (m, unseen) = super::eval::score_tc(e, &p, labels)?;
            Ok((super::eval::tc_json(&m, &unseen), m.accuracy))
        }
    }
}

/// A fine-tuning run's model, data, optimizer and loop state.
pub struct FinetuneTask {
    pub(super) cfg: FinetuneConfig,
    pub(super) model: TaskModel,
    pub(super) tok: TextTokenizer,
    pub(super) labels: LabelSet,
    examples: Vec<Example>,
    lengths: Vec<usize>,
    dev: SplitData,
    opt: AdamW,
    schedule: LinearSchedule,
    shuffle_rng: SeedRng,
    dropout_rng: SeedRng,
    /// Loop position and history.
    pub(super) st: LoopState,
    /// The best epoch so far.
    pub(super) best: Option<BestEpoch>,
    /// The current epoch's batches (`None` between epochs).
    batches: Option<Vec<Vec<usize>>>,
    epoch_started: Instant,
    mark: Instant,
}

impl FinetuneTask {
    /// Builds the optimizer and schedule for `model` on `examples`.
    pub fn new(
        cfg: &FinetuneConfig,
        model: TaskModel,
        tok: TextTokenizer,
        labels: LabelSet,
        examples: Vec<Example>,
        dev: SplitData,
    ) -> Result<Self> {
        let lengths: Vec<usize> = examples.iter().map(|e| e.ids().len()).collect();
        let params = model.trainable();
        let n_trainable: usize = params.iter().map(|(_, v, _)| v.elem_count()).sum();
        tracing::info!(
            "{} trainable parameters in {} tensors",
            n_trainable,
            params.len()
        );
        let opt = AdamW::new(
            params,
            AdamWConfig {
                lr: cfg.learning_rate(),
                weight_decay: cfg.weight_decay,
                ..Default::default()
            },
        )?;
        let total = Self::steps_per_epoch(cfg, examples.len()) * cfg.epochs as u64;
        let schedule = LinearSchedule {
            peak: cfg.learning_rate(),
            warmup: (cfg.warmup_ratio * total as f64) as u64,
            total,
        };
        Ok(Self {
            cfg: cfg.clone(),
            model,
            tok,
            labels,
            examples,
            lengths,
            dev,
            opt,
            schedule,
            shuffle_rng: seed_rng(cfg.seed.wrapping_add(1)),
            dropout_rng: seed_rng(cfg.seed.wrapping_add(2)),
            st: LoopState::default(),
            best: None,
            batches: None,
            epoch_started: Instant::now(),
            mark: Instant::now(),
        })
    }

    fn steps_per_epoch(cfg: &FinetuneConfig, examples: usize) -> u64 {
        examples
            .div_ceil(cfg.batch_size)
            .div_ceil(cfg.grad_accumulation) as u64
    }

    /// Draws this epoch's batches (a mid-epoch resume replays the epoch's shuffle).
    fn start_epoch(&mut self) -> Vec<Vec<usize>> {
        if self.st.batch_in_epoch == 0 {
            self.st.epoch_start_pos = self.shuffle_rng.get_word_pos();
            self.st.epoch_loss = 0.0;
        } else {
            self.shuffle_rng.set_word_pos(self.st.epoch_start_pos);
        }
        self.epoch_started = Instant::now();
        self.mark = Instant::now();
        if self.cfg.group_by_length {
            bucketed_batches(
                &self.lengths,
                self.cfg.batch_size,
                Some(&mut self.shuffle_rng),
            )
        } else {
            shuffled_batches(
                self.lengths.len(),
                self.cfg.batch_size,
                &mut self.shuffle_rng,
            )
        }
    }

    /// The loss of one micro-batch, its gradients accumulated into the optimizer.
    fn micro_batch(&mut self, batch: &[usize]) -> Result<f32> {
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| self.examples[i].ids()).collect();
        let input = pad_batch(&seqs, self.tok.pad_id())?;
        let logits = {
            let _span = tracing::debug_span!("forward", batch = batch.len()).entered();
            let (model, rng) = (&self.model, &mut self.dropout_rng);
            with_matmul_precision(self.cfg.precision.into(), || {
                model.logits(&input, Some(&mut *rng))
            })?
        };
        let loss = self.loss(batch, &logits)?;
        let lv = finite_loss(&loss, "loss", self.st.step)?;
        let _span = tracing::debug_span!("backward").entered();
        self.opt.accumulate(loss.backward()?)?;
        Ok(lv)
    }

    /// Masked cross-entropy of a batch's logits against its labels.
    fn loss(&self, batch: &[usize], logits: &Tensor) -> Result<Tensor> {
        let (b, s) = (batch.len(), logits.dim(1)?);
        let (lab, w, shape): (Vec<u32>, Vec<f32>, Vec<usize>) = match &self.examples[batch[0]] {
            Example::Ner(_) => {
                let mut lab = vec![0u32; b * s];
                let mut w = vec![0f32; b * s];
                for (r, &i) in batch.iter().enumerate() {
                    if let Example::Ner(f) = &self.examples[i] {
                        for (p, o) in f.owned.iter().enumerate() {
                            if let Some((_, Some(l))) = o {
                                lab[r * s + p] = *l;
                                w[r * s + p] = 1.0;
                            }
                        }
                    }
                }
                (lab, w, vec![b, s])
            }
            Example::Tc(_) => {
                let (lab, w) = batch
                    .iter()
                    .map(|&i| match &self.examples[i] {
                        Example::Tc(f) => (f.label.unwrap_or(0), f.label.map_or(0.0, |_| 1.0)),
                        Example::Ner(_) => (0, 0.0),
                    })
                    .unzip();
                (lab, w, vec![b])
            }
        };
        let lab = Tensor::from_vec(lab, shape.as_slice(), &Device::Cpu)?;
        let w = Tensor::from_vec(w, shape.as_slice(), &Device::Cpu)?;
        masked_cross_entropy(logits, &lab, &w)
    }

    /// The optimizer update after `pending` accumulated micro-batches.
    fn apply(&mut self, pending: usize, lv: f32) -> Result<()> {
        let _span = tracing::debug_span!("update").entered();
        self.opt.set_lr(self.schedule.lr(self.st.step));
        let scale = self
            .opt
            .clip_scale(self.cfg.max_grad_norm, 1.0 / pending as f64);
        self.opt.apply(scale)?;
        self.st.step += 1;
        self.st.losses.push((self.st.step, lv));
        self.st.train_seconds += self.mark.elapsed().as_secs_f64();
        self.mark = Instant::now();
        Ok(())
    }

    /// Keeps the epoch's model if it beats the best dev score; counts down early stopping.
    fn track_best(
        &mut self,
        dev_score: f64,
        dev_json: Value,
        messages: &mut Vec<String>,
    ) -> Result<()> {
        let epoch = self.st.epoch;
        if self
            .best
            .as_ref()
            .is_none_or(|b| dev_score > b.record.score)
        {
            self.best = Some(BestEpoch {
                record: BestRecord {
                    score: dev_score,
                    epoch,
                    dev: dev_json,
                },
                weights: self.model.snapshot()?,
            });
            self.st.since_best = 0;
        } else {
            self.st.since_best += 1;
            if self.cfg.patience.is_some_and(|p| self.st.since_best >= p) {
                messages.push(format!(
                    "early stopping after epoch {epoch} (no improvement for {})",
                    self.st.since_best
                ));
                self.st.stopped_early = true;
            }
        }
        Ok(())
    }
}

impl TrainStep for FinetuneTask {
    type State = FinetuneState;

    fn step(&self) -> u64 {
        self.st.step
    }

    fn total_steps(&self) -> u64 {
        Self::steps_per_epoch(&self.cfg, self.examples.len()) * self.cfg.epochs as u64
    }

    fn done(&self) -> bool {
        self.st.epoch > self.cfg.epochs || self.st.stopped_early
    }

    fn run_step(&mut self) -> Result<StepOutput> {
        let batches = match self.batches.take() {
            Some(b) => b,
            None => self.start_epoch(),
        };
        let mut bi = self.st.batch_in_epoch;
        let (mut pending, mut lv) = (0usize, 0f32);
        while bi < batches.len() {
            lv = self.micro_batch(&batches[bi])?;
            pending += 1;
            bi += 1;
            self.st.epoch_loss += lv as f64;
            if pending == self.cfg.grad_accumulation {
                break;
            }
        }
        if pending == 0 {
            return Err(Error::Data("no training batches".into()));
        }
        self.apply(pending, lv)?;
        self.st.batch_in_epoch = bi;
        let epoch_end = bi == batches.len();
        self.batches = Some(batches);
        Ok(StepOutput {
            message: format!("epoch {}/{} loss {lv:.4}", self.st.epoch, self.cfg.epochs),
            log: None,
            epoch_end,
        })
    }

    fn end_epoch(&mut self) -> Result<EpochOutput> {
        let epoch = self.st.epoch;
        let n_batches = self.batches.take().map_or(0, |b| b.len());
        let epoch_s = self.epoch_started.elapsed().as_secs_f64();
        let (dev_json, dev_score) =
            evaluate_split(&self.model, &self.tok, &self.dev, &self.labels, &self.cfg)?;
        self.st.dev_curve.push((self.st.step, dev_score));
        let log = json!({"epoch": epoch, "step": self.st.step, "train_loss": self.st.epoch_loss / n_batches.max(1) as f64,
                         "lr": self.opt.lr(), "epoch_seconds": epoch_s, "dev": dev_json});
        let metric = if self.cfg.task == TaskKind::Ner {
            "f1"
        } else {
            "accuracy"
        };
        let mut messages = vec![format!("epoch {epoch}: dev {metric} = {dev_score:.4}")];
        self.track_best(dev_score, dev_json, &mut messages)?;
        self.st.epoch += 1;
        self.st.batch_in_epoch = 0;
        Ok(EpochOutput {
            log: Some(log),
            messages,
        })
    }

    fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    fn state(&self) -> Result<(FinetuneState, BTreeMap<String, Tensor>)> {
        let mut extra = BTreeMap::new();
        if let Some(b) = &self.best {
            for (i, (_, t)) in b.weights.iter().enumerate() {
                extra.insert(format!("best.{i}"), t.clone());
            }
        }
        let state = FinetuneState {
            config: self.cfg.to_toml(),
            progress: self.st.clone(),
            shuffle_rng_word_pos: self.shuffle_rng.get_word_pos(),
            dropout_rng_word_pos: self.dropout_rng.get_word_pos(),
            best: self.best.as_ref().map(|b| b.record.clone()),
        };
        Ok((state, extra))
    }

    fn restore(
        &mut self,
        _step: u64,
        state: FinetuneState,
        extra: BTreeMap<String, Tensor>,
        dir: &Path,
    ) -> Result<()> {
        let bad = |r: String| Error::File {
            path: dir.to_path_buf(),
            reason: r,
        };
        if state.config != self.cfg.to_toml() {
            return Err(bad(
                "the checkpoint was written with another configuration; resume with the same \
                 settings (see its state.json) or start a new run"
                    .into(),
            ));
        }
        self.st = state.progress;
        self.dropout_rng.set_word_pos(state.dropout_rng_word_pos);
        self.shuffle_rng.set_word_pos(state.shuffle_rng_word_pos);
        if let Some(record) = state.best {
            let mut weights = self.model.snapshot()?;
            for (i, (_, t)) in weights.iter_mut().enumerate() {
                *t = extra
                    .get(&format!("best.{i}"))
                    .ok_or_else(|| bad(format!("no best.{i} tensor")))?
                    .clone();
            }
            self.best = Some(BestEpoch { record, weights });
        }
        Ok(())
    }
}
