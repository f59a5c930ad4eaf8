//! Training checkpoints shared by fine-tuning and pre-finetuning: the trainable weights, the
//! optimizer moments and step counts, extra tensors (e.g. the best epoch's weights) and a JSON
//! state (RNG positions, data-order position, schedules, early stopping).
//!
//! A checkpoint is a directory written completely under a temporary name, synced, then renamed
//! into place, so a kill at any moment leaves either the previous checkpoint or the new one,
//! never half of one. Interrupt handling ([`request_stop`]) lets Ctrl-C end a run at the next
//! optimizer step with a checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use prefine_model::weights::{load_safetensors, save_safetensors, write_atomic};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::optim::AdamW;

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks running training loops to write a checkpoint and stop at the next optimizer step (called
/// from a SIGINT handler).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Withdraws a stop request, so that the next run in this process starts normally (a library
/// caller that handled an interrupt, e.g. the Python package, calls it before each run).
pub fn clear_stop() {
    STOP.store(false, Ordering::SeqCst);
}

fn file_err(path: &Path, reason: String) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason,
    }
}

/// The optimizer's step counts as stored in `state.json` (next to the objective's state).
#[derive(Debug, Default, serde::Deserialize)]
struct OptimizerSteps {
    /// Steps of the optimizer as a whole.
    #[serde(default)]
    optimizer_step: u64,
    /// Steps per parameter slot (slots that were not stepped start at 0).
    #[serde(default)]
    slot_steps: BTreeMap<String, u64>,
}

/// Best-effort fsync of a directory (makes a rename durable).
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes a checkpoint into `dir` atomically, replacing any previous one there: the optimizer's
/// variables and moments, `extra` tensors, and `state` (an object; the optimizer's step counts
/// are added to it).
pub fn save(
    dir: &Path,
    opt: &AdamW,
    extra: &BTreeMap<String, Tensor>,
    mut state: Value,
) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut params = BTreeMap::new();
    let mut moments = BTreeMap::new();
    let mut steps = serde_json::Map::new();
    for (name, var, m, v, n) in opt.state() {
        params.insert(name.to_string(), var.as_tensor().detach());
        moments.insert(
            format!("m.{name}"),
            Tensor::from_slice(m, m.len(), &candle_core::Device::Cpu)?,
        );
        moments.insert(
            format!("v.{name}"),
            Tensor::from_slice(v, v.len(), &candle_core::Device::Cpu)?,
        );
        steps.insert(name.to_string(), json!(n));
    }
    save_safetensors(&tmp.join("params.safetensors"), &params)?;
    save_safetensors(&tmp.join("optimizer.safetensors"), &moments)?;
    if !extra.is_empty() {
        save_safetensors(&tmp.join("extra.safetensors"), extra)?;
    }
    state["optimizer_step"] = json!(opt.steps());
    state["slot_steps"] = Value::Object(steps);
    write_atomic(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(&state)
            .expect("json")
            .as_bytes(),
    )?;
    sync_dir(&tmp);
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent);
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Restores a checkpoint written by [`save`] into `opt` (weights and moments, matched by name)
/// and returns its state and extra tensors.
pub fn load(dir: &Path, opt: &mut AdamW) -> Result<(Value, BTreeMap<String, Tensor>)> {
    let bad = |r: String| file_err(dir, r);
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: Value = serde_json::from_str(&text).map_err(|e| Error::json(&state_path, e))?;
    let steps: OptimizerSteps =
        serde_json::from_value(state.clone()).map_err(|e| Error::json(&state_path, e))?;
    let params = load_safetensors(&dir.join("params.safetensors"))?;
    let moments = load_safetensors(&dir.join("optimizer.safetensors"))?;
    let mut opt_state = HashMap::new();
    for (name, var, _, _, _) in opt.state() {
        let t = params
            .get(name)
            .ok_or_else(|| bad(format!("no weights for {name}")))?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "{name} has shape {:?}, the run expects {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(t)?;
        let moment = |k: &str| -> Result<Vec<f32>> {
            Ok(moments
                .get(&format!("{k}.{name}"))
                .ok_or_else(|| bad(format!("no moments for {name}")))?
                .to_vec1()?)
        };
        let n = steps.slot_steps.get(name).copied().unwrap_or(0);
        opt_state.insert(name.to_string(), (moment("m")?, moment("v")?, n));
    }
    opt.restore_state(steps.optimizer_step, &opt_state)?;
    let extra_path = dir.join("extra.safetensors");
    let extra = if extra_path.exists() {
        load_safetensors(&extra_path)?.into_iter().collect()
    } else {
        BTreeMap::new()
    };
    Ok((state, extra))
}

/// A numbered series of checkpoints `ROOT/step-NNNNNNNN/`, keeping the last `keep`.
#[derive(Debug, Clone)]
pub struct CheckpointSeries {
    /// The directory holding the checkpoints.
    pub root: PathBuf,
    /// How many to keep (at least 1).
    pub keep: usize,
}

impl CheckpointSeries {
    /// The complete checkpoints, oldest first.
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<(u64, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
                let p = e.path();
                p.join("state.json").exists().then_some((step, p))
            })
            .collect();
        v.sort();
        v
    }

    /// The newest complete checkpoint.
    pub fn latest(&self) -> Option<PathBuf> {
        self.list().pop().map(|x| x.1)
    }

    /// Writes the checkpoint of `step` and removes all but the newest `keep`.
    pub fn save(
        &self,
        step: u64,
        opt: &AdamW,
        extra: &BTreeMap<String, Tensor>,
        state: Value,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        save(
            &self.root.join(format!("step-{step:08}")),
            opt,
            extra,
            state,
        )?;
        let all = self.list();
        let n = all.len().saturating_sub(self.keep.max(1));
        for (_, p) in all.into_iter().take(n) {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(())
    }
}

/// Where a run keeps its checkpoints.
#[derive(Debug, Clone)]
pub enum CheckpointPlace {
    /// A numbered series `ROOT/step-NNNNNNNN/` (fine-tuning).
    Series(CheckpointSeries),
    /// One directory, replaced by each checkpoint (pre-finetuning's `OUT/checkpoint`).
    Single(PathBuf),
}

impl CheckpointPlace {
    /// The series root or the single directory (named in messages).
    pub fn path(&self) -> &Path {
        match self {
            Self::Series(s) => &s.root,
            Self::Single(d) => d,
        }
    }

    /// The newest complete checkpoint.
    pub fn latest(&self) -> Option<PathBuf> {
        match self {
            Self::Series(s) => s.latest(),
            Self::Single(d) => d.join("state.json").exists().then(|| d.clone()),
        }
    }

    /// Writes the checkpoint of `step`.
    pub fn save(
        &self,
        step: u64,
        opt: &AdamW,
        extra: &BTreeMap<String, Tensor>,
        state: Value,
    ) -> Result<()> {
        match self {
            Self::Series(s) => s.save(step, opt, extra, state),
            Self::Single(d) => save(d, opt, extra, state),
        }
    }

    /// Removes every checkpoint.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(self.path());
    }
}

/// Serde for an RNG word position (`u128`) stored as a decimal string (JSON numbers are not
/// exact beyond 2^53): `#[serde(with = "crate::checkpoint::rng_pos")]`.
pub mod rng_pos {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the position as a decimal string.
    pub fn serialize<S: Serializer>(pos: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&pos.to_string())
    }

    /// Reads a decimal string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
