//! `prefine.Backbone`: one backbone loaded once, adapters registered by name, predictions in the
//! transformers pipelines' shapes, embeddings as numpy arrays, zero-shot by type or label names.
//! Every computation runs with the GIL released (`Python::detach`), so Python threads predict
//! in parallel.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prefine_runtime::zero_shot::parse_name_list;
use prefine_runtime::{
    is_bundle, load_bundle, AdapterFiles, AdapterInfo, Aggregation, Engine, Precision,
    PredictedEntity, Prediction, TextPrediction, ZeroShot, ZeroShotConfig,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyList, PyString};

use crate::errors::{runtime_error, AdapterError, Doing, InputError, ModelError};

/// Texts as given: one string (results unwrapped) or a sequence of strings.
struct Texts {
    texts: Vec<String>,
    single: bool,
}

impl Texts {
    fn extract(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(s) = obj.cast::<PyString>() {
            return Ok(Self {
                texts: vec![s.to_cow()?.into_owned()],
                single: true,
            });
        }
        let texts: Vec<String> = obj
            .extract()
            .map_err(|_| PyTypeError::new_err("texts: a str or a sequence of str"))?;
        Ok(Self {
            texts,
            single: false,
        })
    }

    /// `items` as one object (a single text) or a list.
    fn wrap<'py>(&self, py: Python<'py>, items: Vec<Bound<'py, PyAny>>) -> PyResult<Py<PyAny>> {
        if self.single {
            if let Some(first) = items.into_iter().next() {
                return Ok(first.unbind());
            }
            return Ok(py.None());
        }
        Ok(PyList::new(py, items)?.into_any().unbind())
    }
}

/// A name list: a sequence of str, or one comma-separated str.
fn name_list(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(parse_name_list(&s.to_cow()?));
    }
    obj.extract::<Vec<String>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what}: a sequence of str or one comma-separated str"
        ))
    })
}

fn parse_precision(s: &str) -> PyResult<Precision> {
    s.parse::<Precision>()
        .map_err(|e| crate::errors::ConfigError::new_err(format!("precision: {e}")))
}

/// A loaded backbone (a Hugging Face model directory, a `prefine pretrain` output or a
/// `prefine export` bundle) with named adapters.
#[pyclass(frozen, module = "prefine")]
pub struct Backbone {
    engine: Engine,
    path: PathBuf,
    /// Where zero-shot inference loads from: a `prefine pretrain` output or a model directory.
    zero_shot_dir: Option<PathBuf>,
    zero_shot: Mutex<Option<Arc<ZeroShot>>>,
}

impl Backbone {
    /// The engine (for the Rust-side benchmark of the call overhead).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn zero_shot(&self, py: Python<'_>) -> PyResult<Arc<ZeroShot>> {
        let Some(dir) = &self.zero_shot_dir else {
            return Err(ModelError::new_err(format!(
                "{}: zero-shot needs a `prefine pretrain` output or a model directory, not a bundle",
                self.path.display()
            )));
        };
        let mut slot = self.zero_shot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(zs) = slot.as_ref() {
            return Ok(zs.clone());
        }
        let precision = self.engine.precision();
        let zs = py
            .detach(|| {
                let mut zs = ZeroShot::load(dir, ZeroShotConfig::default())?;
                zs.prepare_inference(precision)?;
                Ok::<_, prefine_runtime::Error>(zs)
            })
            .map_err(|e| runtime_error(py, &e, Doing::LoadBackbone))?;
        let zs = Arc::new(zs);
        *slot = Some(zs.clone());
        Ok(zs)
    }

    /// The adapter a request means: the one named, or the only one registered.
    fn resolve_adapter(&self, adapter: Option<&str>) -> PyResult<String> {
        if let Some(a) = adapter {
            return Ok(a.to_string());
        }
        let names = self.engine.adapter_names();
        match names.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(InputError::new_err(
                "no adapter loaded: load_adapter(name, path) first, or pass entity_types= / labels= for zero-shot",
            )),
            _ => Err(InputError::new_err(format!(
                "several adapters are loaded ({}): name one with adapter=",
                names.join(", ")
            ))),
        }
    }
}

