//! `prefine-train`: what turns a forward pass into a training step. AdamW with PyTorch
//! semantics and decay groups, masked token cross-entropy, and the standard benchmark workloads
//! of `../shared/bench/WORKLOAD.md`.

#![forbid(unsafe_code)]

pub mod bench;
pub mod charts;
pub mod checkpoint;
pub mod error;
pub mod finetune;
pub mod loss;
pub mod optim;
pub mod pretrain;
pub mod toml_config;
pub mod trainer;

pub use error::{Error, Result};
pub use optim::{AdamW, AdamWConfig, LinearSchedule};
