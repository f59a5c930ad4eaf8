//! Training settings from Python keyword arguments, read by the same serde derive and validation
//! as the TOML config files: the arguments become a TOML table (over an optional config file's)
//! which is deserialised into `FinetuneConfig` / `PretrainConfig`; errors name the argument, or
//! the config file's line.

use std::path::Path;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::de::DeserializeOwned;

use crate::errors::{config_error, FileError};

/// A Python value as a TOML value; `None` leaves the key unset (its default applies).
fn to_toml(key: &str, v: &Bound<'_, PyAny>) -> PyResult<Option<toml::Value>> {
    if v.is_none() {
        return Ok(None);
    }
    // bool before int: bool is a subclass of int.
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(Some(toml::Value::Boolean(b.is_true())));
    }
    if v.is_instance_of::<PyInt>() {
        let n: i64 = v.extract()?;
        return Ok(Some(toml::Value::Integer(n)));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(Some(toml::Value::Float(v.extract()?)));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Some(toml::Value::String(s.to_cow()?.into_owned())));
    }
    if v.hasattr("__fspath__")? {
        let p: std::path::PathBuf = v.extract()?;
        return Ok(Some(toml::Value::String(p.to_string_lossy().into_owned())));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in v.try_iter()?.enumerate() {
            let k = format!("{key}[{i}]");
            match to_toml(&k, &item?)? {
                Some(t) => items.push(t),
                None => return Err(PyTypeError::new_err(format!("{k}: None in a list"))),
            }
        }
        return Ok(Some(toml::Value::Array(items)));
    }
    if let Ok(d) = v.cast::<PyDict>() {
        return Ok(Some(toml::Value::Table(table(d, &format!("{key}."))?)));
    }
    Err(PyTypeError::new_err(format!(
        "{key}: unsupported type {} (bool, int, float, str, path, list or dict)",
        v.get_type().name()?
    )))
}

/// Keyword arguments (or a nested dict, keys under `prefix`) as a TOML table.
pub fn table(d: &Bound<'_, PyDict>, prefix: &str) -> PyResult<toml::Table> {
    let mut t = toml::Table::new();
    for (k, v) in d.iter() {
        let k: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("{prefix}: keys must be str")))?;
        if let Some(v) = to_toml(&format!("{prefix}{k}"), &v)? {
            t.insert(k, v);
        }
    }
    Ok(t)
}

/// `over`'s keys replace `base`'s; tables are merged key by key.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The key set on each line of `text` (TOML as `toml::to_string` writes it: `key = value`
/// lines, `[table]` headers).
fn keys_by_line(text: &str) -> Vec<String> {
    let mut section = String::new();
    text.lines()
        .map(|line| {
            let l = line.trim();
            if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                section = format!("{}.", h.trim());
                return h.trim().to_string();
            }
            let key = l.split('=').next().unwrap_or("").trim().trim_matches('"');
            format!("{section}{key}")
        })
        .collect()
}

/// Where a setting comes from: arguments of a Python call, optionally over a TOML file.
pub struct Settings<'a> {
    /// The function, for messages (`finetune()`).
    pub function: &'a str,
    /// A config file (`config=`).
    pub file: Option<&'a Path>,
    /// Keys given as named arguments (`task=`, `mode=`, `strategy=`).
    pub named: Vec<(&'a str, Option<String>)>,
    /// Keys that must be set somewhere, with a hint.
    pub required: Vec<(&'a str, &'a str)>,
}

impl Settings<'_> {
    /// Reads the file (errors name its line), sets the named arguments and `kwargs` over it,
    /// and deserialises the result (errors name the argument). Not validated yet.
    pub fn resolve<T: DeserializeOwned>(
        &self,
        py: Python<'_>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<T> {
        let mut base = toml::Table::new();
        if let Some(file) = self.file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| FileError::new_err(format!("config {}: {e}", file.display())))?;
            // The file on its own first, so that its errors name its lines.
            let set: Vec<(&str, String)> = self
                .named
                .iter()
                .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
                .collect();
            prefine_train::toml_config::parse_toml_with::<T>(&text, file, &set, &self.required)
                .map_err(|(field, reason)| {
                    config_error(
                        py,
                        &field,
                        format!("invalid configuration: {field}: {reason}"),
                    )
                })?;
            base = text
                .parse::<toml::Table>()
                .map_err(|e| config_error(py, "config", format!("{}: {e}", file.display())))?;
        }
        for (k, v) in &self.named {
            if let Some(v) = v {
                base.insert(k.to_string(), toml::Value::String(v.clone()));
            }
        }
        if let Some(kw) = kwargs {
            merge(&mut base, table(kw, "")?);
        }
        for (k, hint) in &self.required {
            if !base.contains_key(*k) {
                return Err(config_error(
                    py,
                    k,
                    format!("invalid configuration: {k}: required: {hint}"),
                ));
            }
        }
        let text = toml::to_string(&base)
            .map_err(|e| config_error(py, "", format!("{}: {e}", self.function)))?;
        toml::from_str::<T>(&text).map_err(|e| {
            let key = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count())
                .and_then(|line| keys_by_line(&text).get(line).cloned())
                .unwrap_or_default();
            let origin = match self.file {
                Some(f) => format!(" (over {})", f.display()),
                None => String::new(),
            };
            config_error(
                py,
                &key,
                format!(
                    "invalid configuration: {}({key}=...){origin}: {}",
                    self.function.trim_end_matches("()"),
                    e.message()
                ),
            )
        })
    }
}
