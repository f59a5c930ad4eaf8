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
