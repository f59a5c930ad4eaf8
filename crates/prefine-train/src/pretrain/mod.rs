//! Pre-finetuning: the NER concept-contrastive objective, the TC contrastive objective, and the
//! strategies that combine them: `ner`, `tc`, `naive` (both on the same weights) and `tpl`
//! (MTPF-TPL: task-primary LoRA groups `ner` and `tc` on the last K layers; a batch of family F
//! runs through the backbone plus group F, and F's loss updates group F and the backbone).

pub mod config;
pub mod conflict;
pub mod ner_objective;
pub mod pcgrad;
pub mod sampler;
pub mod tc_objective;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use prefine_model::ops::with_matmul_precision;
use prefine_model::peft::{save_adapter, PeftTaskType};
use prefine_model::weights::write_atomic;
use prefine_model::zero_shot::{NerZeroShot, TcZeroShot, ZeroShotSpec, ZERO_SHOT_VERSION};
use prefine_model::{seed_rng, Encoder, Forward, SeedRng};
use prefine_tokenize::{TextTokenizer, TokenizeConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use config::{
    resolve_config, BackboneGradFrom, ConceptEncoder, GradientSurgery, OtherGroup, PretrainConfig,
    PretrainOverrides, Sampling, Strategy,
};
use ner_objective::{build_batch, ner_loss, sample_indices, ConceptScorer, NerPool};
use sampler::{Family, FamilySampler};
use tc_objective::{sample_batch, tc_loss, TcPool};

use crate::checkpoint::CheckpointPlace;
use crate::error::{Error, Result};
use crate::optim::{AdamW, AdamWConfig, LinearSchedule};
use crate::trainer::{finite_loss, StepOutput, TrainStep, Trainer};

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone, Default)]
pub struct PretrainReport {
    /// Steps done.
    pub steps: u64,
    /// Mean loss per family over the last 100 steps of that family.
    pub last_loss: BTreeMap<String, f64>,
    /// Mean conflict cosine per layer over all diagnostics.
    pub mean_conflict: BTreeMap<String, f64>,
    /// Wall seconds.
    pub seconds: f64,
}

/// The pre-finetuning state: model, objectives, data, optimizer and RNGs.
pub struct Pretrainer {
    cfg: PretrainConfig,
    /// The backbone (with the `ner`/`tc` groups for TPL).
    pub encoder: Encoder,
    concept_encoder: Option<Encoder>,
    scorer: ConceptScorer,
    tok: TextTokenizer,
    ner_pool: Option<NerPool>,
    tc_pool: Option<TcPool>,
    sampler: FamilySampler,
    opt: AdamW,
    schedule: LinearSchedule,
    sample_rng: SeedRng,
    dropout_rng: SeedRng,
    step: u64,
    conflicts: Vec<BTreeMap<String, f64>>,
    recent: BTreeMap<Family, Vec<f32>>,
    started: Instant,
    /// The last PCGrad step's losses and projection, for its metrics line.
    last_pcgrad: Option<serde_json::Value>,
}

/// The checkpoint state of pre-finetuning (besides the step, weights and optimizer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainState {
    /// Batch-sampling RNG position.
    #[serde(with = "crate::checkpoint::rng_pos")]
    sample_rng_word_pos: u128,
    /// Dropout RNG position.
    #[serde(with = "crate::checkpoint::rng_pos")]
    dropout_rng_word_pos: u128,
    /// Round-robin position of the family sampler.
    #[serde(default)]
    round_robin: usize,
    /// Gradient-conflict diagnostics so far.
    #[serde(default)]
    conflicts: Vec<BTreeMap<String, f64>>,
}

fn group_of(f: Family) -> &'static str {
    f.name()
}

