//! The evaluation suite: the paper's table on demand.
//!
//! A [`SuiteConfig`] names backbone variants (a base model directory and/or `prefine pretrain`
//! outputs, optionally produced by the suite's own `[pretrain]` section), tasks, a downstream
//! protocol per family, data fractions and seeds. Every (variant, task, fraction, seed) cell is
//! one fine-tune + evaluation, appended to `OUT/results.jsonl` as soon as it finishes; finished
//! cells are skipped on re-run and changed cells are detected by a hash. The report
//! (`table.md`, `table.csv`, `suite.svg`, `suite.png`) is regenerated from `results.jsonl`.
//!
//! Data flow: [`config`] → [`runner`] (pre-finetuning, cells) → [`results`] → [`report`] →
//! [`chart`].

#![forbid(unsafe_code)]

pub mod aggregate;
pub mod chart;
pub mod config;
pub mod error;
pub mod report;
pub mod results;
pub mod runner;

pub use config::SuiteConfig;
pub use error::{Error, Result};
pub use report::write_report;
pub use runner::run_suite;
