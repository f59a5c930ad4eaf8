//! `prefine-serve`: the HTTP server over the on-device runtime (`prefine-runtime`).
//!
//! - [`server`]: the HTTP server (`prefine serve`): adapter management, dynamic batching across
//!   adapters, limits, Prometheus metrics, OpenAPI description, graceful shutdown.
//! - The engine, bundles and synthetic adapters live in `prefine-runtime` and are re-exported
//!   here for convenience.
//!
//! ```no_run
//! use prefine_serve::Engine;
//! let engine = Engine::load("models/all-MiniLM-L6-v2")?;
//! engine.register("conll", std::path::Path::new("runs/conll"))?;
//! let out = engine.predict("conll", &["Barack Obama visited Paris.".to_string()])?;
//! println!("{}", serde_json::to_string(&out)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod error;
pub mod metrics;
pub mod server;

pub use error::{Error, Result};
pub use prefine_runtime::{
    bundle, engine, export_bundle, is_bundle, load_bundle, synthetic, AdapterInfo, Aggregation,
    BundleManifest, Engine, ExportOptions, PredictJob, TextPrediction,
};
pub use server::{
    decode_add_adapter_request, decode_predict_request, serve, shutdown_signal, AddAdapterRequest,
    PredictRequest, ServeConfig,
};
