//! Reading TOML configs with errors that name the file and line.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Deserialises `text`; an error is `(field, reason)` where `field` is `path` plus the line of
/// the offending key or value (unknown keys, wrong types, missing fields).
pub fn parse_toml<T: DeserializeOwned>(
    text: &str,
    path: &Path,
) -> std::result::Result<T, (String, String)> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .map_or(String::new(), |l| format!(" line {l}"));
        (format!("{}{line}", path.display()), e.message().to_string())
    })
}

/// [`parse_toml`] with typed overrides: each `(key, value)` of `set` (a top-level key and the
/// serde name of an enum value, e.g. `("task", "ner")` from `--task ner`) replaces or adds to the
/// file's key before deserialising, so required keys may come from command-line flags while
/// errors in the file keep their lines. A key of `required` still missing afterwards is an
/// error naming the key, with its hint.
pub fn parse_toml_with<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    set: &[(&str, String)],
    required: &[(&str, &str)],
) -> std::result::Result<T, (String, String)> {
    use std::borrow::Cow;
    use toml::de::{DeTable, DeValue};
    use toml::Spanned;
    let locate = |e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .map_or(String::new(), |l| format!(" line {l}"));
        (format!("{}{line}", path.display()), e.message().to_string())
    };
    let mut table = DeTable::parse(text).map_err(locate)?;
    for (key, value) in set {
        table.get_mut().insert(
            Spanned::new(0..0, Cow::Owned(key.to_string())),
            Spanned::new(0..0, DeValue::String(Cow::Owned(value.clone()))),
        );
    }
    for (key, hint) in required {
        if !table.get_ref().keys().any(|k| k.get_ref() == key) {
            return Err((key.to_string(), format!("required: {hint}")));
        }
    }
    T::deserialize(toml::de::Deserializer::from(table)).map_err(locate)
}

/// The serde name of a unit enum value (`TaskKind::Ner` → `ner`), for [`parse_toml_with`].
pub fn serde_name<T: serde::Serialize>(v: &T) -> String {
    match toml::Value::try_from(v) {
        Ok(toml::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Refuses a precision training cannot run at (int8 is inference-only), naming the field
/// `precision`.
pub fn check_training_precision(p: prefine_model::Precision) -> crate::error::Result<()> {
    if p.trainable() {
        return Ok(());
    }
    Err(crate::error::Error::Config {
        field: "precision".into(),
        reason: format!("{p} is inference-only; training runs in f32 or bf16"),
    })
}
