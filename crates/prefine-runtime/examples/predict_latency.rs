//! Latency of `Engine::predict` on one short text, called from Rust directly: the baseline of
//! the Python package's call overhead (`scripts/bench-python.sh` runs the same loop through
//! `prefine.Backbone.predict`). Prints one JSON line per adapter: median and mean microseconds
//! per call over N calls, after warm-up.
//!
//! `cargo run --release -p prefine-runtime --example predict_latency -- MODEL_DIR TEXT N NAME=ADAPTER_DIR...`

use std::path::Path;
use std::time::Instant;

use prefine_runtime::{Aggregation, Engine, Precision};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, text, n, adapters @ ..] = args.as_slice() else {
        return Err("usage: predict_latency MODEL_DIR TEXT N NAME=ADAPTER_DIR...".into());
    };
    let n: usize = n.parse()?;
    let engine = Engine::load(model)?;
    engine.prepare_inference(Precision::F32)?;
    let texts = vec![text.clone()];
    for spec in adapters {
        let (name, dir) = spec.split_once('=').ok_or("adapter as NAME=DIR")?;
        engine.register(name, Path::new(dir))?;
        for _ in 0..n.min(200) {
            engine.predict_with(name, &texts, Aggregation::First)?;
        }
        let mut us = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let out = engine.predict_with(name, &texts, Aggregation::First)?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(out);
        }
        let mean = us.iter().sum::<f64>() / n as f64;
        us.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({"via": "rust", "adapter": name, "calls": n,
                               "median_us": us[n / 2], "mean_us": mean})
        );
    }
    Ok(())
}
