//! [`Trainer`]: the one training loop of prefine. It owns what every run needs around the
//! optimizer steps (the progress bar, the JSONL log, the checkpoints and `--resume`, Ctrl-C and
//! the non-finite-loss stop); the objective plugs in through [`TrainStep`] (one optimizer step,
//! plus an optional epoch end), as burn's learner takes a `TrainStep`/`ValidStep` model. The
//! trainer does not know which task it trains: fine-tuning (`finetune::FinetuneTask`) and
//! pre-finetuning (`pretrain::Pretrainer`) are two implementations.
//!
//! Loop, per optimizer step: [`TrainStep::run_step`]; the step's log line, if any, is appended
//! to the log; if the step ended an epoch, [`TrainStep::end_epoch`] runs (evaluation, early
//! stopping) and a checkpoint is written; otherwise a checkpoint is written every
//! `checkpoint_every` steps and when a stop was requested. A requested stop ends the run with
//! [`Error::Interrupted`] right after its checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::{self, stop_requested, CheckpointPlace};
use crate::error::{Error, Result};
use crate::optim::AdamW;

/// What one optimizer step reports to the trainer.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// The progress bar's message after this step.
    pub message: String,
    /// A line for the JSONL log (written as is).
    pub log: Option<Value>,
    /// The step finished an epoch: [`TrainStep::end_epoch`] runs next.
    pub epoch_end: bool,
}

/// What the end of an epoch reports to the trainer.
#[derive(Debug, Clone, Default)]
pub struct EpochOutput {
    /// A line for the JSONL log.
    pub log: Option<Value>,
    /// Lines printed above the progress bar.
    pub messages: Vec<String>,
}

/// An objective the [`Trainer`] drives: one optimizer step at a time, its checkpoint state
/// typed (`State`, serde), its weights and moments held by its [`AdamW`].
pub trait TrainStep {
    /// Everything a checkpoint needs besides the optimizer's variables and moments and the
    /// extra tensors (positions of the data order and RNGs, histories). Stored in
    /// `state.json`, next to `step`.
    type State: Serialize + DeserializeOwned;

    /// Optimizer steps done.
    fn step(&self) -> u64;
    /// Optimizer steps of the whole run (for the progress bar).
    fn total_steps(&self) -> u64;
    /// Whether the run is over.
    fn done(&self) -> bool;
    /// Runs one optimizer step.
    fn run_step(&mut self) -> Result<StepOutput>;
    /// Ends the epoch the last step finished (evaluation, early stopping). Only called after a
    /// step with [`StepOutput::epoch_end`].
    fn end_epoch(&mut self) -> Result<EpochOutput> {
        Ok(EpochOutput::default())
    }
    /// The optimizer (its variables are the trainable weights).
    fn optimizer(&self) -> &AdamW;
    /// The optimizer, to restore a checkpoint into.
    fn optimizer_mut(&mut self) -> &mut AdamW;
    /// The state to checkpoint, and extra tensors (e.g. the best epoch's weights).
    fn state(&self) -> Result<(Self::State, BTreeMap<String, Tensor>)>;
    /// Restores a checkpoint's state (the optimizer is restored already); `dir` names it in
    /// errors.
    fn restore(
        &mut self,
        step: u64,
        state: Self::State,
        extra: BTreeMap<String, Tensor>,
        dir: &Path,
    ) -> Result<()>;
}

/// `state.json` of a checkpoint: the step and the objective's own state.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<S> {
    step: u64,
    #[serde(flatten)]
    task: S,
}

/// The loss of a step as a number, or the non-finite-loss stop (`what` at `step`).
pub fn finite_loss(loss: &Tensor, what: &str, step: u64) -> Result<f32> {
    let v = loss.to_scalar::<f32>()?;
    if !v.is_finite() {
        return Err(Error::NonFinite {
            what: what.into(),
            step,
        });
    }
    Ok(v)
}

/// The training loop: progress bar, JSONL log, checkpoints, resume, Ctrl-C.
pub struct Trainer {
    progress: Option<indicatif::MultiProgress>,
    bar: indicatif::ProgressBar,
    log: PathBuf,
    checkpoints: CheckpointPlace,
    checkpoint_every: u64,
}

impl Trainer {
    /// A trainer logging to `log`, checkpointing into `checkpoints` every `checkpoint_every`
    /// steps (0: only at epoch ends and on a stop), its bar under `progress` if given.
    pub fn new(
        log: PathBuf,
        checkpoints: CheckpointPlace,
        checkpoint_every: u64,
        progress: Option<&indicatif::MultiProgress>,
    ) -> Self {
        Self {
            progress: progress.cloned(),
            // Drawn from `fit` on (a hidden bar until then).
            bar: indicatif::ProgressBar::hidden(),
            log,
            checkpoints,
            checkpoint_every,
        }
    }

