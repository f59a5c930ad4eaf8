//! `prefine export`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use prefine_serve::{export_bundle, ExportOptions};

/// Arguments of `prefine export`.
#[derive(Args)]
pub struct ExportArgs {
    /// Backbone directory (default: $PREFINE_MODEL or models/all-MiniLM-L6-v2).
    #[arg(long)]
    model: Option<PathBuf>,
    /// An adapter to include, as NAME=DIR (a `prefine finetune` output); repeatable.
    #[arg(long = "adapter", value_name = "NAME=DIR", required = true)]
    adapters: Vec<String>,
    /// Fold this adapter's LoRA group into the backbone weights (a single-task model).
    #[arg(long, value_name = "NAME")]
    merge: Option<String>,
    /// The bundle directory to create (must not exist).
    #[arg(long)]
    out: PathBuf,
}

/// Parses `NAME=DIR`.
pub fn parse_named_dir(s: &str) -> Result<(String, PathBuf)> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => bail!("--adapter {s:?}: expected NAME=DIR"),
    }
}

/// Runs `prefine export`.
pub fn run(a: ExportArgs) -> Result<()> {
    let adapters = a
        .adapters
        .iter()
        .map(|s| parse_named_dir(s))
        .collect::<Result<Vec<_>>>()?;
    let opts = ExportOptions {
        model_dir: a.model.unwrap_or_else(super::default_model_dir),
        adapters,
        merge: a.merge,
        out: a.out,
    };
    let m = export_bundle(&opts)?;
    let backbone: u64 = m
        .files
        .iter()
        .filter(|f| f.path.starts_with("model/"))
        .map(|f| f.bytes)
        .sum();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "wrote {}: {} files, {:.1} MiB (backbone {:.1} MiB, {} adapter(s) {:.2} MiB){}",
        opts.out.display(),
        m.files.len(),
        mib(m.total_bytes),
        mib(backbone),
        m.adapters.len(),
        mib(m.total_bytes - backbone),
        m.merged
            .as_deref()
            .map(|n| format!(", LoRA of {n:?} merged into the backbone"))
            .unwrap_or_default()
    );
    Ok(())
}
