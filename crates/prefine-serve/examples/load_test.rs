//! A bounded-time HTTP load test for `prefine serve` (run it as a separate process):
//! `CLIENTS` concurrent clients, each sending `POST /v1/predict` with one text for an adapter
//! picked round-robin from `ADAPTERS`, for `SECONDS`; prints throughput, p50/p99 latency and
//! the error count as one JSON line.
//!
//! ```text
//! cargo run --release -p prefine-serve --example load_test -- URL ADAPTERS(comma-separated) [CLIENTS] [SECONDS]
//! ```

use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: load_test URL ADAPTERS [CLIENTS] [SECONDS]");
        std::process::exit(2);
    }
    let url = format!("{}/v1/predict", args[1].trim_end_matches('/'));
    let adapters: Vec<String> = args[2].split(',').map(str::to_string).collect();
    let clients: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let seconds: f64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(clients)
        .build()?;
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, url) = (client.clone(), url.clone());
        let adapter = adapters[c % adapters.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0usize;
            while Instant::now() < end {
                let body = serde_json::json!({
                    "adapter": adapter,
                    "texts": [format!("Client {c} request {i}: Angela Merkel met Emmanuel Macron in Berlin to talk about trade.")]
                });
                let t = Instant::now();
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_secs_f64());
                    }
                    _ => errors += 1,
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
            * 1e3
    };
    println!(
        "{}",
        serde_json::json!({
            "clients": clients, "adapters": adapters, "seconds": wall,
            "requests": lat.len(), "errors": errors,
            "throughput_rps": lat.len() as f64 / wall,
            "p50_ms": q(0.5), "p99_ms": q(0.99),
        })
    );
    Ok(())
}
