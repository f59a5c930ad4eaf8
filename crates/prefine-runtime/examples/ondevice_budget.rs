//! The on-device budget of one process: time from start to the first prediction and peak
//! resident memory after loading a backbone (e.g. an int8 bundle), registering every adapter
//! directory given and predicting once with each. Prints one JSON line.
//!
//! `cargo run --release -p prefine-runtime --example ondevice_budget -- BACKBONE ADAPTER_DIR...`

use std::path::Path;
use std::time::Instant;

use prefine_runtime::Engine;

/// A `/proc/self/status` field in bytes (Linux), 0 elsewhere.
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Peak resident set size in bytes (`VmHWM`).
fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM:")
}

/// Resident set size now: `[total, anonymous, file-backed]` (`VmRSS`, `RssAnon`, `RssFile`).
fn rss_bytes() -> [u64; 3] {
    [
        status_bytes("VmRSS:"),
        status_bytes("RssAnon:"),
        status_bytes("RssFile:"),
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let rss_start = rss_bytes();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((backbone, adapters)) = args.split_first() else {
        return Err("usage: ondevice_budget BACKBONE ADAPTER_DIR...".into());
    };
    let backbone = Path::new(backbone);
    let engine = if prefine_runtime::is_bundle(backbone) {
        prefine_runtime::load_bundle(backbone)?
    } else {
        Engine::load(backbone)?
    };
    let loaded = start.elapsed();
    let rss_loaded = rss_bytes();
    let mut names = Vec::new();
    for (i, dir) in adapters.iter().enumerate() {
        let name = format!("app{i}");
        engine.register(&name, Path::new(dir))?;
        names.push(name);
    }
    let registered = start.elapsed();
    let rss_registered = rss_bytes();
    let text = vec!["Angela Merkel met Emmanuel Macron in Paris on Tuesday.".to_string()];
    let first = names
        .first()
        .map(|n| engine.predict(n, &text))
        .transpose()?;
    let first_prediction = start.elapsed();
    for n in names.iter().skip(1) {
        engine.predict(n, &text)?;
    }
    println!(
        "{}",
        serde_json::json!({
            "backbone": backbone.display().to_string(),
            "precision": engine.precision().name(),
            "adapters": names.len(),
            "load_ms": loaded.as_secs_f64() * 1e3,
            "registered_ms": registered.as_secs_f64() * 1e3,
            "first_prediction_ms": first_prediction.as_secs_f64() * 1e3,
            "all_predictions_ms": start.elapsed().as_secs_f64() * 1e3,
            "peak_rss_bytes": peak_rss_bytes(),
            "rss_bytes": {
                "start": rss_start,
                "backbone_loaded": rss_loaded,
                "adapters_registered": rss_registered,
                "after_predictions": rss_bytes(),
            },
            "first_prediction": first,
        })
    );
    Ok(())
}