/// The families a strategy trains, each with its (non-empty) pool size.
fn pool_sizes(
    cfg: &PretrainConfig,
    ner_pool: Option<&NerPool>,
    tc_pool: Option<&TcPool>,
) -> Result<Vec<(Family, usize)>> {
    let families: Vec<Family> = match cfg.strategy {
        Strategy::Ner => vec![Family::Ner],
        Strategy::Tc => vec![Family::Tc],
        Strategy::Naive | Strategy::Tpl => vec![Family::Ner, Family::Tc],
    };
    families
        .into_iter()
        .map(|f| {
            let n = match f {
                Family::Ner => ner_pool
                    .map(NerPool::len)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| Error::Data("the NER pool is missing or empty".into()))?,
                Family::Tc => tc_pool
                    .map(TcPool::len)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| Error::Data("the TC pools are missing or empty".into()))?,
            };
            Ok((f, n))
        })
        .collect()
}

/// Makes the backbone trainable (the pooler stays frozen) and adds TPL's `ner` and `tc` groups.
fn prepare_encoder(cfg: &PretrainConfig, encoder: &mut Encoder) -> Result<()> {
    let mut rng = seed_rng(cfg.seed);
    encoder.set_backbone_trainable(true);
    if let Some(p) = &mut encoder.pooler {
        p.weight.set_trainable(false);
        p.bias.set_trainable(false);
    }
    if cfg.strategy == Strategy::Tpl {
        let layers = encoder.config().num_hidden_layers;
        if cfg.tpl_last_k > layers {
            return Err(Error::Config {
                field: "tpl_last_k".into(),
                reason: format!("{} > {layers} layers", cfg.tpl_last_k),
            });
        }
        let lora = cfg.tpl_lora.clone().last_layers(cfg.tpl_last_k, layers);
        encoder.add_lora_group("ner", &lora, &mut rng)?;
        encoder.add_lora_group("tc", &lora, &mut rng)?;
    }
    Ok(())
}

/// The optimizer's parameters: `(name, variable, decays)` of the encoder, the separate concept
/// encoder and the learned NER scale.
fn trainable_params(
    encoder: &Encoder,
    concept_encoder: Option<&Encoder>,
    scorer: &ConceptScorer,
    cfg: &PretrainConfig,
    has_ner: bool,
) -> Vec<(String, Var, bool)> {
    let mut params: Vec<(String, Var, bool)> = encoder
        .trainable_params()
        .into_iter()
        .map(|(n, p)| {
            let d = AdamW::decays(&n);
            (n, p.var().clone(), d)
        })
        .collect();
    if let Some(c) = concept_encoder {
        for (n, p) in c.trainable_params() {
            params.push((
                format!("concept_encoder.{n}"),
                p.var().clone(),
                AdamW::decays(&n),
            ));
        }
    }
    if cfg.learned_scale && has_ner {
        params.push((
            "objective.ner.log_scale".into(),
            scorer.log_scale.var().clone(),
            false,
        ));
        params.push((
            "objective.ner.bias".into(),
            scorer.bias.var().clone(),
            false,
        ));
    }
    params
}

