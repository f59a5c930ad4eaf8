//! A bounded-time HTTP load test for `prefine serve` (run it as a separate process):
//! `CLIENTS` concurrent clients, each sending `POST /v1/predict` with one text for an adapter
//! picked round-robin from `ADAPTERS`, for `SECONDS`; prints throughput, p50/p99 latency and
//! the responses by status as one JSON line.
//!
//! ```text
//! cargo run --release -p prefine-serve --example load_test -- URL ADAPTERS(comma-separated) [CLIENTS] [SECONDS]
//!     [--churn PATHS] [--churn-names N] [--churn-clients K] [--churn-pause-ms MS] [--pid PID]
//! ```
//!
//! - `--churn PATHS` (comma-separated adapter directories, relative to the server's
//!   `--adapters-dir`): one more client registers `N` extra adapters `churn0..` from these
//!   paths (`POST /v1/adapters`), waits `MS`, removes them (`DELETE`), waits `MS`, and so on
//!   for the whole run; `K` of the `CLIENTS` (default 4) predict with those names instead of
//!   `ADAPTERS`, and for them a 404 (removed in between) is expected (they wait 50 ms after
//!   one).
//! - `--pid PID`: samples the server's resident memory (`VmRSS` in `/proc/PID/status`) every
//!   second; reports start, max, end and the least-squares slope over the last 40 s.
//!
//! A failure is any transport error, any answer but 200 for `ADAPTERS`, but 200/404 for the
//! churned names, or but 201 (register) / 204 (remove) for the churn client; the exit status is
//! 1 if there was one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Command-line settings.
struct Args {
    url: String,
    adapters: Vec<String>,
    clients: usize,
    seconds: f64,
    churn_paths: Vec<String>,
    churn_names: usize,
    churn_clients: usize,
    churn_pause: Duration,
    pid: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut pos = Vec::new();
    let mut flags = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if let Some(k) = a.strip_prefix("--") {
            let v = it.next().ok_or(format!("--{k} needs a value"))?;
            flags.insert(k.to_string(), v);
        } else {
            pos.push(a);
        }
    }
    if pos.len() < 2 {
        return Err(
            "usage: load_test URL ADAPTERS [CLIENTS] [SECONDS] [--churn PATHS] \
             [--churn-names N] [--churn-clients K] [--churn-pause-ms MS] [--pid PID]"
                .into(),
        );
    }
    let num = |s: Option<&String>, default: f64| -> Result<f64, String> {
        s.map_or(Ok(default), |s| {
            s.parse().map_err(|_| format!("not a number: {s:?}"))
        })
    };
    let known = [
        "churn",
        "churn-names",
        "churn-clients",
        "churn-pause-ms",
        "pid",
    ];
    if let Some(k) = flags.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unknown option --{k}"));
    }
    let churn_paths: Vec<String> = flags
        .get("churn")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let clients = num(pos.get(2), 64.0)? as usize;
    let churn_clients = if churn_paths.is_empty() {
        0
    } else {
        num(flags.get("churn-clients"), 4.0)? as usize
    };
    if churn_clients >= clients {
        return Err("--churn-clients must be fewer than CLIENTS".into());
    }
    Ok(Args {
        url: pos[0].trim_end_matches('/').to_string(),
        adapters: pos[1].split(',').map(str::to_string).collect(),
        clients,
        seconds: num(pos.get(3), 10.0)?,
        churn_names: num(flags.get("churn-names"), 4.0)?.max(1.0) as usize,
        churn_paths,
        churn_clients,
        churn_pause: Duration::from_millis(num(flags.get("churn-pause-ms"), 100.0)? as u64),
        pid: flags
            .get("pid")
            .map(|p| p.parse().map_err(|_| format!("bad pid {p:?}")))
            .transpose()?,
    })
}

/// Counts of answers by status ("transport" for requests that got none).
#[derive(Default)]
struct Tally {
    by_status: BTreeMap<String, u64>,
    failed: u64,
}

impl Tally {
    fn add(&mut self, status: Option<u16>, expected: &[u16]) {
        let key = status.map_or_else(|| "transport".to_string(), |s| s.to_string());
        *self.by_status.entry(key).or_default() += 1;
        if !status.is_some_and(|s| expected.contains(&s)) {
            self.failed += 1;
        }
    }

    fn merge(&mut self, o: Tally) {
        for (k, v) in o.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        self.failed += o.failed;
    }

    fn json(&self) -> Value {
        json!({ "by_status": self.by_status, "failed": self.failed })
    }
}

/// `VmRSS` of `pid` in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Least-squares slope of `(t, y)` in y-units per minute.
fn slope_per_min(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mt, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, y)| (a + t / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (t, y)| {
        (a + (t - mt) * (y - my), b + (t - mt) * (t - mt))
    });
    num / den * 60.0
}

/// The median of the samples with `from <= t < to`.
fn median(samples: &[(f64, f64)], from: f64, to: f64) -> Option<f64> {
    let mut ys: Vec<f64> = samples
        .iter()
        .filter(|p| p.0 >= from && p.0 < to)
        .map(|p| p.1)
        .collect();
    ys.sort_by(|a, b| a.total_cmp(b));
    ys.get(ys.len() / 2).copied()
}

