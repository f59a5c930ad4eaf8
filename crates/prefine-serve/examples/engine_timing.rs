//! Micro measurements of the engine (not a test): adapter registration and switching cost,
//! mixed-adapter vs single-adapter batch throughput, and memory of a backbone plus adapters.
//!
//! ```text
//! cargo run --release -p prefine-serve --example engine_timing [MODEL_DIR] [ROUNDS]
//! ```
//!
//! Uses synthetic adapters (random LoRA r=4 on query/value/output + heads) on the real
//! backbone: the numbers are about cost, not accuracy.

use std::path::PathBuf;
use std::time::Instant;

use prefine_model::Encoder;
use prefine_serve::synthetic::{write_synthetic_adapter, SyntheticSpec};
use prefine_serve::{Engine, PredictJob};

fn rss_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(
        args.get(1)
            .map_or("models/all-MiniLM-L6-v2", String::as_str),
    );
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let tmp = std::env::temp_dir().join(format!("prefine-engine-timing-{}", std::process::id()));
    let (base, _) = Encoder::from_model_dir(&model)?;
    let rss0 = rss_mib("VmRSS:");
    let t = Instant::now();
    let engine = Engine::load(&model)?.with_max_batch_rows(64);
    println!(
        "backbone load: {:.0} ms; RSS {:.0} MiB -> {:.0} MiB",
        t.elapsed().as_secs_f64() * 1e3,
        rss0,
        rss_mib("VmRSS:")
    );
    drop(base);
    let (base, _) = Encoder::from_model_dir(&model)?;
    let mut names = Vec::new();
    for i in 0..10 {
        let spec = if i % 2 == 0 {
            SyntheticSpec::ner(true, i)
        } else {
            SyntheticSpec::tc(true, i)
        };
        let spec = SyntheticSpec {
            max_length: 128,
            stride: 32,
            ..spec
        };
        let dir = tmp.join(format!("a{i}"));
        write_synthetic_adapter(&base, &model, &dir, spec)?;
        names.push(format!("a{i}"));
    }
    drop(base);
    let rss1 = rss_mib("VmRSS:");
    let mut reg = Vec::new();
    for n in &names {
        let t = Instant::now();
        engine.register(n, &tmp.join(n))?;
        reg.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "register (read LoRA + head from disk, swap state): median {:.2} ms over 10; RSS +{:.1} MiB for 10 adapters",
        median(reg),
        rss_mib("VmRSS:") - rss1
    );
    let t = Instant::now();
    engine.unregister("a9")?;
    println!("unregister: {:.3} ms", t.elapsed().as_secs_f64() * 1e3);

    let sentence = |i: usize| {
        format!(
            "Report {i}: Angela Merkel met the delegation in Berlin on Tuesday and said the talks \
             about trade, energy and the budget went better than expected."
        )
    };
    // Switching: one text per call, same adapter every call vs a different adapter every call.
    let one = vec![sentence(0)];
    for (label, pick) in [("same adapter", false), ("alternating adapters", true)] {
        let mut ms = Vec::new();
        for r in 0..(20 * rounds) {
            let name = if pick { &names[r % 4] } else { &names[1] };
            let t = Instant::now();
            engine.predict(name, &one)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("1 text, {label}: median {:.2} ms", median(ms));
    }
    // Mixed vs single-adapter batches of 32 texts (4 adapters: 2 NER, 2 TC).
    let texts: Vec<String> = (0..32).map(sentence).collect();
    let four = &names[..4];
    let mut single = Vec::new();
    let mut mixed = Vec::new();
    for _ in 0..rounds {
        for n in four {
            let t = Instant::now();
            let r = engine.predict_mixed(&[PredictJob::new(n, &texts)]);
            single.push(t.elapsed().as_secs_f64());
            assert!(r.iter().all(Result::is_ok));
        }
        let jobs: Vec<PredictJob<'_>> = four
            .iter()
            .enumerate()
            .map(|(k, n)| PredictJob::new(n, &texts[k * 8..(k + 1) * 8]))
            .collect();
        let t = Instant::now();
        let r = engine.predict_mixed(&jobs);
        mixed.push(t.elapsed().as_secs_f64());
        assert!(r.iter().all(Result::is_ok));
    }
    let (s, m) = (median(single), median(mixed));
    println!(
        "32 texts, one adapter: median {:.1} ms ({:.0} texts/s); mixed over 4 adapters (2 NER, 2 TC): median {:.1} ms ({:.0} texts/s); mixed/single throughput {:.2}x",
        s * 1e3,
        32.0 / s,
        m * 1e3,
        32.0 / m,
        s / m
    );
    println!("peak RSS {:.0} MiB", rss_mib("VmHWM:"));
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