impl Pretrainer {
    /// Sets everything up. `ner_pool` is needed for `ner`/`naive`/`tpl`, `tc_pool` for
    /// `tc`/`naive`/`tpl`.
    pub fn new(
        cfg: PretrainConfig,
        mut encoder: Encoder,
        tok: TextTokenizer,
        ner_pool: Option<NerPool>,
        tc_pool: Option<TcPool>,
    ) -> Result<Self> {
        cfg.validate()?;
        let pools = pool_sizes(&cfg, ner_pool.as_ref(), tc_pool.as_ref())?;
        let has_ner = pools.iter().any(|(f, _)| *f == Family::Ner);
        prepare_encoder(&cfg, &mut encoder)?;
        let concept_encoder = match (cfg.concept_encoder, has_ner) {
            (ConceptEncoder::Separate, true) => {
                let mut c = encoder.deep_copy_base()?;
                c.set_backbone_trainable(true);
                c.pooler = None;
                Some(c)
            }
            _ => None,
        };
        let scorer = ConceptScorer::new(cfg.initial_scale, cfg.learned_scale)?;
        let params = trainable_params(&encoder, concept_encoder.as_ref(), &scorer, &cfg, has_ner);
        let mut opt = AdamW::new(
            params,
            AdamWConfig {
                lr: cfg.lr,
                weight_decay: cfg.weight_decay,
                ..Default::default()
            },
        )?;
        opt.set_lr_mult(
            |n| n.contains(".lora_") || n.starts_with("objective."),
            cfg.adapter_lr / cfg.lr,
        );
        let schedule = LinearSchedule {
            peak: cfg.lr,
            warmup: (cfg.warmup_ratio * cfg.max_steps as f64) as u64,
            total: cfg.max_steps,
        };
        let sampler = FamilySampler::new(&pools, cfg.sampling, cfg.sampling_temperature);
        Ok(Self {
            sample_rng: seed_rng(cfg.seed.wrapping_add(1)),
            dropout_rng: seed_rng(cfg.seed.wrapping_add(2)),
            cfg,
            encoder,
            concept_encoder,
            scorer,
            tok,
            ner_pool,
            tc_pool,
            sampler,
            opt,
            schedule,
            step: 0,
            conflicts: Vec::new(),
            recent: BTreeMap::new(),
            started: Instant::now(),
            last_pcgrad: None,
        })
    }

    /// Loads the backbone, tokenizer and pools named by the config (data paths default under
    /// `data_root`).
    pub fn from_paths(cfg: PretrainConfig, model_dir: &Path, data_root: &Path) -> Result<Self> {
        let _span = tracing::debug_span!("load", model = %model_dir.display()).entered();
        let (encoder, _) = Encoder::from_model_dir(model_dir)?;
        let tok = TextTokenizer::from_model_dir(
            model_dir,
            // Weak pools hold long documents: truncation is expected there, not reported per text.
            TokenizeConfig {
                max_length: cfg.max_length,
                overflow: prefine_tokenize::Overflow::Truncate,
                ..Default::default()
            },
        )?;
        let needs_ner = cfg.strategy != Strategy::Tc;
        let needs_tc = cfg.strategy != Strategy::Ner;
        let ner_pool = if needs_ner {
            let dir = cfg
                .ner_data
                .clone()
                .unwrap_or_else(|| data_root.join("pretrain/ner/mixed_concepts"));
            Some(NerPool::load(&dir)?)
        } else {
            None
        };
        let tc_pool = if needs_tc {
            let pairs = cfg
                .tc_pairs
                .clone()
                .unwrap_or_else(|| data_root.join("pretrain/tc/weak_pairs_pool/pairs.jsonl"));
            let lab = cfg
                .tc_labelled
                .clone()
                .unwrap_or_else(|| data_root.join("pretrain/tc/weak_labelled_pool/train.jsonl"));
            let pairs = (cfg.tc_pairs_fraction > 0.0).then_some(pairs);
            let lab = (cfg.tc_pairs_fraction < 1.0).then_some(lab);
            Some(TcPool::load(pairs.as_deref(), lab.as_deref())?)
        } else {
            None
        };
        Self::new(cfg, encoder, tok, ner_pool, tc_pool)
    }

    /// Steps done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The config.
    pub fn config(&self) -> &PretrainConfig {
        &self.cfg
    }

    /// Sets which group trains on a batch of `fam` (TPL) and returns `(group, also)`.
    fn route(&mut self, fam: Family) -> Result<(Option<&'static str>, Option<&'static str>)> {
        if self.cfg.strategy != Strategy::Tpl {
            return Ok((None, None));
        }
        let other = match fam {
            Family::Ner => Family::Tc,
            Family::Tc => Family::Ner,
        };
        self.encoder.set_group_trainable(group_of(fam), true)?;
        self.encoder.set_group_trainable(group_of(other), false)?;
        let also = (self.cfg.tpl_other_group == OtherGroup::Frozen).then_some(group_of(other));
        Ok((Some(group_of(fam)), also))
    }

