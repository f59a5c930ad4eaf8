//! `prefine suite`: the evaluation suite (`--config FILE`) and its report (`suite report OUT`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use prefine_suite::{run_suite, write_report, SuiteConfig};

/// Arguments of `prefine suite`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SuiteArgs {
    #[command(subcommand)]
    command: Option<SuiteCommand>,
    /// Suite configuration (TOML): variants, tasks, protocol, fractions, seeds, [pretrain].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory (default: the config's `out`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SuiteCommand {
    /// Regenerate table.md, table.csv, suite.svg and suite.png from OUT/results.jsonl.
    Report {
        /// The suite's output directory.
        out: PathBuf,
    },
}

/// Runs `prefine suite`.
pub fn run(a: SuiteArgs) -> Result<()> {
    if let Some(SuiteCommand::Report { out }) = a.command {
        let md = write_report(&out)?;
        println!("{md}");
        eprintln!("report written to {}", out.display());
        return Ok(());
    }
    let Some(path) = a.config else {
        anyhow::bail!("give --config FILE (or `prefine suite report OUT`)");
    };
    let cfg = SuiteConfig::from_toml_file(&path)?;
    let out = a
        .out
        .or_else(|| cfg.out.clone())
        .context("no output directory: pass --out or set `out` in the config")?;
    super::check_output_dir(&out)?;
    let s = run_suite(&cfg, &out)?;
    println!("{}", s.table);
    eprintln!(
        "suite: {} cells ({} run now, {} already done, {} failed) in {:.0}s; results in {}",
        s.total,
        s.ran,
        s.skipped,
        s.failed,
        s.seconds,
        out.display()
    );
    Ok(())
}
