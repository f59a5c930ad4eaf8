//! `prefine serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use prefine_model::Precision;
use prefine_serve::{is_bundle, load_bundle, serve, shutdown_signal, Engine, ServeConfig};

use super::export::parse_named_dir;

/// Arguments of `prefine serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Backbone directory or bundle (`prefine export`; its adapters are registered).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Directory that `POST /v1/adapters` may register adapters from (default: registration
    /// over HTTP is disabled).
    #[arg(long)]
    adapters_dir: Option<PathBuf>,
    /// Enables `POST /v1/zero-shot` with this `prefine pretrain` output (zero-shot NER and
    /// classification, types and labels given by name).
    #[arg(long)]
    zero_shot: Option<PathBuf>,
    /// An adapter to register at start, as NAME=DIR; repeatable.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most texts per forward pass of the dynamic batcher.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long the batcher waits for more requests after the first one (milliseconds).
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Most texts per request.
    #[arg(long, default_value_t = 64)]
    max_texts: usize,
    /// Most characters per text.
    #[arg(long, default_value_t = 20_000)]
    max_text_chars: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    max_body_bytes: usize,
    /// Longest a request may wait for its prediction (seconds).
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Longest a connection may take to send a request head; slower ones (and idle keep-alive
    /// connections) are closed (seconds).
    #[arg(long, default_value_t = 10)]
    header_timeout_s: u64,
    /// Most client connections open at once (one more gets 503 and is closed).
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Largest request head (request line + headers) in bytes, at least 8192 (431 beyond).
    #[arg(long, default_value_t = 16384)]
    max_header_bytes: usize,
    /// Longest a client may take to send a request body; slower ones get 408 (seconds).
    #[arg(long, default_value_t = 30)]
    body_timeout_s: u64,
    /// Quantise the backbone's linear weights after loading (f32 | bf16 | int8); a quantised
    /// bundle is served at its own precision.
    #[arg(long)]
    precision: Option<Precision>,
    /// Load the model or bundle and its adapters, print one JSON line (load time, peak RSS,
    /// precision, weight memory) and exit without listening.
    #[arg(long)]
    load_only: bool,
}

/// Peak resident memory of this process in MiB (Linux), if known.
fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// A `/proc/self/status` memory line in MiB (Linux), if known.
fn status_mib(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Runs `prefine serve` until SIGINT or SIGTERM.
pub fn run(a: ServeArgs) -> Result<()> {
    let model = a.model.unwrap_or_else(super::default_model_dir);
    let start = Instant::now();
    let engine = if is_bundle(&model) {
        load_bundle(&model)?
    } else {
        Engine::load(&model)?
    };
    let engine = engine.with_max_batch_rows(a.max_batch.max(1));
    // Quantise to --precision, or keep the loaded precision; f32 weights are packed once for
    // the GEMM kernel (serving never trains).
    let precision = a.precision.unwrap_or(engine.precision());
    engine
        .prepare_inference(precision)
        .with_context(|| format!("--precision {precision}"))?;
    for s in &a.adapters {
        let (name, dir) = parse_named_dir(s)?;
        engine
            .register(&name, &dir)
            .with_context(|| format!("--adapter {s}"))?;
    }
    if a.load_only {
        let v = serde_json::json!({
            "model": model,
            "precision": engine.precision(),
            "adapters": engine.adapter_names(),
            "load_s": start.elapsed().as_secs_f64(),
            "peak_rss_mib": peak_rss_mib(),
            "rss_mib": status_mib("VmRSS:"),
            "backbone_weight_mib": engine.backbone_weight_bytes() as f64 / (1024.0 * 1024.0),
        });
        println!("{v}");
        return Ok(());
    }
    tracing::info!(
        "loaded {} ({}; {} adapters: {}) in {:.2} s; peak memory {}",
        model.display(),
        engine.precision(),
        engine.adapter_names().len(),
        engine.adapter_names().join(", "),
        start.elapsed().as_secs_f64(),
        peak_rss_mib().map_or_else(|| "unknown".into(), |m| format!("{m:.0} MiB"))
    );
    let cfg = ServeConfig {
        adapters_dir: a.adapters_dir,
        max_batch: a.max_batch,
        max_wait: Duration::from_millis(a.max_wait_ms),
        max_texts_per_request: a.max_texts,
        max_text_chars: a.max_text_chars,
        max_body_bytes: a.max_body_bytes,
        request_timeout: Duration::from_secs(a.timeout_s.max(1)),
        header_timeout: Duration::from_secs(a.header_timeout_s.max(1)),
        body_timeout: Duration::from_secs(a.body_timeout_s.max(1)),
        max_connections: a.max_connections,
        max_header_bytes: a.max_header_bytes,
        zero_shot: match &a.zero_shot {
            Some(d) => Some(std::sync::Arc::new(prefine_runtime::ZeroShot::load(
                d,
                prefine_runtime::ZeroShotConfig::default(),
            )?)),
            None => None,
        },
        ..Default::default()
    };
    cfg.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!("listening on http://{local}");
        eprintln!("listening on http://{local}");
        serve(Arc::new(engine), cfg, listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}
