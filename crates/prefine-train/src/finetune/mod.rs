//! Downstream fine-tuning: what every application does with the shared backbone. Reads a task
//! directory (`train`/`dev`/`test` files), trains a head (and a LoRA group, or everything),
//! selects the best dev epoch, and writes a self-contained output directory.

pub mod artifact;
pub mod config;
pub mod curves;
pub mod data;
pub mod eval;
pub mod features;
pub mod hidden_cache;
pub mod model;
pub mod predict;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use prefine_data::{subsample, LabelSet};
use prefine_model::ops::with_matmul_precision;
use prefine_model::{seed_rng, Encoder, Precision};
use prefine_tokenize::{TextTokenizer, TokenizeConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checkpoint::{self, stop_requested, CheckpointSeries};
use crate::error::{Error, Result};
use crate::loss::masked_cross_entropy;
use crate::optim::{AdamW, AdamWConfig, LinearSchedule};
pub use config::{FinetuneConfig, Mode, TaskKind, TcPooling};
use data::{read_file, split_file, SplitData};
use features::{bucketed_batches, ner_features, pad_batch, shuffled_batches, tc_features};
use hidden_cache::HiddenCache;
use model::TaskModel;

/// The best epoch so far: dev score, epoch, trainable values, dev metrics.
type BestEpoch = (f64, usize, Vec<(candle_core::Var, Tensor)>, Value);

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct FinetuneReport {
    /// `{"dev": ..., "test": ...}` as written to `metrics.json`.
    pub metrics: Value,
    /// The best epoch (1-based).
    pub best_epoch: usize,
    /// Seconds spent in training steps.
    pub train_seconds: f64,
    /// Seconds for the whole run.
    pub wall_seconds: f64,
}

/// Appends one JSON line to a log file.
fn append_jsonl(path: &Path, v: &Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    writeln!(f, "{v}").map_err(|e| Error::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Scores the model on a split: the JSON metric object and the headline number.
fn evaluate_split(
    model: &TaskModel,
    tok: &TextTokenizer,
    split: &SplitData,
    labels: &LabelSet,
    cfg: &FinetuneConfig,
) -> Result<(Value, f64)> {
    match split {
        SplitData::Ner(s) => {
            let p = eval::predict_ner(
                model,
                tok,
                s,
                labels,
                cfg.max_length,
                cfg.stride,
                cfg.eval_batch_size,
            )?;
            let scores = eval::score_ner(s, &p.tags, labels)?;
            Ok((scores.to_json(false), scores.strict.f1))
        }
        SplitData::Tc(e) => {
            let p = eval::predict_tc(model, tok, e, labels, cfg.eval_batch_size)?;
            let (m, unseen) = eval::score_tc(e, &p, labels)?;
            Ok((eval::tc_json(&m, &unseen), m.accuracy))
        }
    }
}

/// Keeps at most `max` examples of an evaluation split: the same seeded subset for every seed and
/// fraction, so that budgeted runs stay comparable.
fn cap_eval(split: SplitData, max: Option<usize>) -> Result<SplitData> {
    let Some(max) = max else { return Ok(split) };
    if split.len() <= max {
        return Ok(split);
    }
    let keep = subsample(split.len(), 1.0, Some(max), 0)?;
    Ok(match split {
        SplitData::Ner(v) => SplitData::Ner(keep.iter().map(|&i| v[i].clone()).collect()),
        SplitData::Tc(v) => SplitData::Tc(keep.iter().map(|&i| v[i].clone()).collect()),
    })
}

/// One training example, tokenised.
enum Example {
    Ner(features::NerFeature),
    Tc(features::TcFeature),
}

impl Example {
    fn ids(&self) -> &[u32] {
        match self {
            Example::Ner(f) => &f.ids,
            Example::Tc(f) => &f.ids,
        }
    }
}

/// Runs `prefine finetune`: `model_dir` is the backbone, `data_dir` holds the splits, results go
/// to `out`.
pub fn run_finetune(
    cfg: &FinetuneConfig,
    model_dir: &Path,
    data_dir: &Path,
    out: &Path,
) -> Result<FinetuneReport> {
    run_finetune_with(cfg, model_dir, data_dir, out, RunHooks::default())
}

/// What a caller (e.g. the evaluation suite) can hand to a fine-tuning run.
#[derive(Default, Clone)]
pub struct RunHooks {
    /// Frozen-backbone states shared with other `head`-mode runs on the same encoder.
    pub cache: Option<Arc<HiddenCache>>,
    /// Where the run's progress bar is drawn (under the caller's own bars).
    pub progress: Option<indicatif::MultiProgress>,
    /// Continue from the newest checkpoint in `OUT/checkpoints/` (same configuration).
    pub resume: bool,
}

/// The training loop's position and history: everything a checkpoint needs besides weights,
/// optimizer and RNG positions.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoopState {
    /// Optimizer steps done.
    step: u64,
    /// The epoch in progress (1-based).
    epoch: usize,
    /// Batches of the current epoch already trained.
    batch_in_epoch: usize,
    /// Shuffle-RNG position before this epoch's shuffle (decimal).
    epoch_start_pos: String,
    /// Sum of this epoch's batch losses so far.
    epoch_loss: f64,
    /// Loss per optimizer step.
    losses: Vec<(u64, f32)>,
    /// Dev score per epoch end.
    dev_curve: Vec<(u64, f64)>,
    /// Epochs since the best one.
    since_best: usize,
    /// Early stopping fired.
    stopped_early: bool,
    /// Seconds in training steps.
    train_seconds: f64,
    /// Lines of `log.jsonl` written.
    log_lines: usize,
}

impl Default for LoopState {
    fn default() -> Self {
        Self {
            step: 0,
            epoch: 1,
            batch_in_epoch: 0,
            epoch_start_pos: "0".into(),
            epoch_loss: 0.0,
            losses: Vec::new(),
            dev_curve: Vec::new(),
            since_best: 0,
            stopped_early: false,
            train_seconds: 0.0,
            log_lines: 0,
        }
    }
}

/// Keeps the first `n` lines of a file (drops log lines written after a checkpoint).
fn truncate_lines(path: &Path, n: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text.lines().take(n).collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    Ok(prefine_model::weights::write_atomic(path, body.as_bytes())?)
}

/// The identity of the frozen encoder a `head`-mode run reads states from.
pub fn cache_owner(cfg: &FinetuneConfig, model_dir: &Path) -> String {
    format!(
        "{}|{}",
        model_dir.display(),
        cfg.init_adapter
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string())
    )
}

/// [`run_finetune`] with caller hooks: a held [`HiddenCache`] (`head` mode), so that runs on the
/// same backbone, adapter and data (other fractions, seeds) reuse the encoder's states (a cache
/// that belongs to another backbone or adapter is ignored), and a progress area.
pub fn run_finetune_with(
    cfg: &FinetuneConfig,
    model_dir: &Path,
    data_dir: &Path,
    out: &Path,
    hooks: RunHooks,
) -> Result<FinetuneReport> {
    let RunHooks {
        cache,
        progress,
        resume,
    } = hooks;
    let t_start = Instant::now();
    cfg.validate()?;
    // Fail early on an unwritable output directory, before any work.
    std::fs::create_dir_all(out).map_err(|e| Error::File {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    let probe = out.join(".prefine-write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::File {
        path: out.to_path_buf(),
        reason: format!("not writable: {e}"),
    })?;
    let _ = std::fs::remove_file(&probe);
    let log_path = out.join("log.jsonl");

    let read = |split: &str| -> Result<SplitData> {
        read_file(
            &split_file(data_dir, cfg.task, split)?,
            cfg.task,
            cfg.repair_iob,
            cfg.tag_scheme,
        )
    };
    let train_full = read("train")?;
    let dev = cap_eval(read("dev")?, cfg.max_eval)?;
    let test = match split_file(data_dir, cfg.task, "test") {
        Ok(p) => Some(cap_eval(
            read_file(&p, cfg.task, cfg.repair_iob, cfg.tag_scheme)?,
            cfg.max_eval,
        )?),
        Err(_) => None,
    };
    let keep = subsample(train_full.len(), cfg.fraction, cfg.max_train, cfg.seed)?;
    let train = match &train_full {
        SplitData::Ner(v) => SplitData::Ner(keep.iter().map(|&i| v[i].clone()).collect()),
        SplitData::Tc(v) => SplitData::Tc(keep.iter().map(|&i| v[i].clone()).collect()),
    };
    let labels = match &train {
        SplitData::Ner(s) => LabelSet::from_ner(s),
        SplitData::Tc(e) => LabelSet::from_examples(e),
    };
    tracing::info!(
        "{} training examples ({} of {}), {} labels",
        train.len(),
        keep.len(),
        train_full.len(),
        labels.len()
    );

    let (encoder, _) = Encoder::from_model_dir(model_dir)?;
    let tok = TextTokenizer::from_model_dir(
        model_dir,
        TokenizeConfig {
            max_length: cfg.max_length,
            ..Default::default()
        },
    )?;
    let mut rng = seed_rng(cfg.seed);
    let mut model = TaskModel::for_training(encoder, cfg, labels.len(), &mut rng)?;
    if cfg.mode == Mode::Head && cfg.feature_cache_mb > 0 {
        let owner = cache_owner(cfg, model_dir);
        model.cache = Some(match cache {
            Some(c) if c.owner() == owner => c,
            _ => Arc::new(HiddenCache::new(owner, cfg.feature_cache_mb)),
        });
    }

    let examples: Vec<Example> = match &train {
        SplitData::Ner(s) => ner_features(&tok, s, &labels, cfg.max_length, cfg.stride)?
            .into_iter()
            .map(Example::Ner)
            .collect(),
        SplitData::Tc(e) => {
            let (f, truncated) = tc_features(&tok, e, &labels)?;
            if truncated > 0 {
                tracing::warn!(
                    "{truncated} training text(s) truncated to {} tokens",
                    cfg.max_length
                );
            }
            f.into_iter().map(Example::Tc).collect()
        }
    };
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids().len()).collect();
    let params = model.trainable();
    let n_trainable: usize = params.iter().map(|(_, v, _)| v.elem_count()).sum();
    tracing::info!(
        "{} trainable parameters in {} tensors",
        n_trainable,
        params.len()
    );
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: cfg.learning_rate(),
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let batches_per_epoch = examples.len().div_ceil(cfg.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(cfg.grad_accumulation) as u64;
    let total = steps_per_epoch * cfg.epochs as u64;
    let schedule = LinearSchedule {
        peak: cfg.learning_rate(),
        warmup: (cfg.warmup_ratio * total as f64) as u64,
        total,
    };

    let bar = match &progress {
        Some(mp) => mp.add(indicatif::ProgressBar::new(total)),
        None => indicatif::ProgressBar::new(total),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    let mut shuffle_rng = seed_rng(cfg.seed.wrapping_add(1));
    let mut dropout_rng = seed_rng(cfg.seed.wrapping_add(2));
    let series = CheckpointSeries {
        root: out.join("checkpoints"),
        keep: cfg.keep_checkpoints,
    };
    let mut st = LoopState::default();
    let mut best: Option<BestEpoch> = None;
    if resume {
        let dir = series.latest().ok_or_else(|| Error::File {
            path: series.root.clone(),
            reason: "no checkpoint to resume from".into(),
        })?;
        let (state, extra) = checkpoint::load(&dir, &mut opt)?;
        let bad = |r: String| Error::File {
            path: dir.clone(),
            reason: r,
        };
        if state["config"].as_str() != Some(cfg.to_toml().as_str()) {
            return Err(bad(
                "the checkpoint was written with another configuration; resume with the same \
                 settings (see its state.json) or start a new run"
                    .into(),
            ));
        }
        st = serde_json::from_value(state["loop"].clone())
            .map_err(|e| bad(format!("state.json: {e}")))?;
        dropout_rng.set_word_pos(checkpoint::state_u128(
            &state,
            "dropout_rng_word_pos",
            &dir,
        )?);
        shuffle_rng.set_word_pos(checkpoint::state_u128(
            &state,
            "shuffle_rng_word_pos",
            &dir,
        )?);
        if let Some(b) = state.get("best").filter(|b| !b.is_null()) {
            let mut snap = model.snapshot()?;
            for (i, (_, t)) in snap.iter_mut().enumerate() {
                *t = extra
                    .get(&format!("best.{i}"))
                    .ok_or_else(|| bad(format!("no best.{i} tensor")))?
                    .clone();
            }
            best = Some((
                b["score"].as_f64().unwrap_or(f64::NEG_INFINITY),
                b["epoch"].as_u64().unwrap_or(0) as usize,
                snap,
                b["dev"].clone(),
            ));
        }
        truncate_lines(&log_path, st.log_lines)?;
        bar.set_position(st.step);
        tracing::info!("resumed from {} at step {}", dir.display(), st.step);
    } else {
        let _ = std::fs::remove_dir_all(&series.root);
        let _ = std::fs::remove_file(&log_path);
    }
    let save_checkpoint = |st: &LoopState,
                           best: &Option<BestEpoch>,
                           opt: &AdamW,
                           shuffle_pos: u128,
                           dropout_pos: u128|
     -> Result<()> {
        let mut extra = std::collections::BTreeMap::new();
        if let Some(b) = best {
            for (i, (_, t)) in b.2.iter().enumerate() {
                extra.insert(format!("best.{i}"), t.clone());
            }
        }
        let state = json!({
            "config": cfg.to_toml(),
            "loop": st,
            "shuffle_rng_word_pos": shuffle_pos.to_string(),
            "dropout_rng_word_pos": dropout_pos.to_string(),
            "best": best.as_ref().map(|b| json!({"score": b.0, "epoch": b.1, "dev": b.3})),
        });
        series.save(st.step, opt, &extra, state)
    };
    let interrupted = |st: &LoopState| Error::Interrupted {
        step: st.step,
        checkpoint: series.root.clone(),
    };
    let mut mark = Instant::now();
    while st.epoch <= cfg.epochs && !st.stopped_early {
        let epoch = st.epoch;
        let t0 = Instant::now();
        if st.batch_in_epoch == 0 {
            st.epoch_start_pos = shuffle_rng.get_word_pos().to_string();
            st.epoch_loss = 0.0;
        } else {
            // Mid-epoch resume: replay this epoch's shuffle, then skip the finished batches.
            let pos = st
                .epoch_start_pos
                .parse::<u128>()
                .map_err(|e| Error::File {
                    path: series.root.clone(),
                    reason: format!("state.json: epoch_start_pos: {e}"),
                })?;
            shuffle_rng.set_word_pos(pos);
        }
        let batches = if cfg.group_by_length {
            bucketed_batches(&lengths, cfg.batch_size, Some(&mut shuffle_rng))
        } else {
            shuffled_batches(lengths.len(), cfg.batch_size, &mut shuffle_rng)
        };
        let mut pending = 0usize;
        for (bi, batch) in batches.iter().enumerate().skip(st.batch_in_epoch) {
            let step = st.step;
            let seqs: Vec<&[u32]> = batch.iter().map(|&i| examples[i].ids()).collect();
            let input = pad_batch(&seqs, tok.pad_id())?;
            let (b, s) = input.dims()?;
            let logits = with_matmul_precision(cfg.precision, || {
                model.logits(&input, Some(&mut dropout_rng))
            })?;
            let loss = match &examples[batch[0]] {
                Example::Ner(_) => {
                    let mut lab = vec![0u32; b * s];
                    let mut w = vec![0f32; b * s];
                    for (r, &i) in batch.iter().enumerate() {
                        if let Example::Ner(f) = &examples[i] {
                            for (p, o) in f.owned.iter().enumerate() {
                                if let Some((_, Some(l))) = o {
                                    lab[r * s + p] = *l;
                                    w[r * s + p] = 1.0;
                                }
                            }
                        }
                    }
                    let lab = Tensor::from_vec(lab, (b, s), &candle_core::Device::Cpu)?;
                    let w = Tensor::from_vec(w, (b, s), &candle_core::Device::Cpu)?;
                    masked_cross_entropy(&logits, &lab, &w)?
                }
                Example::Tc(_) => {
                    let (lab, w): (Vec<u32>, Vec<f32>) = batch
                        .iter()
                        .map(|&i| match &examples[i] {
                            Example::Tc(f) => (f.label.unwrap_or(0), f.label.map_or(0.0, |_| 1.0)),
                            Example::Ner(_) => (0, 0.0),
                        })
                        .unzip();
                    let lab = Tensor::from_vec(lab, b, &candle_core::Device::Cpu)?;
                    let w = Tensor::from_vec(w, b, &candle_core::Device::Cpu)?;
                    masked_cross_entropy(&logits, &lab, &w)?
                }
            };
            let lv = loss.to_scalar::<f32>()?;
            if !lv.is_finite() {
                return Err(Error::NonFinite {
                    what: "loss".into(),
                    step,
                });
            }
            opt.accumulate(loss.backward()?)?;
            // The forward graph is not needed for the update: free it first.
            drop((loss, logits));
            pending += 1;
            st.epoch_loss += lv as f64;
            if pending == cfg.grad_accumulation || bi + 1 == batches.len() {
                opt.set_lr(schedule.lr(step));
                let scale = opt.clip_scale(cfg.max_grad_norm, 1.0 / pending as f64);
                opt.apply(scale)?;
                pending = 0;
                st.step += 1;
                st.losses.push((st.step, lv));
                st.batch_in_epoch = bi + 1;
                st.train_seconds += mark.elapsed().as_secs_f64();
                mark = Instant::now();
                bar.set_message(format!("epoch {epoch}/{} loss {lv:.4}", cfg.epochs));
                bar.inc(1);
                let last = bi + 1 == batches.len();
                let due = cfg.checkpoint_every > 0 && st.step % cfg.checkpoint_every == 0;
                if !last && (due || stop_requested()) {
                    save_checkpoint(
                        &st,
                        &best,
                        &opt,
                        shuffle_rng.get_word_pos(),
                        dropout_rng.get_word_pos(),
                    )?;
                    if stop_requested() {
                        bar.abandon();
                        return Err(interrupted(&st));
                    }
                }
            }
        }
        let epoch_s = t0.elapsed().as_secs_f64();
        let (dev_json, dev_score) = evaluate_split(&model, &tok, &dev, &labels, cfg)?;
        st.dev_curve.push((st.step, dev_score));
        append_jsonl(
            &log_path,
            &json!({"epoch": epoch, "step": st.step, "train_loss": st.epoch_loss / batches.len().max(1) as f64,
                    "lr": opt.lr(), "epoch_seconds": epoch_s, "dev": dev_json}),
        )?;
        st.log_lines += 1;
        bar.println(format!(
            "epoch {epoch}: dev {} = {dev_score:.4}",
            if cfg.task == TaskKind::Ner {
                "f1"
            } else {
                "accuracy"
            }
        ));
        if best.as_ref().is_none_or(|b| dev_score > b.0) {
            best = Some((dev_score, epoch, model.snapshot()?, dev_json.clone()));
            st.since_best = 0;
        } else {
            st.since_best += 1;
            if cfg.patience.is_some_and(|p| st.since_best >= p) {
                bar.println(format!(
                    "early stopping after epoch {epoch} (no improvement for {})",
                    st.since_best
                ));
                st.stopped_early = true;
            }
        }
        st.epoch += 1;
        st.batch_in_epoch = 0;
        save_checkpoint(
            &st,
            &best,
            &opt,
            shuffle_rng.get_word_pos(),
            dropout_rng.get_word_pos(),
        )?;
        mark = Instant::now();
        if stop_requested() && (st.epoch <= cfg.epochs && !st.stopped_early) {
            bar.abandon();
            return Err(interrupted(&st));
        }
    }
    bar.finish_and_clear();
    let (_, best_epoch, snap, dev_json) = best.expect("at least one epoch ran");
    TaskModel::restore(&snap)?;
    let test_json = match &test {
        Some(t) => evaluate_split(&model, &tok, t, &labels, cfg)?.0,
        None => Value::Null,
    };
    let report = save_artifact_and_metrics(
        out,
        &model,
        cfg,
        &labels,
        model_dir,
        &dev_json,
        &test_json,
        best_epoch,
        st.train_seconds,
        t_start,
        &st.losses,
        &st.dev_curve,
    )?;
    // The artifact supersedes the checkpoints.
    let _ = std::fs::remove_dir_all(&series.root);
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn save_artifact_and_metrics(
    out: &Path,
    model: &TaskModel,
    cfg: &FinetuneConfig,
    labels: &LabelSet,
    model_dir: &Path,
    dev: &Value,
    test: &Value,
    best_epoch: usize,
    train_seconds: f64,
    t_start: Instant,
    losses: &[(u64, f32)],
    dev_curve: &[(u64, f64)],
) -> Result<FinetuneReport> {
    artifact::save_artifact(out, model, cfg, labels, model_dir)?;
    let metric = if cfg.task == TaskKind::Ner {
        "f1 (strict)"
    } else {
        "accuracy"
    };
    curves::write_curves(&out.join("curves.svg"), losses, dev_curve, metric)?;
    let wall = t_start.elapsed().as_secs_f64();
    let metrics = json!({"dev": dev, "test": test, "best_epoch": best_epoch,
                         "train_seconds": train_seconds, "wall_seconds": wall});
    let text = serde_json::to_vec_pretty(&metrics).expect("json");
    prefine_model::weights::write_atomic(&out.join("metrics.json"), &text)?;
    Ok(FinetuneReport {
        metrics,
        best_epoch,
        train_seconds,
        wall_seconds: wall,
    })
}

/// Evaluates a saved application on a data file: the same metric object as `metrics.json`.
pub fn evaluate_file(
    adapter_dir: &Path,
    model_dir: Option<&Path>,
    data: &Path,
    lenient: bool,
) -> Result<Value> {
    evaluate_file_at(adapter_dir, model_dir, data, lenient, Precision::F32)
}

/// [`evaluate_file`] with the backbone's linear weights quantised to `precision` after loading
/// (the adapter's LoRA group and head stay f32).
pub fn evaluate_file_at(
    adapter_dir: &Path,
    model_dir: Option<&Path>,
    data: &Path,
    lenient: bool,
    precision: Precision,
) -> Result<Value> {
    let mut art = artifact::load_artifact(adapter_dir, model_dir)?;
    art.model.encoder.prepare_inference(precision)?;
    let cfg = FinetuneConfig {
        max_length: art.manifest.max_length,
        stride: art.manifest.stride,
        ..FinetuneConfig::new(art.manifest.task, art.manifest.mode)
    };
    let split = read_file(
        data,
        art.manifest.task,
        false,
        prefine_data::TagScheme::Iob2,
    )?;
    Ok(match &split {
        SplitData::Ner(s) => {
            let p = eval::predict_ner(
                &art.model,
                &art.tokenizer,
                s,
                &art.labels,
                cfg.max_length,
                cfg.stride,
                cfg.eval_batch_size,
            )?;
            eval::score_ner(s, &p.tags, &art.labels)?.to_json(lenient)
        }
        SplitData::Tc(_) => {
            evaluate_split(&art.model, &art.tokenizer, &split, &art.labels, &cfg)?.0
        }
    })
}
