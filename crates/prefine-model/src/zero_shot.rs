//! `zero_shot.json`: what zero-shot inference needs from a `prefine pretrain` output, next to
//! its `backbone/` and `adapters/{ner,tc}/`: the NER objective's token–name scorer (logit scale
//! and bias on the cosine, how type names are pooled) and the TC objective's pooling and
//! temperature. Written by pre-finetuning, read by the inference runtime; versioned.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::weights::write_atomic;

/// The file name, at the root of a `prefine pretrain` output.
pub const ZERO_SHOT_FILE: &str = "zero_shot.json";

/// The format version this crate writes and reads.
pub const ZERO_SHOT_VERSION: u32 = 1;

/// The NER scorer: `p(token has type t) = sigmoid(scale * cos(token, name(t)) + bias)`, token
/// states and name embeddings both taken from the backbone with the NER adapter, the name
/// embedding mean-pooled over its subwords and L2-normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NerZeroShot {
    /// The family adapter (PEFT directory, relative to the output root); `None`: the backbone
    /// alone was pre-finetuned (strategies `ner` and `naive`).
    pub adapter: Option<PathBuf>,
    /// Logit scale on the cosine.
    pub scale: f32,
    /// Logit bias.
    pub bias: f32,
    /// Pooling of a type name's subwords (`mean`).
    pub name_pooling: String,
    /// A separately trained name encoder (HF directory relative to the output root), or `None`
    /// when names go through the same encoder and adapter as the text.
    #[serde(default)]
    pub name_encoder: Option<PathBuf>,
}

/// The TC objective: texts mean-pooled and L2-normalised through the TC adapter, compared by
/// cosine; `temperature` is the InfoNCE temperature (softmax over labels uses `cos / T`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcZeroShot {
    /// The family adapter (PEFT directory relative to the output root), or `None`.
    pub adapter: Option<PathBuf>,
    /// Pooling of a text's states (`mean`).
    pub pooling: String,
    /// InfoNCE temperature.
    pub temperature: f32,
}

/// The contents of `zero_shot.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroShotSpec {
    /// Format version ([`ZERO_SHOT_VERSION`]).
    pub version: u32,
    /// The NER scorer, when the output was pre-finetuned for NER.
    pub ner: Option<NerZeroShot>,
    /// The TC setting, when the output was pre-finetuned for TC.
    pub tc: Option<TcZeroShot>,
}

impl ZeroShotSpec {
    /// Writes `dir/zero_shot.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialisable");
        write_atomic(&dir.join(ZERO_SHOT_FILE), text.as_bytes())
    }

    /// Reads `dir/zero_shot.json`; a missing file (an output of an older `prefine pretrain`)
    /// or another version is an error naming the file.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(ZERO_SHOT_FILE);
        if !path.is_file() {
            return Err(Error::Parse {
                path,
                reason: "missing: this directory is not a `prefine pretrain` output, or one \
                         written before zero-shot support (pre-finetune again to get the NER \
                         scorer and TC temperature)"
                    .into(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let spec: Self = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        if spec.version != ZERO_SHOT_VERSION {
            return Err(Error::Parse {
                path,
                reason: format!(
                    "version {} is not supported (this build reads version {ZERO_SHOT_VERSION})",
                    spec.version
                ),
            });
        }
        for (field, pooling) in [
            (
                "ner.name_pooling",
                spec.ner.as_ref().map(|n| &n.name_pooling),
            ),
            ("tc.pooling", spec.tc.as_ref().map(|t| &t.pooling)),
        ] {
            if let Some(p) = pooling.filter(|p| p.as_str() != "mean") {
                return Err(Error::Parse {
                    path,
                    reason: format!("{field}: {p:?} is not supported (only \"mean\")"),
                });
            }
        }
        if let Some(t) = &spec.tc {
            if !(t.temperature.is_finite() && t.temperature > 0.0) {
                return Err(Error::Parse {
                    path,
                    reason: format!("tc.temperature: {} is not positive", t.temperature),
                });
            }
        }
        if let Some(n) = &spec.ner {
            if !(n.scale.is_finite() && n.bias.is_finite()) {
                return Err(Error::Parse {
                    path,
                    reason: format!("ner.scale/bias: {} / {} not finite", n.scale, n.bias),
                });
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ZeroShotSpec {
        ZeroShotSpec {
            version: ZERO_SHOT_VERSION,
            ner: Some(NerZeroShot {
                adapter: Some("adapters/ner".into()),
                scale: 12.5,
                bias: -3.0,
                name_pooling: "mean".into(),
                name_encoder: None,
            }),
            tc: Some(TcZeroShot {
                adapter: Some("adapters/tc".into()),
                pooling: "mean".into(),
                temperature: 0.05,
            }),
        }
    }

    #[test]
    fn round_trip_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ZeroShotSpec::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("zero_shot.json") && err.contains("missing"),
            "{err}"
        );
        spec().save(dir.path()).unwrap();
        assert_eq!(ZeroShotSpec::load(dir.path()).unwrap(), spec());
        let mut v2 = spec();
        v2.version = 2;
        v2.save(dir.path()).unwrap();
        let err = ZeroShotSpec::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        let mut bad = spec();
        bad.tc.as_mut().unwrap().temperature = 0.0;
        bad.save(dir.path()).unwrap();
        let err = ZeroShotSpec::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tc.temperature"), "{err}");
    }
}