    /// The loss of one batch of `fam` drawn from `rng`; dropout from `dropout` when training.
    fn loss(&mut self, fam: Family, rng_kind: RngKind, train: bool) -> Result<Tensor> {
        let (group, also) = self.route(fam)?;
        let mut diag_rng = match rng_kind {
            RngKind::Training => None,
            RngKind::Diagnostic(seed) => Some(seed_rng(seed)),
        };
        let rng = match diag_rng.as_mut() {
            Some(r) => r,
            None => &mut self.sample_rng,
        };
        let dropout = if train {
            Some(&mut self.dropout_rng)
        } else {
            None
        };
        match fam {
            Family::Ner => {
                let pool = self.ner_pool.as_ref().expect("checked in new");
                let idx = sample_indices(pool.len(), self.cfg.ner_batch_size, rng);
                let batch = build_batch(pool, &idx, &self.tok, self.cfg.max_length)?;
                let fwd = Forward {
                    group,
                    also,
                    dropout_rng: dropout,
                };
                let (cenc, cgroup) = match &self.concept_encoder {
                    Some(c) => (c, None),
                    None => (&self.encoder, group),
                };
                Ok((ner_loss(
                    &self.encoder,
                    fwd,
                    cenc,
                    cgroup,
                    &self.scorer,
                    &batch,
                    pool,
                    &self.tok,
                )? * self.cfg.ner_weight)?)
            }
            Family::Tc => {
                let pool = self.tc_pool.as_ref().expect("checked in new");
                let batch = sample_batch(
                    pool,
                    self.cfg.tc_batch_size,
                    self.cfg.tc_pairs_fraction,
                    rng,
                );
                let l = tc_loss(
                    &self.encoder,
                    group,
                    also,
                    dropout,
                    &self.tok,
                    &batch,
                    self.cfg.max_length,
                    self.cfg.temperature,
                    self.cfg.symmetric,
                )?;
                Ok((l * self.cfg.tc_weight)?)
            }
        }
    }

    /// One optimizer step on one batch; returns its family and loss.
    /// With `gradient_surgery = "pcgrad"` a step takes one batch of each family (see
    /// [`Pretrainer::pcgrad_step`]) and returns the NER family and loss.
    pub fn train_step(&mut self) -> Result<(Family, f32)> {
        if self.cfg.gradient_surgery == GradientSurgery::Pcgrad {
            return self.pcgrad_step();
        }
        let fam = self.sampler.next(&mut self.sample_rng);
        let precision = self.cfg.precision;
        let loss = {
            let _span = tracing::debug_span!("forward", family = fam.name()).entered();
            with_matmul_precision(precision.into(), || self.loss(fam, RngKind::Training, true))?
        };
        let lv = finite_loss(&loss, &format!("{} loss", fam.name()), self.step + 1)?;
        let _span = tracing::debug_span!("backward").entered();
        let mut grads = loss.backward()?;
        self.drop_backbone_grads(fam, &mut grads);
        self.opt.accumulate(grads)?;
        // The forward graph is not needed for the update: free it first.
        drop(loss);
        self.update()?;
        self.record(fam, lv);
        Ok((fam, lv))
    }

    /// The optimizer update with the accumulated gradients (scheduled lr, clipping); one step.
    fn update(&mut self) -> Result<()> {
        self.opt.set_lr(self.schedule.lr(self.step));
        let scale = self.opt.clip_scale(self.cfg.max_grad_norm, 1.0);
        self.opt.apply(scale)?;
        self.step += 1;
        Ok(())
    }

    /// Keeps `lv` among the last 100 losses of `fam` (progress message and report).
    fn record(&mut self, fam: Family, lv: f32) {
        let r = self.recent.entry(fam).or_default();
        r.push(lv);
        if r.len() > 100 {
            r.remove(0);
        }
    }

