//! `prefine`: the command-line entry point. It parses arguments and calls the library crates;
//! nothing else lives here.

mod allocator;
mod commands;
mod interrupt;

use clap::{Parser, Subcommand};

/// One shared BERT-family backbone for NER and text classification.
#[derive(Parser)]
#[command(name = "prefine", version, about)]
struct Cli {
    /// Worker threads for tensor kernels (default: all cores).
    #[arg(long, global = true, env = "PREFINE_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts: one JSON line per text, {"text", "embedding"}.
    Embed(commands::embed::EmbedArgs),
    /// Fine-tune a head / LoRA group / the whole model on a labelled task directory.
    Finetune(Box<commands::finetune::FinetuneArgs>),
    /// Pre-finetune the backbone: NER, TC, naive multi-task, or MTPF-TPL (task-primary LoRA).
    Pretrain(commands::pretrain::PretrainArgs),
    /// Evaluate a fine-tuned output directory on a data file; prints the metric object as JSON.
    Evaluate(commands::evaluate::EvaluateArgs),
    /// Predict with a fine-tuned output directory; one JSON line per text.
    Predict(commands::predict::PredictArgs),
    /// Score a predicted CoNLL file against a gold one (conlleval-style report).
    Score(commands::score::ScoreArgs),
    /// Run the evaluation suite (variants x tasks x fractions x seeds) or regenerate its report.
    Suite(commands::suite::SuiteArgs),
    /// Serve adapters over HTTP (one backbone, dynamic mixed-adapter batching).
    Serve(commands::serve::ServeArgs),
    /// Export a self-contained bundle: backbone, tokenizer, adapters, manifest with checksums.
    Export(commands::export::ExportArgs),
    /// Run a standard benchmark workload (../shared/bench/WORKLOAD.md) and print one JSON line.
    Bench(commands::bench::BenchArgs),
}

fn main() {
    // `PREFINE_LOG=debug` shows where the time goes: a line with the busy/idle time of every
    // span as it closes (load, tokenize, epoch end, step, forward, backward, update, checkpoint).
    // Spans are debug-level: at the default `info` they are disabled and cost a level check.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PREFINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: cannot set {n} threads: {e}");
            std::process::exit(2);
        }
    }
    if matches!(
        cli.command,
        Command::Finetune(_) | Command::Pretrain(_) | Command::Suite(_)
    ) {
        interrupt::install();
    }
    // Compute commands run on a worker of the rayon pool: their kernels' parallel loops then
    // start on the pool directly instead of handing every one over from the main thread
    // (with 2 cores, the hand-off costs a context switch per op). `serve` keeps the main
    // thread for its async runtime.
    let on_pool = !matches!(cli.command, Command::Serve(_));
    if on_pool {
        allocator::keep_freed_memory();
    }
    let dispatch = move || match cli.command {
        Command::Embed(a) => commands::embed::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Finetune(a) => commands::finetune::run(*a),
        Command::Evaluate(a) => commands::evaluate::run(a),
        Command::Pretrain(a) => commands::pretrain::run(a),
        Command::Predict(a) => commands::predict::run(a),
        Command::Score(a) => commands::score::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Suite(a) => commands::suite::run(a),
    };
    let result = if on_pool {
        rayon::scope(|_| dispatch())
    } else {
        dispatch()
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(interrupt::exit_code(&e));
    }
}
