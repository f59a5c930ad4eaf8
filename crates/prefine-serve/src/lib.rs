//! `prefine-serve`: one backbone, many adapters.
//!
//! - [`Engine`]: the backbone loaded once; adapters (LoRA group + head + labels, as written by
//!   `prefine finetune`) registered and unregistered by name at run time; mixed-adapter batches
//!   (NER and TC rows together) in one forward pass.
//! - [`server`]: the HTTP server (`prefine serve`): adapter management, dynamic batching across
//!   adapters, limits, Prometheus metrics, OpenAPI description, graceful shutdown.
//!
//! ```no_run
//! use prefine_serve::Engine;
//! let engine = Engine::load("models/all-MiniLM-L6-v2")?;
//! engine.register("conll", std::path::Path::new("runs/conll"))?;
//! let out = engine.predict("conll", &["Barack Obama visited Paris.".to_string()])?;
//! println!("{}", serde_json::to_string(&out)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod engine;
pub mod error;
pub mod metrics;
pub mod server;

pub use engine::{AdapterInfo, Engine, PredictJob, TextPrediction};
pub use error::{Error, Result};
pub use server::{serve, shutdown_signal, ServeConfig};