    /// Per-layer cosine between the NER and TC gradients of the shared backbone on one fresh
    /// batch of each (dropout off; no update).
    pub fn conflict(&mut self) -> Result<BTreeMap<String, f64>> {
        let seed = self.cfg.seed ^ (self.step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let g_ner = {
            let l = self.loss(Family::Ner, RngKind::Diagnostic(seed), false)?;
            conflict::backbone_grads(&self.encoder, &l.backward()?)?
        };
        let g_tc = {
            let l = self.loss(Family::Tc, RngKind::Diagnostic(seed.wrapping_add(1)), false)?;
            conflict::backbone_grads(&self.encoder, &l.backward()?)?
        };
        Ok(conflict::cosines(&g_ner, &g_tc))
    }

    /// Runs until `max_steps`, logging to `out/metrics.jsonl` and checkpointing to
    /// `out/checkpoint` (resume first with [`Pretrainer::load_checkpoint`]).
    pub fn run(&mut self, out: &Path) -> Result<PretrainReport> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let mut trainer = trainer_at(out, self.cfg.checkpoint_every);
        if self.step > 0 {
            // Resumed: drop the lines a killed run wrote after its last checkpoint.
            trainer.truncate_log(self.step)?;
        }
        self.started = Instant::now();
        trainer.fit(self)?;
        Ok(self.report(self.started.elapsed().as_secs_f64()))
    }

    /// The metrics line of the step just done (with a gradient-conflict diagnostic when due),
    /// or `None` between `log_every` steps.
    fn log_line(&mut self, fam: Family, lv: f32) -> Result<Option<serde_json::Value>> {
        let mut line = json!({"step": self.step, "family": fam.name(), "loss": lv, "lr": self.opt.lr(), "elapsed_s": self.started.elapsed().as_secs_f64()});
        if let Some(p) = self.last_pcgrad.take() {
            line["family"] = json!("both");
            line["loss"] = json!(lv as f64 + p["tc_loss"].as_f64().unwrap_or(f64::NAN));
            line["pcgrad"] = p;
        }
        let two_families = matches!(self.cfg.strategy, Strategy::Naive | Strategy::Tpl);
        if two_families
            && self.cfg.conflict_every > 0
            && self.step.is_multiple_of(self.cfg.conflict_every)
        {
            let c = self.conflict()?;
            line["conflict"] = json!(c);
            self.conflicts.push(c);
        }
        let due = self.step.is_multiple_of(self.cfg.log_every.max(1))
            || line.get("conflict").is_some()
            || self.step == self.cfg.max_steps;
        Ok(due.then_some(line))
    }

    /// The progress message: the recent mean loss per family.
    fn message(&self) -> String {
        let msg: Vec<String> = self
            .recent
            .iter()
            .map(|(f, v)| {
                format!(
                    "{} {:.4}",
                    f.name(),
                    v.iter().sum::<f32>() / v.len().max(1) as f32
                )
            })
            .collect();
        msg.join(" ")
    }

    fn report(&self, seconds: f64) -> PretrainReport {
        let mut mean_conflict: BTreeMap<String, f64> = BTreeMap::new();
        for c in &self.conflicts {
            for (k, v) in c {
                *mean_conflict.entry(k.clone()).or_default() += v / self.conflicts.len() as f64;
            }
        }
        PretrainReport {
            steps: self.step,
            last_loss: self
                .recent
                .iter()
                .map(|(f, v)| {
                    (
                        f.name().to_string(),
                        v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64,
                    )
                })
                .collect(),
            mean_conflict,
            seconds,
        }
    }

    /// Writes `backbone/` (HF directory), for TPL `adapters/ner` and `adapters/tc` (PEFT), with a
    /// separate concept encoder `name_encoder/`, and `zero_shot.json` ([`ZeroShotSpec`]).
    pub fn save_outputs(&self, out: &Path, tokenizer_from: &Path) -> Result<()> {
        let backbone = out.join("backbone");
        self.encoder
            .save_pretrained(&backbone, Some(tokenizer_from))?;
        if self.cfg.strategy == Strategy::Tpl {
            let base = std::fs::canonicalize(&backbone).unwrap_or(backbone.clone());
            for g in ["ner", "tc"] {
                save_adapter(
                    &self.encoder,
                    g,
                    PeftTaskType::FeatureExtraction,
                    &BTreeMap::new(),
                    &base.display().to_string(),
                    &out.join("adapters").join(g),
                )?;
            }
        }
        if let Some(c) = &self.concept_encoder {
            c.save_pretrained(&out.join("name_encoder"), Some(tokenizer_from))?;
        }
        self.zero_shot_spec()?.save(out)?;
        write_atomic(&out.join("config.toml"), self.cfg.to_toml().as_bytes())?;
        Ok(())
    }

