//! `prefine-infer`: inference pipelines over the shared backbone. For now: sentence
//! embeddings (tokenize, encode, pool, normalise), in batches.

mod embedder;
mod error;

pub use embedder::{Embedder, EmbedderConfig};
pub use error::{Error, Result};
