//! One module per subcommand.

pub mod bench;
pub mod checks;
pub mod embed;
pub mod evaluate;
pub mod export;
pub mod finetune;
pub mod predict;
pub mod pretrain;
pub mod score;
pub mod serve;
pub mod suite;

use std::path::PathBuf;

pub use checks::check_output_dir;

/// The default model directory: `$PREFINE_MODEL`, else `models/all-MiniLM-L6-v2`.
pub fn default_model_dir() -> PathBuf {
    std::env::var_os("PREFINE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models/all-MiniLM-L6-v2"))
}

/// Parses a flag value by its serde name (`--task ner`, `--mode lora`, `--strategy tpl`): the
/// same names, and the same parser, as the config files.
pub fn serde_value<T: serde::de::DeserializeOwned>(s: &str) -> std::result::Result<T, String> {
    use serde::de::value::{Error, StrDeserializer};
    T::deserialize(StrDeserializer::<Error>::new(s)).map_err(|e| e.to_string())
}

/// Parses `--precision` of the training commands (`f32` or `bf16`; the one `Precision` of
/// every command, int8 refused here as the configs refuse it).
pub fn parse_training_precision(s: &str) -> std::result::Result<prefine_model::Precision, String> {
    match prefine_model::Precision::parse(s) {
        Some(p) if p.trainable() => Ok(p),
        Some(p) => Err(format!(
            "{p} is inference-only; training runs in f32 or bf16"
        )),
        None => Err(format!("{s:?}: expected f32 or bf16")),
    }
}