    /// Where the checkpoints go.
    pub fn checkpoints(&self) -> &CheckpointPlace {
        &self.checkpoints
    }

    /// Starts afresh: removes earlier checkpoints and the log.
    pub fn start_fresh(&self) {
        self.checkpoints.remove();
        let _ = std::fs::remove_file(&self.log);
    }

    /// Restores the newest checkpoint into `task` and drops the log lines written after it.
    pub fn resume<T: TrainStep>(&self, task: &mut T) -> Result<()> {
        let step = self.restore_latest(task)?;
        self.truncate_log(step)
    }

    /// Drops the log lines of steps after `step` (written by a killed run after its last
    /// checkpoint), and torn lines.
    pub fn truncate_log(&self, step: u64) -> Result<()> {
        drop_lines_after_step(&self.log, step)
    }

    /// Restores the newest checkpoint into `task`; returns its step.
    pub fn restore_latest<T: TrainStep>(&self, task: &mut T) -> Result<u64> {
        let dir = self.checkpoints.latest().ok_or_else(|| Error::File {
            path: self.checkpoints.path().to_path_buf(),
            reason: "no checkpoint to resume from".into(),
        })?;
        let _span = tracing::debug_span!("resume", dir = %dir.display()).entered();
        let (state, extra) = checkpoint::load(&dir, task.optimizer_mut())?;
        let stored: Stored<T::State> =
            serde_json::from_value(state).map_err(|e| Error::json(&dir.join("state.json"), e))?;
        task.restore(stored.step, stored.task, extra, &dir)?;
        tracing::info!("resumed from {} at step {}", dir.display(), stored.step);
        Ok(stored.step)
    }

    /// Writes a checkpoint of `task` at its current step.
    pub fn save<T: TrainStep>(&self, task: &T) -> Result<()> {
        let _span = tracing::debug_span!("checkpoint", step = task.step()).entered();
        let (state, extra) = task.state()?;
        let stored = Stored {
            step: task.step(),
            task: state,
        };
        let value = serde_json::to_value(&stored).expect("checkpoint state serialises");
        let step = task.step();
        self.checkpoints.save(step, task.optimizer(), &extra, value)
    }

    /// Runs `task` until it is done (or stopped: [`Error::Interrupted`] after a checkpoint).
    pub fn fit<T: TrainStep>(&mut self, task: &mut T) -> Result<()> {
        self.bar = indicatif::ProgressBar::new(task.total_steps());
        if let Some(mp) = &self.progress {
            self.bar = mp.add(self.bar.clone());
        }
        self.bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
        self.bar.set_position(task.step());
        while !task.done() {
            let _span = tracing::debug_span!("step", step = task.step() + 1).entered();
            let out = task.run_step()?;
            if let Some(line) = &out.log {
                append_jsonl(&self.log, line)?;
            }
            self.bar.set_message(out.message);
            self.bar.set_position(task.step());
            if out.epoch_end {
                self.end_epoch(task)?;
            } else if !task.done() {
                let due =
                    self.checkpoint_every > 0 && task.step().is_multiple_of(self.checkpoint_every);
                if due || stop_requested() {
                    self.save(task)?;
                    self.stop_if_requested(task)?;
                }
            }
        }
        self.bar.finish_and_clear();
        Ok(())
    }

    /// An epoch end: evaluation, its log line, a checkpoint, and a requested stop.
    fn end_epoch<T: TrainStep>(&mut self, task: &mut T) -> Result<()> {
        let _span = tracing::debug_span!("epoch_end", step = task.step()).entered();
        let out = task.end_epoch()?;
        if let Some(line) = &out.log {
            append_jsonl(&self.log, line)?;
        }
        for m in out.messages {
            self.bar.println(m);
        }
        self.save(task)?;
        if !task.done() {
            self.stop_if_requested(task)?;
        }
        Ok(())
    }

    fn stop_if_requested<T: TrainStep>(&self, task: &T) -> Result<()> {
        if stop_requested() {
            self.bar.abandon();
            return Err(Error::Interrupted {
                step: task.step(),
                checkpoint: self.checkpoints.path().to_path_buf(),
            });
        }
        Ok(())
    }
}

/// Appends one JSON line to a log file.
pub fn append_jsonl(path: &Path, v: &Value) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// Keeps the lines of a JSONL log whose `step` is at most `step` (others, and torn lines, go).
fn drop_lines_after_step(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(prefine_model::weights::write_atomic(path, kept.as_bytes())?)
}
