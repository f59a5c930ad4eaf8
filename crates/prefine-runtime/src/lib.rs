//! `prefine-runtime`: everything needed to predict with one shared backbone and many adapters,
//! and nothing needed to train (no optimiser, no data readers beyond label lists, no HTTP, no
//! CLI). It is what an app links on a device: `prefine-serve`, `prefine-ffi` (C ABI), the
//! WebAssembly and Python packages all sit on it.
//!
//! - [`Engine`]: the backbone (f32, bf16 or int8) loaded once, from a directory or from bytes;
//!   adapters (a LoRA group and/or a head with its labels: `prefine finetune` outputs, bare
//!   PEFT adapters, export bundles) registered and unregistered by name at run time;
//!   mixed-adapter batches (NER and TC rows together) in one forward pass.
//! - [`predict`]: the prediction JSON shapes and NER decoding to character spans with the
//!   transformers pipeline's aggregation strategies.
//! - [`Embedder`]: sentence embeddings (sentence-transformers semantics).
//! - [`bundle`]: self-contained deployment bundles (`prefine export`).
//!
//! ```no_run
//! use prefine_runtime::Engine;
//! let engine = Engine::load("models/all-MiniLM-L6-v2")?;
//! engine.register("conll", "runs/conll".as_ref())?;
//! let out = engine.predict("conll", &["Barack Obama visited Paris.".to_string()])?;
//! # Ok::<(), prefine_runtime::Error>(())
//! ```

pub mod artifact;
pub mod backbone;
pub mod bundle;
pub mod embed;
pub mod engine;
pub mod error;
pub mod head;
pub mod predict;
pub mod synthetic;
pub mod task;
pub mod zero_shot;

pub use artifact::{AdapterFiles, ArtifactManifest, Mode, TaskKind, TcPooling};
pub use backbone::BackboneFiles;
pub use bundle::{export_bundle, is_bundle, load_bundle, BundleManifest, ExportOptions};
pub use embed::{Embedder, EmbedderConfig};
pub use engine::{AdapterInfo, Engine, PredictJob};
pub use error::{report, Error, Result};
pub use head::TaskHead;
pub use predict::{Aggregation, PredictedEntity, Prediction, TextPrediction};
pub use prefine_model::Precision;
pub use zero_shot::{ZeroShot, ZeroShotConfig};
