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
pub mod task;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use prefine_data::{subsample, LabelSet};
use prefine_model::{seed_rng, Encoder, Precision};
use prefine_tokenize::{TextTokenizer, TokenizeConfig};
use serde_json::{json, Value};

use crate::checkpoint::{CheckpointPlace, CheckpointSeries};
use crate::error::{Error, Result};
use crate::trainer::Trainer;
pub use config::{FinetuneConfig, Mode, TaskKind, TcPooling};
use data::{read_file, split_file, SplitData};
use features::{ner_features, tc_features};
use hidden_cache::HiddenCache;
use model::TaskModel;
pub use task::evaluate_split;
use task::{Example, FinetuneTask};

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

/// The splits of a run: the (subsampled) training set, dev and test (capped), the labels.
struct Splits {
    train: SplitData,
    dev: SplitData,
    test: Option<SplitData>,
    labels: LabelSet,
}

/// Reads and subsamples the splits of `data_dir`.
fn read_splits(cfg: &FinetuneConfig, data_dir: &Path) -> Result<Splits> {
    let _span = tracing::debug_span!("load_data", dir = %data_dir.display()).entered();
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
    Ok(Splits {
        train,
        dev,
        test,
        labels,
    })
}

/// Loads the backbone and tokenizer and builds the task model (with the shared frozen-state
/// cache in `head` mode).
fn load_model(
    cfg: &FinetuneConfig,
    model_dir: &Path,
    num_labels: usize,
    cache: Option<Arc<HiddenCache>>,
) -> Result<(TaskModel, TextTokenizer)> {
    let _span = tracing::debug_span!("load_model", dir = %model_dir.display()).entered();
    let (encoder, _) = Encoder::from_model_dir(model_dir)?;
    let tok = TextTokenizer::from_model_dir(
        model_dir,
        TokenizeConfig {
            max_length: cfg.max_length,
            ..Default::default()
        },
    )?;
    let mut rng = seed_rng(cfg.seed);
    let mut model = TaskModel::for_training(encoder, cfg, num_labels, &mut rng)?;
    if cfg.mode == Mode::Head && cfg.feature_cache_mb > 0 {
        let owner = cache_owner(cfg, model_dir);
        model.cache = Some(match cache {
            Some(c) if c.owner() == owner => c,
            _ => Arc::new(HiddenCache::new(owner, cfg.feature_cache_mb)),
        });
    }
    Ok((model, tok))
}

/// Tokenises the training split.
fn training_examples(
    cfg: &FinetuneConfig,
    tok: &TextTokenizer,
    train: &SplitData,
    labels: &LabelSet,
) -> Result<Vec<Example>> {
    let _span = tracing::debug_span!("tokenize", examples = train.len()).entered();
    Ok(match train {
        SplitData::Ner(s) => ner_features(tok, s, labels, cfg.max_length, cfg.stride)?
            .into_iter()
            .map(Example::Ner)
            .collect(),
        SplitData::Tc(e) => {
            let (f, truncated) = tc_features(tok, e, labels)?;
            if truncated > 0 {
                tracing::warn!(
                    "{truncated} training text(s) truncated to {} tokens",
                    cfg.max_length
                );
            }
            f.into_iter().map(Example::Tc).collect()
        }
    })
}

/// Creates `out` and checks that it is writable, before any work.
fn check_writable(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let probe = out.join(".prefine-write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::File {
        path: out.to_path_buf(),
        reason: format!("not writable: {e}"),
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
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
    let t_start = Instant::now();
    cfg.validate()?;
    check_writable(out)?;
    let Splits {
        train,
        dev,
        test,
        labels,
    } = read_splits(cfg, data_dir)?;
    let (model, tok) = load_model(cfg, model_dir, labels.len(), hooks.cache)?;
    let examples = training_examples(cfg, &tok, &train, &labels)?;
    let mut task = FinetuneTask::new(cfg, model, tok, labels, examples, dev)?;
    let mut trainer = Trainer::new(
        out.join("log.jsonl"),
        CheckpointPlace::Series(CheckpointSeries {
            root: out.join("checkpoints"),
            keep: cfg.keep_checkpoints,
        }),
        cfg.checkpoint_every,
        hooks.progress.as_ref(),
    );
    if hooks.resume {
        trainer.resume(&mut task)?;
    } else {
        trainer.start_fresh();
    }
    trainer.fit(&mut task)?;
    let report = finish(task, test.as_ref(), model_dir, out, t_start)?;
    // The artifact supersedes the checkpoints.
    trainer.checkpoints().remove();
    Ok(report)
}

/// After training: restores the best epoch, scores the test split and writes the artifact,
/// `metrics.json` and `curves.svg`.
fn finish(
    task: FinetuneTask,
    test: Option<&SplitData>,
    model_dir: &Path,
    out: &Path,
    t_start: Instant,
) -> Result<FinetuneReport> {
    let best = task
        .best
        .as_ref()
        .ok_or_else(|| Error::Data("no epoch ran".into()))?;
    TaskModel::restore(&best.weights)?;
    let (cfg, model) = (&task.cfg, &task.model);
    let test_json = match test {
        Some(t) => evaluate_split(model, &task.tok, t, &task.labels, cfg)?.0,
        None => Value::Null,
    };
    artifact::save_artifact(out, model, cfg, &task.labels, model_dir)?;
    let metric = if cfg.task == TaskKind::Ner {
        "f1 (strict)"
    } else {
        "accuracy"
    };
    let st = &task.st;
    curves::write_curves(&out.join("curves.svg"), &st.losses, &st.dev_curve, metric)?;
    let wall = t_start.elapsed().as_secs_f64();
    let best_epoch = best.record.epoch;
    let metrics = json!({"dev": best.record.dev, "test": test_json, "best_epoch": best_epoch,
                         "train_seconds": st.train_seconds, "wall_seconds": wall});
    let text = serde_json::to_vec_pretty(&metrics).expect("json");
    prefine_model::weights::write_atomic(&out.join("metrics.json"), &text)?;
    Ok(FinetuneReport {
        metrics,
        best_epoch,
        train_seconds: st.train_seconds,
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
