//! `prefine.finetune` and `prefine.pretrain`: the training crate's runs with settings from
//! keyword arguments (the TOML keys), a progress bar on stderr (a terminal only), and Ctrl-C
//! honoured: the run writes a checkpoint at the next optimizer step and `KeyboardInterrupt` is
//! raised (continue with `resume=True`).
//!
//! The run goes on a worker thread (on the rayon pool, as the CLI runs its commands) while the
//! calling thread waits with the GIL released and checks for signals every 100 ms.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::Duration;

use prefine_train::finetune::config::FinetuneConfig;
use prefine_train::finetune::{run_finetune_with, Mode, RunHooks, TaskKind};
use prefine_train::pretrain::{run_pretrain, PretrainConfig, Start, Strategy};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::config::Settings;
use crate::data::training_data;
use crate::errors::{config_error, row_error, train_error, PrefineError};

/// The default backbone: `$PREFINE_MODEL` or `models/all-MiniLM-L6-v2` (as the CLI).
fn default_model() -> PathBuf {
    std::env::var_os("PREFINE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models/all-MiniLM-L6-v2"))
}

/// A unit enum value from its serde name (`"ner"` → `TaskKind::Ner`), or a ConfigError.
fn enum_value<T: serde::de::DeserializeOwned>(py: Python<'_>, key: &str, s: &str) -> PyResult<T> {
    use serde::de::value::{Error, StrDeserializer};
    T::deserialize(StrDeserializer::<Error>::new(s))
        .map_err(|e| config_error(py, key, format!("invalid configuration: {key}: {e}")))
}

/// Runs `work` on a rayon worker while this thread waits with the GIL released, checking for
/// signals: on `KeyboardInterrupt` the training loop is asked to stop (it checkpoints and
/// returns `Interrupted`); another exception from a signal handler is raised once the run
/// has stopped.
fn run_interruptible<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> prefine_train::Result<T> + Send,
) -> PyResult<prefine_train::Result<T>> {
    prefine_train::checkpoint::clear_stop();
    let (tx, rx) = channel();
    // `detach` needs a `Send` closure: the receiver is shared behind a mutex.
    let rx = std::sync::Mutex::new(rx);
    let mut pending: Option<PyErr> = None;
    let result = std::thread::scope(|s| {
        s.spawn(move || {
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rayon::scope(|_| work())));
            let _ = tx.send(r);
        });
        loop {
            let waited = py.detach(|| {
                rx.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .recv_timeout(Duration::from_millis(100))
            });
            match waited {
                Ok(r) => return Ok(r),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        prefine_train::checkpoint::request_stop();
                        if !e.is_instance_of::<PyKeyboardInterrupt>(py) && pending.is_none() {
                            pending = Some(e);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(PrefineError::new_err(
                        "the training thread ended without a result",
                    ))
                }
            }
        }
    });
    prefine_train::checkpoint::clear_stop();
    if let Some(e) = pending {
        return Err(e);
    }
    match result? {
        Ok(r) => Ok(r),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(PrefineError::new_err(format!("internal error: {msg}")))
        }
    }
}

/// A JSON value as Python objects.
fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => pyo3::types::PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(f)) => f.into_pyobject(py)?.into_any(),
            _ => py.None().into_bound(py),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(a) => PyList::new(
            py,
            a.iter()
                .map(|x| json_to_py(py, x))
                .collect::<PyResult<Vec<_>>>()?,
        )?
        .into_any(),
        Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

