//! [`BackboneFiles`]: a backbone's three files held in memory, for hosts that have no file
//! system path to hand over (an app's bundled assets, a `fetch` in the browser, a buffer across
//! the C ABI).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `config.json`, `tokenizer.json` and `model.safetensors` (f32, or int8/bf16 as
/// `prefine export --quantize` writes it) as bytes.
#[derive(Debug, Clone, Default)]
pub struct BackboneFiles {
    /// Names the backbone in error messages (a directory or a label).
    pub origin: PathBuf,
    /// `config.json`.
    pub config: Vec<u8>,
    /// `tokenizer.json`.
    pub tokenizer: Vec<u8>,
    /// `model.safetensors`.
    pub weights: Vec<u8>,
}

impl BackboneFiles {
    /// Reads the three files of a model directory (or of a bundle's `backbone/`).
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| Error::io(&p, e))
        };
        Ok(Self {
            origin: dir.to_path_buf(),
            config: read("config.json")?,
            tokenizer: read("tokenizer.json")?,
            weights: read("model.safetensors")?,
        })
    }
}