/// A NER entity as the transformers token-classification pipeline returns it.
fn entity_dict<'py>(
    py: Python<'py>,
    e: &PredictedEntity,
    grouped: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    d.set_item(
        if grouped { "entity_group" } else { "entity" },
        &e.entity_type,
    )?;
    d.set_item("score", e.score)?;
    d.set_item("word", &e.text)?;
    d.set_item("start", e.start)?;
    d.set_item("end", e.end)?;
    Ok(d.into_any())
}

/// A TC result as the transformers text-classification pipeline returns it: `{"label",
/// "score"}` for `top_k == Some(1)`, else a list of them, best first.
fn tc_result<'py>(
    py: Python<'py>,
    scores: &std::collections::BTreeMap<String, f32>,
    top_k: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut ranked: Vec<(&String, &f32)> = scores.iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(a.1));
    let one = |(label, score): (&String, &f32)| -> PyResult<Bound<'py, PyAny>> {
        let d = PyDict::new(py);
        d.set_item("label", label)?;
        d.set_item("score", *score)?;
        Ok(d.into_any())
    };
    match top_k {
        Some(1) => one(ranked[0]),
        k => {
            let n = k.unwrap_or(ranked.len()).min(ranked.len());
            let items = ranked
                .into_iter()
                .take(n)
                .map(one)
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyList::new(py, items)?.into_any())
        }
    }
}

fn prediction_obj<'py>(
    py: Python<'py>,
    p: &Prediction,
    grouped: bool,
    top_k: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    match p {
        Prediction::Ner { entities, .. } => {
            let items = entities
                .iter()
                .map(|e| entity_dict(py, e, grouped))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyList::new(py, items)?.into_any())
        }
        Prediction::Tc { scores, .. } => tc_result(py, scores, top_k),
    }
}

/// The serde name of a unit enum value (`TaskKind::Ner` → `"ner"`).
fn serde_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn info_dict<'py>(py: Python<'py>, a: &AdapterInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &a.name)?;
    d.set_item("task", serde_name(&a.task))?;
    d.set_item("mode", serde_name(&a.mode))?;
    d.set_item("has_lora", a.has_lora)?;
    d.set_item("labels", &a.labels)?;
    d.set_item("max_length", a.max_length)?;
    d.set_item("stride", a.stride)?;
    d.set_item("path", a.path.to_string_lossy().into_owned())?;
    d.set_item("lora_parameters", a.lora_parameters)?;
    Ok(d)
}

#[pymethods]
impl Backbone {
    /// Loads a backbone: a Hugging Face model directory, a `prefine pretrain` output (its
    /// `backbone/`, zero-shot from the output) or a `prefine export` bundle (its adapters
    /// registered). `precision`: "f32", "bf16" or "int8" (default: f32, or a bundle's own).
    #[staticmethod]
    #[pyo3(signature = (path, precision=None, *, max_batch_rows=None))]
    fn from_pretrained(
        py: Python<'_>,
        path: PathBuf,
        precision: Option<&str>,
        max_batch_rows: Option<usize>,
    ) -> PyResult<Self> {
        let precision = precision.map(parse_precision).transpose()?;
        let bundle = is_bundle(&path);
        let pretrain_output = path.join("zero_shot.json").is_file();
        let zero_shot_dir = (!bundle).then(|| path.clone());
        let engine = py
            .detach(|| {
                let engine = if bundle {
                    load_bundle(&path)?
                } else if pretrain_output {
                    Engine::load(path.join("backbone"))?
                } else {
                    Engine::load(&path)?
                };
                let engine = match max_batch_rows {
                    Some(n) => engine.with_max_batch_rows(n),
                    None => engine,
                };
                engine.prepare_inference(precision.unwrap_or(engine.precision()))?;
                Ok(engine)
            })
            .map_err(|e: prefine_runtime::Error| runtime_error(py, &e, Doing::LoadBackbone))?;
        Ok(Self {
            engine,
            path,
            zero_shot_dir,
            zero_shot: Mutex::new(None),
        })
    }