/// Sends one request; the status, or `None` if no answer came.
async fn send(req: reqwest::RequestBuilder) -> Option<u16> {
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            r.bytes().await.ok().map(|_| status)
        }
        Err(_) => None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let predict_url = format!("{}/v1/predict", args.url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(args.clients + 1)
        .build()?;
    let churn_names: Vec<String> = (0..args.churn_names).map(|i| format!("churn{i}")).collect();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);

    // Memory sampler: (seconds since start, RSS MiB) once a second until the end.
    let sampler = args.pid.map(|pid| {
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Some(m) = rss_mib(pid) {
                    samples.push((start.elapsed().as_secs_f64(), m));
                }
                if Instant::now() >= end {
                    break;
                }
            }
            samples
        })
    });

    // Churn: register the extra names, wait, remove them, wait, ...
    let churner = (!args.churn_paths.is_empty()).then(|| {
        let (client, url, names, paths) = (
            client.clone(),
            args.url.clone(),
            churn_names.clone(),
            args.churn_paths.clone(),
        );
        let pause = args.churn_pause;
        tokio::spawn(async move {
            let (mut reg, mut unreg) = (Tally::default(), Tally::default());
            let mut cycles = 0u64;
            let mut reg_ms = Vec::new();
            while Instant::now() < end {
                for (i, name) in names.iter().enumerate() {
                    let body = json!({"name": name, "path": paths[i % paths.len()]});
                    let t = Instant::now();
                    let st = send(client.post(format!("{url}/v1/adapters")).json(&body)).await;
                    reg_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    reg.add(st, &[201]);
                }
                tokio::time::sleep(pause).await;
                for name in &names {
                    let st = send(client.delete(format!("{url}/v1/adapters/{name}"))).await;
                    unreg.add(st, &[204]);
                }
                cycles += 1;
                tokio::time::sleep(pause).await;
            }
            (reg, unreg, cycles, reg_ms)
        })
    });

    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, url) = (client.clone(), predict_url.clone());
        let churned = c < args.churn_clients;
        let pool = if churned {
            churn_names.clone()
        } else {
            args.adapters.clone()
        };
        let expected: &'static [u16] = if churned { &[200, 404] } else { &[200] };
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut tally = Tally::default();
            let mut i = 0usize;
            while Instant::now() < end {
                let adapter = &pool[(c + i) % pool.len()];
                let body = json!({
                    "adapter": adapter,
                    "texts": [format!("Client {c} request {i}: Angela Merkel met Emmanuel Macron in Berlin to talk about trade.")]
                });
                let t = Instant::now();
                let st = send(client.post(&url).json(&body)).await;
                if st == Some(200) {
                    lat.push(t.elapsed().as_secs_f64());
                }
                tally.add(st, expected);
                if st == Some(404) {
                    // The name is removed at the moment: retry a little later, as a real
                    // client would, instead of spinning on instant 404s.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                i += 1;
            }
            (churned, lat, tally)
        }));
    }
    let (mut lat, mut stable, mut churned) = (Vec::new(), Tally::default(), Tally::default());
    for t in tasks {
        let (is_churned, l, tally) = t.await?;
        if is_churned {
            churned.merge(tally);
        } else {
            lat.extend(l);
            stable.merge(tally);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
            * 1e3
    };
    let mut failed = stable.failed + churned.failed;
    let mut out = json!({
        "clients": args.clients, "adapters": args.adapters, "seconds": wall,
        "requests": stable.by_status.values().sum::<u64>(), "ok": lat.len(),
        "responses": stable.json(),
        "throughput_rps": lat.len() as f64 / wall,
        "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0),
    });
    if let Some(ch) = churner {
        let (reg, unreg, cycles, mut reg_ms) = ch.await?;
        failed += reg.failed + unreg.failed;
        reg_ms.sort_by(|a, b| a.total_cmp(b));
        let median = reg_ms.get(reg_ms.len() / 2).copied().unwrap_or(f64::NAN);
        let regs: u64 = reg.by_status.values().sum();
        out["churn"] = json!({
            "paths": args.churn_paths, "names": churn_names, "clients": args.churn_clients,
            "pause_ms": args.churn_pause.as_millis() as u64, "cycles": cycles,
            "registrations_per_s": regs as f64 / wall, "register_median_ms": median,
            "register": reg.json(), "remove": unreg.json(),
            "predict_requests": churned.by_status.values().sum::<u64>(),
            "predict_responses": churned.json(),
        });
    }
    if let Some(s) = sampler {
        let samples = s.await?;
        let ys: Vec<f64> = samples.iter().map(|p| p.1).collect();
        let t_end = samples.last().map_or(0.0, |p| p.0);
        let tail: Vec<(f64, f64)> = samples
            .iter()
            .copied()
            .filter(|p| p.0 >= t_end - 40.0)
            .collect();
        let round = |x: f64| (x * 10.0).round() / 10.0;
        out["rss_mib"] = json!({
            "start": ys.first().copied().map(round), "max": round(ys.iter().copied().fold(f64::MIN, f64::max)),
            "end": ys.last().copied().map(round),
            "at_5s": samples.iter().find(|p| p.0 >= 5.0).map(|p| round(p.1)),
            "median_first_20s_after_5s": median(&samples, 5.0, 25.0).map(round),
            "median_last_20s": median(&samples, t_end - 20.0, f64::MAX).map(round),
            "slope_last_40s_mib_per_min": (slope_per_min(&tail) * 1000.0).round() / 1000.0,
            "samples": ys.iter().map(|&y| round(y)).collect::<Vec<_>>(),
        });
    }
    out["failed"] = json!(failed);
    println!("{out}");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