    /// What zero-shot inference needs from this run (`zero_shot.json`): the NER scorer's
    /// learned scale and bias, the name pooling, the TC temperature, and where the family
    /// adapters and a separate name encoder are saved.
    pub fn zero_shot_spec(&self) -> Result<ZeroShotSpec> {
        let tpl = self.cfg.strategy == Strategy::Tpl;
        let adapter = |g: &str| tpl.then(|| PathBuf::from("adapters").join(g));
        let ner = if self.cfg.strategy != Strategy::Tc {
            Some(NerZeroShot {
                adapter: adapter("ner"),
                scale: self
                    .scorer
                    .log_scale
                    .t()
                    .exp()?
                    .flatten_all()?
                    .to_vec1::<f32>()?[0],
                bias: self.scorer.bias.t().flatten_all()?.to_vec1::<f32>()?[0],
                name_pooling: "mean".into(),
                name_encoder: self
                    .concept_encoder
                    .as_ref()
                    .map(|_| PathBuf::from("name_encoder")),
            })
        } else {
            None
        };
        let tc = (self.cfg.strategy != Strategy::Ner).then(|| TcZeroShot {
            adapter: adapter("tc"),
            pooling: "mean".into(),
            temperature: self.cfg.temperature as f32,
        });
        Ok(ZeroShotSpec {
            version: ZERO_SHOT_VERSION,
            ner,
            tc,
        })
    }

    /// Writes a checkpoint (weights, optimizer moments, step counts, RNG positions) atomically:
    /// into a temporary directory, then renamed over the previous one.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        Trainer::new(PathBuf::new(), CheckpointPlace::Single(dir.into()), 0, None).save(self)
    }

    /// Restores a checkpoint written by [`Pretrainer::save_checkpoint`] into this (freshly
    /// built, same config) trainer.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        Trainer::new(PathBuf::new(), CheckpointPlace::Single(dir.into()), 0, None)
            .restore_latest(self)?;
        Ok(())
    }
}

/// Issue 27's ablations: which families' gradients reach the backbone, and PCGrad.
impl Pretrainer {
    /// Removes the shared backbone's gradients from `grads` when `backbone_grad_from` excludes
    /// `fam` (the optimizer then skips those weights on this step: no moment update, no decay).
    fn drop_backbone_grads(&self, fam: Family, grads: &mut candle_core::backprop::GradStore) {
        if self.cfg.backbone_grad_from.includes(fam.name()) {
            return;
        }
        for (_, p) in self.encoder.base_params() {
            grads.remove(p.var().as_tensor());
        }
    }

    /// One PCGrad step: a batch of each family, their gradients on the shared backbone
    /// projected where they conflict ([`pcgrad::surgery`]), then one update with the sum.
    /// Returns the NER family and loss; the TC loss and the projection go to the metrics line.
    fn pcgrad_step(&mut self) -> Result<(Family, f32)> {
        let precision = self.cfg.precision;
        let mut per_family = Vec::with_capacity(2);
        for fam in [Family::Ner, Family::Tc] {
            let loss = {
                let _span = tracing::debug_span!("forward", family = fam.name()).entered();
                with_matmul_precision(precision.into(), || self.loss(fam, RngKind::Training, true))?
            };
            let lv = finite_loss(&loss, &format!("{} loss", fam.name()), self.step + 1)?;
            let _span = tracing::debug_span!("backward").entered();
            per_family.push((lv, loss.backward()?));
        }
        let (tc_loss, mut g_tc) = per_family.pop().expect("two families");
        let (ner_loss, mut g_ner) = per_family.pop().expect("two families");
        let shared: Vec<Tensor> = self
            .encoder
            .base_params()
            .into_iter()
            .map(|(_, p)| p.var().as_tensor().clone())
            .collect();
        let proj = pcgrad::surgery(&shared, &mut g_ner, &mut g_tc)?;
        self.opt.accumulate(g_ner)?;
        self.opt.accumulate(g_tc)?;
        self.update()?;
        self.record(Family::Ner, ner_loss);
        self.record(Family::Tc, tc_loss);
        self.last_pcgrad = Some(json!({"ner_loss": ner_loss, "tc_loss": tc_loss,
            "cosine": proj.cosine, "projected": proj.projected}));
        Ok((Family::Ner, ner_loss))
    }
}

