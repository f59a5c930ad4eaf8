//! `prefine export`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use prefine_model::Precision;
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
    /// Store the backbone's linear weights as int8 (+ f32 per-channel scales) or bf16
    /// (inference only; embeddings, layer norms, adapters and heads stay f32).
    #[arg(long, value_name = "none|int8|bf16", default_value = "none")]
    quantize: Precision,
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
        quantize: a.quantize,
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
        "wrote {}: {} files, {:.1} MiB (backbone {:.1} MiB, {}, {} adapter(s) {:.2} MiB){}",
        opts.out.display(),
        m.files.len(),
        mib(m.total_bytes),
        mib(backbone),
        m.precision,
        m.adapters.len(),
        mib(m.total_bytes - backbone),
        m.merged
            .as_deref()
            .map(|n| format!(", LoRA of {n:?} merged into the backbone"))
            .unwrap_or_default()
    );
    println!("{}", load_check(&opts.out));
    Ok(())
}

/// Loads the bundle in a fresh `prefine serve --load-only` process and reports what it took
/// (this process's own peak includes the export itself, so it would not be the load's).
fn load_check(bundle: &std::path::Path) -> String {
    let run = || -> Result<serde_json::Value> {
        let out = std::process::Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--model")
            .arg(bundle)
            .arg("--load-only")
            .env("PREFINE_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    match run() {
        Ok(v) => format!(
            "loading it (fresh process): {:.2} s, peak RSS {:.0} MiB ({} backbone weights {:.1} MiB in memory)",
            v["load_s"].as_f64().unwrap_or(f64::NAN),
            v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            v["precision"].as_str().unwrap_or("?"),
            v["backbone_weight_mib"].as_f64().unwrap_or(f64::NAN),
        ),
        Err(e) => format!("loading it (fresh process): not measured ({e})"),
    }
}