/// Fine-tunes an application (the settings of `prefine finetune`) and returns its metrics:
/// `{"dev": ..., "test": ..., "best_epoch", "train_seconds", "wall_seconds"}`.
#[pyfunction]
#[pyo3(signature = (data, out, *, task=None, mode=None, model=None, config=None, label_names=None, resume=false, **kwargs))]
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    out: PathBuf,
    task: Option<String>,
    mode: Option<String>,
    model: Option<PathBuf>,
    config: Option<PathBuf>,
    label_names: Option<Vec<String>>,
    resume: bool,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyAny>> {
    if let Some(t) = &task {
        enum_value::<TaskKind>(py, "task", t)?;
    }
    if let Some(m) = &mode {
        enum_value::<Mode>(py, "mode", m)?;
    }
    let settings = Settings {
        function: "finetune()",
        file: config.as_deref(),
        named: vec![("task", task), ("mode", mode)],
        required: vec![
            (
                "task",
                "task=\"ner\" or \"tc\" (or `task = ...` in the config file)",
            ),
            (
                "mode",
                "mode=\"head\", \"lora\" or \"full\" (or `mode = ...` in the config file)",
            ),
        ],
    };
    let cfg: FinetuneConfig = settings.resolve(py, kwargs)?;
    cfg.validate().map_err(|e| train_error(py, &e))?;
    let data = training_data(py, data, cfg.task, label_names.as_deref())?;
    let model = model.unwrap_or_else(default_model);
    let hooks = RunHooks {
        resume,
        ..Default::default()
    };
    let dir = data.dir().to_path_buf();
    let report = run_interruptible(py, || run_finetune_with(&cfg, &model, &dir, &out, hooks))?
        .map_err(|e| data.error(py, &e))?;
    drop(data);
    Ok(json_to_py(py, &report.metrics)?.unbind())
}

/// Pre-finetunes the shared backbone (the settings of `prefine pretrain`) into `out` and returns
/// `{"steps", "seconds", "last_loss", "mean_conflict", "out"}`.
#[pyfunction]
#[pyo3(signature = (out, *, strategy=None, model=None, data=None, config=None, resume=false, **kwargs))]
#[allow(clippy::too_many_arguments)]
pub fn pretrain(
    py: Python<'_>,
    out: PathBuf,
    strategy: Option<String>,
    model: Option<PathBuf>,
    data: Option<PathBuf>,
    config: Option<PathBuf>,
    resume: bool,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyAny>> {
    if let Some(s) = &strategy {
        enum_value::<Strategy>(py, "strategy", s)?;
    }
    let settings = Settings {
        function: "pretrain()",
        file: config.as_deref(),
        named: vec![("strategy", strategy)],
        required: vec![(
            "strategy",
            "strategy=\"ner\", \"tc\", \"naive\" or \"tpl\" (or `strategy = ...` in the config file)",
        )],
    };
    let cfg: PretrainConfig = settings.resolve(py, kwargs)?;
    cfg.validate().map_err(|e| train_error(py, &e))?;
    let root = prefine_data::DataRoot::resolve(data.as_deref())
        .map_err(|e| row_error(py, "", None, format!("data: {e}")))?;
    let model = model.unwrap_or_else(default_model);
    check_dir(py, &out)?;
    let start = if resume { Start::Resume } else { Start::Fresh };
    let root_path = root.path().to_path_buf();
    let report = run_interruptible(py, || run_pretrain(cfg, &model, &root_path, &out, start))?
        .map_err(|e| train_error(py, &e))?;
    let v = serde_json::json!({"steps": report.steps, "seconds": report.seconds,
        "last_loss": report.last_loss, "mean_conflict": report.mean_conflict,
        "out": out.to_string_lossy()});
    Ok(json_to_py(py, &v)?.unbind())
}

/// Creates the output directory and checks it is writable before any work.
fn check_dir(_py: Python<'_>, out: &Path) -> PyResult<()> {
    std::fs::create_dir_all(out)
        .and_then(|()| {
            let probe = out.join(format!(".prefine-write-test-{}", std::process::id()));
            std::fs::write(&probe, b"")?;
            std::fs::remove_file(&probe)
        })
        .map_err(|e| {
            crate::errors::FileError::new_err(format!("output directory {}: {e}", out.display()))
        })
}