/// The trainer of a pre-finetuning run in `out`: `metrics.jsonl`, `checkpoint/`.
fn trainer_at(out: &Path, checkpoint_every: u64) -> Trainer {
    Trainer::new(
        out.join("metrics.jsonl"),
        CheckpointPlace::Single(out.join("checkpoint")),
        checkpoint_every,
        None,
    )
}

impl TrainStep for Pretrainer {
    type State = PretrainState;

    fn step(&self) -> u64 {
        self.step
    }

    fn total_steps(&self) -> u64 {
        self.cfg.max_steps
    }

    fn done(&self) -> bool {
        self.step >= self.cfg.max_steps
    }

    fn run_step(&mut self) -> Result<StepOutput> {
        let (fam, lv) = self.train_step()?;
        let log = self.log_line(fam, lv)?;
        Ok(StepOutput {
            message: self.message(),
            log,
            epoch_end: false,
        })
    }

    fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    fn state(&self) -> Result<(PretrainState, BTreeMap<String, Tensor>)> {
        let state = PretrainState {
            sample_rng_word_pos: self.sample_rng.get_word_pos(),
            dropout_rng_word_pos: self.dropout_rng.get_word_pos(),
            round_robin: self.sampler.position(),
            conflicts: self.conflicts.clone(),
        };
        Ok((state, BTreeMap::new()))
    }

    fn restore(
        &mut self,
        step: u64,
        state: PretrainState,
        _extra: BTreeMap<String, Tensor>,
        _dir: &Path,
    ) -> Result<()> {
        self.step = step;
        self.sample_rng.set_word_pos(state.sample_rng_word_pos);
        self.dropout_rng.set_word_pos(state.dropout_rng_word_pos);
        self.sampler.set_position(state.round_robin);
        self.conflicts = state.conflicts;
        Ok(())
    }
}

/// How [`run_pretrain`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the backbone; earlier checkpoints and logs in the output directory are removed.
    Fresh,
    /// From the checkpoint in `OUT/checkpoint` (same configuration).
    Resume,
}

/// Runs `prefine pretrain` end to end: loads the backbone and pools, starts afresh or resumes,
/// trains to `max_steps`, and writes the outputs (`backbone/`, TPL's `adapters/`,
/// `config.toml`) and a final checkpoint into `out`. Used by the CLI and the evaluation suite.
pub fn run_pretrain(
    cfg: PretrainConfig,
    model_dir: &Path,
    data_root: &Path,
    out: &Path,
    start: Start,
) -> Result<PretrainReport> {
    let mut t = Pretrainer::from_paths(cfg, model_dir, data_root)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let trainer = trainer_at(out, t.cfg.checkpoint_every);
    match start {
        Start::Resume => trainer.resume(&mut t)?,
        Start::Fresh => trainer.start_fresh(),
    }
    let report = t.run(out)?;
    t.save_outputs(out, model_dir)?;
    trainer.save(&t)?;
    Ok(report)
}

/// Which RNG draws a batch.
#[derive(Debug, Clone, Copy)]
enum RngKind {
    /// The training stream (checkpointed).
    Training,
    /// A throw-away stream for diagnostics, seeded.
    Diagnostic(u64),
}