    /// Registers an adapter under `name`: a `prefine finetune` output (head or lora mode), or a
    /// PEFT LoRA adapter directory (TOKEN_CLS / SEQ_CLS, head in modules_to_save) with a
    /// labels.json or `labels=[...]` (class names in class-id order). Returns its description.
    #[pyo3(signature = (name, path, *, labels=None))]
    fn load_adapter<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        path: PathBuf,
        labels: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let info = py
            .detach(|| {
                prefine_runtime::engine::validate_name(name)?;
                let mut files = AdapterFiles::read_dir(&path)?;
                if let Some(labels) = &labels {
                    let json = serde_json::to_vec(labels)
                        .map_err(|e| prefine_runtime::Error::file(path.join("labels.json"), e))?;
                    files.files.insert("labels.json".into(), json);
                }
                self.engine.register_files(name, &files)
            })
            .map_err(|e| runtime_error(py, &e, Doing::LoadAdapter))?;
        info_dict(py, &info)
    }

    /// Unregisters an adapter (requests already running with it finish normally).
    fn unload_adapter(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.engine
            .unregister(name)
            .map_err(|e| runtime_error(py, &e, Doing::LoadAdapter))
    }

    /// The names of the registered adapters, sorted.
    #[getter]
    fn adapters(&self) -> Vec<String> {
        self.engine.adapter_names()
    }

    /// One adapter's description (task, mode, labels, ...).
    fn adapter_info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        match self.engine.adapter(name) {
            Some(info) => info_dict(py, &info),
            None => Err(AdapterError::new_err(format!("unknown adapter {name:?}"))),
        }
    }

    /// The number format of the backbone's linear weights: "f32", "bf16" or "int8".
    #[getter]
    fn precision(&self) -> String {
        self.engine.precision().to_string()
    }

    /// The width of `embed`'s vectors.
    #[getter]
    fn embedding_dim(&self) -> usize {
        self.engine.embedding_dim()
    }

    /// The path it was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Backbone({:?}, precision={:?}, adapters={:?})",
            self.path.display().to_string(),
            self.engine.precision().to_string(),
            self.engine.adapter_names()
        )
    }

    /// Predictions for `texts` (a str gives one result, a list a list of results).
    ///
    /// With an adapter: NER gives a list of entities per text, `{"entity_group", "score",
    /// "word", "start", "end"}` as the transformers token-classification pipeline (`entity`
    /// instead of `entity_group` with `aggregation_strategy="none"`); TC gives `{"label",
    /// "score"}`, or with `top_k=None` (or k) a list of them, best first. Zero-shot, without an
    /// adapter: `entity_types=[...]` (NER; `threshold` optional) or `labels=[...]` (TC;
    /// `template` optional, "This text is about {}.").
    #[pyo3(signature = (texts, adapter=None, *, aggregation_strategy="first", top_k=Some(1), entity_types=None, labels=None, template=None, threshold=None))]
    #[allow(clippy::too_many_arguments)]
    fn predict(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        adapter: Option<&str>,
        aggregation_strategy: &str,
        top_k: Option<usize>,
        entity_types: Option<Bound<'_, PyAny>>,
        labels: Option<Bound<'_, PyAny>>,
        template: Option<&str>,
        threshold: Option<f32>,
    ) -> PyResult<Py<PyAny>> {
        let input = Texts::extract(texts)?;
        let aggregation: Aggregation = aggregation_strategy
            .parse()
            .map_err(|e: String| PyValueError::new_err(format!("aggregation_strategy: {e}")))?;
        if top_k == Some(0) {
            return Err(PyValueError::new_err(
                "top_k: a positive int or None (all labels)",
            ));
        }
        let preds: Vec<Prediction> = match (&entity_types, &labels) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err(
                    "give entity_types= or labels=, not both",
                ))
            }
            (Some(types), None) => {
                let types = name_list(types, "entity_types")?;
                let zs = self.zero_shot(py)?;
                py.detach(|| zs.predict_ner(&input.texts, &types, threshold))
                    .map_err(|e| runtime_error(py, &e, Doing::Infer))?
            }
            (None, Some(names)) => {
                let names = name_list(names, "labels")?;
                let zs = self.zero_shot(py)?;
                py.detach(|| zs.predict_tc(&input.texts, &names, template))
                    .map_err(|e| runtime_error(py, &e, Doing::Infer))?
            }
            (None, None) => {
                let name = self.resolve_adapter(adapter)?;
                py.detach(|| self.engine.predict_with(&name, &input.texts, aggregation))
                    .map_err(|e| runtime_error(py, &e, Doing::Infer))?
                    .into_iter()
                    .map(|p: TextPrediction| p.prediction)
                    .collect()
            }
        };
        let grouped = aggregation != Aggregation::None || entity_types.is_some();
        let items = preds
            .iter()
            .map(|p| prediction_obj(py, p, grouped, top_k))
            .collect::<PyResult<Vec<_>>>()?;
        input.wrap(py, items)
    }

    /// Sentence embeddings (mean pooling over the attention mask, L2-normalised, as
    /// sentence-transformers), with `adapter`'s LoRA group active when one is named: a float32
    /// numpy array `[len(texts), embedding_dim]` (`[embedding_dim]` for one str).
    #[pyo3(signature = (texts, adapter=None))]
    fn embed(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        adapter: Option<&str>,
    ) -> PyResult<Py<PyAny>> {
        let input = Texts::extract(texts)?;
        let vecs = py
            .detach(|| self.engine.embed(&input.texts, adapter))
            .map_err(|e| runtime_error(py, &e, Doing::Infer))?;
        let dim = self.engine.embedding_dim();
        let arr = f32_array(py, vecs.iter().flatten().copied(), &[vecs.len(), dim])?;
        if input.single {
            return Ok(arr.get_item(0)?.unbind());
        }
        Ok(arr.unbind())
    }

    /// The head's raw outputs before the softmax, as a transformers `*ForTokenClassification`
    /// / `*ForSequenceClassification` model gives them: TC a float32 array `[len(texts),
    /// classes]`; NER a list of `[subwords, classes]` arrays (special tokens included, no
    /// windows). For one str, that text's array.
    fn logits(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        adapter: &str,
    ) -> PyResult<Py<PyAny>> {
        let input = Texts::extract(texts)?;
        let rows = py
            .detach(|| self.engine.logits(adapter, &input.texts))
            .map_err(|e| runtime_error(py, &e, Doing::Infer))?;
        let classes = rows.first().and_then(|r| r.first()).map_or(0, Vec::len);
        let tc = self
            .engine
            .adapter(adapter)
            .is_some_and(|a| a.task == prefine_runtime::TaskKind::Tc);
        if tc {
            let arr = f32_array(
                py,
                rows.iter().flatten().flatten().copied(),
                &[rows.len(), classes],
            )?;
            if input.single {
                return Ok(arr.get_item(0)?.unbind());
            }
            return Ok(arr.unbind());
        }
        let arrays = rows
            .iter()
            .map(|r| f32_array(py, r.iter().flatten().copied(), &[r.len(), classes]))
            .collect::<PyResult<Vec<_>>>()?;
        input.wrap(py, arrays)
    }
}

/// A float32 numpy array of `shape` from `values` (row-major).
fn f32_array<'py>(
    py: Python<'py>,
    values: impl Iterator<Item = f32>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let bytes: Vec<u8> = values.flat_map(f32::to_ne_bytes).collect();
    let buf = PyByteArray::new(py, &bytes);
    let np = py.import("numpy")?;
    let arr = np.getattr("frombuffer")?.call1((buf, "float32"))?;
    arr.call_method1("reshape", (shape.to_vec(),))
}
