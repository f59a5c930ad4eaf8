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
