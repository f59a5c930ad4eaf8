//! `prefine-serve`: one backbone, many adapters.
//!
//! - [`Engine`]: the backbone loaded once; adapters (LoRA group + head + labels, as written by
//!   `prefine finetune`) registered and unregistered by name at run time; mixed-adapter batches
//!   (NER and TC rows together) in one forward pass.
//! - [`bundle`]: self-contained deployment bundles (`prefine export`): backbone, tokenizer,
//!   adapters and a manifest with sizes and sha256; optionally one LoRA group merged in.
//! - [`server`]: the HTTP server (`prefine serve`): adapter management, dynamic batching across
//!   adapters, limits, Prometheus metrics, OpenAPI description, graceful shutdown.
//! - [`synthetic`]: random adapters in the finetune format, for tests and load tests.
//!
//! ```no_run
//! use prefine_serve::Engine;
//! let engine = Engine::load("models/all-MiniLM-L6-v2")?;
//! engine.register("conll", std::path::Path::new("runs/conll"))?;
//! let out = engine.predict("conll", &["Barack Obama visited Paris.".to_string()])?;
//! println!("{}", serde_json::to_string(&out)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bundle;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod server;
pub mod synthetic;

pub use bundle::{export_bundle, is_bundle, load_bundle, BundleManifest, ExportOptions};
pub use engine::{AdapterInfo, Engine, PredictJob, TextPrediction};
pub use error::{Error, Result};
pub use server::{
    decode_add_adapter_request, decode_predict_request, serve, shutdown_signal, AddAdapterRequest,
    PredictRequest, ServeConfig,
};
