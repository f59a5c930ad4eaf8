//! Server metrics in the Prometheus text exposition format: request counts by route and
//! status, a request latency histogram, and histograms of the dynamic batches (texts and
//! requests per forward pass).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Per bucket (non-cumulative), plus one for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// A histogram with the given (increasing) upper bounds.
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut acc = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            acc += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        acc += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {acc}");
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: Histogram,
    batch_texts: Histogram,
    batch_requests: Histogram,
    texts: u64,
    connections_refused: u64,
    connections_open: u64,
}

/// All server metrics (cheap to update from any thread).
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        Self {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                latency: Histogram::new(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                batch_texts: Histogram::new(&sizes),
                batch_requests: Histogram::new(&sizes),
                texts: 0,
                connections_refused: 0,
                connections_open: 0,
            }),
        }
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a finished HTTP request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        m.latency.observe(seconds);
    }

    /// Records one forward pass of the dynamic batcher.
    pub fn observe_batch(&self, texts: usize, requests: usize) {
        let mut m = self.lock();
        m.batch_texts.observe(texts as f64);
        m.batch_requests.observe(requests as f64);
        m.texts += texts as u64;
    }

    /// Records a connection refused because `max_connections` were open.
    pub fn observe_refused_connection(&self) {
        self.lock().connections_refused += 1;
    }

    /// Records a connection opened (`+1`) or closed (`-1`).
    pub fn observe_open_connections(&self, delta: i64) {
        let mut m = self.lock();
        m.connections_open = m.connections_open.saturating_add_signed(delta);
    }

    /// Connections refused so far.
    pub fn refused_connections(&self) -> u64 {
        self.lock().connections_refused
    }

    /// Number of batches run so far.
    pub fn batches(&self) -> u64 {
        self.lock().batch_texts.count()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, adapters: usize) -> String {
        let m = self.lock();
        let mut out = String::new();
        out += "# HELP prefine_requests_total HTTP requests by method, route and status.\n";
        out += "# TYPE prefine_requests_total counter\n";
        for ((method, route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "prefine_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        m.latency.render(
            &mut out,
            "prefine_request_duration_seconds",
            "HTTP request latency in seconds.",
        );
        m.batch_texts.render(
            &mut out,
            "prefine_batch_texts",
            "Texts per forward pass of the dynamic batcher.",
        );
        m.batch_requests.render(
            &mut out,
            "prefine_batch_requests",
            "Requests merged into one forward pass by the dynamic batcher.",
        );
        out += "# HELP prefine_texts_total Texts predicted.\n# TYPE prefine_texts_total counter\n";
        let _ = writeln!(out, "prefine_texts_total {}", m.texts);
        out += "# HELP prefine_connections_refused_total Connections refused (503) because \
                max_connections were open.\n# TYPE prefine_connections_refused_total counter\n";
        let _ = writeln!(
            out,
            "prefine_connections_refused_total {}",
            m.connections_refused
        );
        out += "# HELP prefine_connections_open Open client connections.\n\
                # TYPE prefine_connections_open gauge\n";
        let _ = writeln!(out, "prefine_connections_open {}", m.connections_open);
        out += "# HELP prefine_adapters Registered adapters.\n# TYPE prefine_adapters gauge\n";
        let _ = writeln!(out, "prefine_adapters {adapters}");
        out
    }
}
