//! `prefine bench`.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use prefine_model::{Encoder, Precision};
use prefine_train::bench::{run as run_workload, BenchOptions, Workload};

/// Arguments of `prefine bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// train_full | train_lora | infer_b1 | infer_b32
    workload: String,
    /// Hugging Face model directory.
    #[arg(long, default_value_os_t = super::default_model_dir())]
    model: PathBuf,
    /// Override the workload's batch size (scaling studies).
    #[arg(long)]
    batch: Option<usize>,
    /// Override the workload's sequence length (scaling studies).
    #[arg(long)]
    seq: Option<usize>,
    /// One warm-up and two timed runs (a smoke test, not a measurement).
    #[arg(long, conflicts_with = "timed")]
    quick: bool,
    /// Override the number of timed runs (e.g. many, to profile one workload).
    #[arg(long)]
    timed: Option<usize>,
    /// Precision: f32 | bf16 | int8 weights (inference workloads); f32 | bf16 matmuls
    /// (training workloads: bf16 is mixed precision with f32 weights and accumulation).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

/// Runs `prefine bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    let workload = Workload::parse(&a.workload).ok_or_else(|| {
        anyhow!(
            "unknown workload {:?}: train_full, train_lora, infer_b1, infer_b32",
            a.workload
        )
    })?;
    let (encoder, _) = Encoder::from_model_dir(&a.model)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let opts = BenchOptions {
        batch: a.batch,
        seq: a.seq,
        runs: if a.quick {
            Some((1, 2))
        } else {
            a.timed.map(|t| (workload.shape().0, t))
        },
        precision: a.precision,
    };
    tracing::info!(
        "running {} ({} threads)",
        workload.name(),
        rayon::current_num_threads()
    );
    let result = run_workload(workload, encoder, &opts)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
