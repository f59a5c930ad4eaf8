//! The HTTP server, started on an ephemeral loopback port and exercised with a real HTTP
//! client: every endpoint and every error case.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{json_close, texts, tiny_model, write_adapter, Spec};
use prefine_serve::{serve, Engine, ServeConfig};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct TestServer {
    url: String,
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<prefine_serve::Result<()>>,
    engine: Arc<Engine>,
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

impl TestServer {
    /// A tiny backbone with `ner` and `tc` registered at start; `adapters/` holds `ner2`
    /// and `tc2` (not registered) and is the adapters directory unless `no_dir`.
    async fn start(mut cfg: ServeConfig, no_dir: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let model = root.join("model");
        let base = tiny_model(&model);
        let adapters = root.join("adapters");
        write_adapter(&base, &model, &root.join("startup/ner"), Spec::ner(true, 1));
        write_adapter(&base, &model, &root.join("startup/tc"), Spec::tc(true, 2));
        write_adapter(&base, &model, &adapters.join("ner2"), Spec::ner(false, 3));
        write_adapter(&base, &model, &adapters.join("tc2"), Spec::tc(true, 4));
        let engine = Arc::new(Engine::load(&model).unwrap());
        engine.register("ner", &root.join("startup/ner")).unwrap();
        engine.register("tc", &root.join("startup/tc")).unwrap();
        if !no_dir {
            cfg.adapters_dir = Some(adapters);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(engine.clone(), cfg, listener, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            stop: Some(tx),
            handle,
            engine,
            root,
            _tmp: tmp,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, v)
    }

    async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post(path, body.to_string()).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .client
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_openapi_metrics_and_unknown_routes() {
    let s = TestServer::start(ServeConfig::default(), false).await;
    let (st, body) = s.get("/health").await;
    assert_eq!(st, StatusCode::OK);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["adapters"], 2);

    let (st, body) = s.get("/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    let api: Value = serde_json::from_str(&body).unwrap();
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/health",
        "/v1/adapters",
        "/v1/adapters/{name}",
        "/v1/predict",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(api["paths"].get(p).is_some(), "openapi.json lacks {p}");
    }

    let (st, body) = s.get("/nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body.contains("error"));

    let (st, _) = s
        .post_json("/v1/predict", json!({"adapter": "tc", "texts": ["fine"]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = s.get("/metrics").await;
    assert_eq!(st, StatusCode::OK);
    for needle in [
        "prefine_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1",
        "prefine_requests_total{method=\"POST\",route=\"/v1/predict\",status=\"200\"} 1",
        "prefine_request_duration_seconds_bucket{le=\"+Inf\"}",
        "prefine_batch_texts_count 1",
        "prefine_batch_requests_bucket",
        "prefine_adapters 2",
    ] {
        assert!(body.contains(needle), "metrics lack {needle}:\n{body}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_shapes_and_errors() {
    let cfg = ServeConfig {
        max_texts_per_request: 4,
        max_text_chars: 200,
        max_body_bytes: 4096,
        ..Default::default()
    };
    let s = TestServer::start(cfg, false).await;
    let t = texts();
    let (st, v) = s
        .post_json("/v1/predict", json!({"adapter": "ner", "texts": t}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let want = serde_json::to_value(s.engine.predict("ner", &t).unwrap()).unwrap();
    json_close(&v["results"], &want, 1e-6).unwrap();
    assert!(v["results"][0]["entities"].is_array());

    let (st, v) = s
        .post_json("/v1/predict", json!({"adapter": "tc", "texts": t}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    assert!(r[0]["label"].is_string() && r[0]["scores"].is_object());
    assert_eq!(r[1]["truncated"], true, "long TC text is flagged");
    assert!(r[0].get("truncated").is_none());

    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "unknown adapter",
            json!({"adapter": "nope", "texts": ["x"]}).to_string(),
            StatusCode::NOT_FOUND,
            "unknown adapter",
        ),
        (
            "malformed JSON",
            "{\"adapter\": \"tc\", \"texts\": [".to_string(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "not JSON",
            "hello".to_string(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "wrong type",
            json!({"adapter": "tc", "texts": "x"}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "missing field",
            json!({"adapter": "tc"}).to_string(),
            StatusCode::BAD_REQUEST,
            "texts",
        ),
        (
            "unknown field",
            json!({"adapter": "tc", "texts": ["x"], "foo": 1}).to_string(),
            StatusCode::BAD_REQUEST,
            "foo",
        ),
        (
            "no texts",
            json!({"adapter": "tc", "texts": []}).to_string(),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "empty text",
            json!({"adapter": "tc", "texts": ["ok", " "]}).to_string(),
            StatusCode::BAD_REQUEST,
            "text #2 is empty",
        ),
        (
            "too many texts",
            json!({"adapter": "tc", "texts": ["a", "b", "c", "d", "e"]}).to_string(),
            StatusCode::BAD_REQUEST,
            "limit of 4",
        ),
        (
            "text too long",
            json!({"adapter": "ner", "texts": ["word ".repeat(41)]}).to_string(),
            StatusCode::BAD_REQUEST,
            "limit of 200",
        ),
        (
            "body too large",
            json!({"adapter": "tc", "texts": ["x".repeat(5000)]}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "length limit",
        ),
    ];
    for (what, body, status, msg) in cases {
        let (st, v) = s.post("/v1/predict", body).await;
        assert_eq!(st, status, "{what}: {v}");
        assert!(error_of(&v).contains(msg), "{what}: {v}");
    }
    // The server is still fine after all that.
    let (st, _) = s
        .post_json(
            "/v1/predict",
            json!({"adapter": "tc", "texts": ["still here"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_management() {
    let s = TestServer::start(ServeConfig::default(), false).await;
    let (st, body) = s.get("/v1/adapters").await;
    assert_eq!(st, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ner", "tc"]);
    assert_eq!(v["adapters"][0]["task"], "ner");
    assert_eq!(
        v["adapters"][1]["labels"],
        json!(["negative", "neutral", "positive"])
    );

    let (st, v) = s
        .post_json("/v1/adapters", json!({"name": "ner2", "path": "ner2"}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "ner2");
    assert_eq!(v["has_lora"], false);
    let abs = s.root.join("adapters/tc2").display().to_string();
    let (st, v) = s
        .post_json("/v1/adapters", json!({"name": "tc2", "path": abs}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "absolute path inside: {v}");
    let (st, v) = s
        .post_json(
            "/v1/predict",
            json!({"adapter": "tc2", "texts": ["hi there"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, body) = s.get("/v1/adapters/ner2").await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // A symlink inside the adapters dir that points outside, and a broken adapter dir inside.
    let outside = s.root.join("startup/ner");
    std::os::unix::fs::symlink(&outside, s.root.join("adapters/escape")).unwrap();
    std::fs::create_dir_all(s.root.join("adapters/empty")).unwrap();
    let outside_abs = outside.display().to_string();
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "duplicate",
            json!({"name": "ner2", "path": "ner2"}).to_string(),
            StatusCode::CONFLICT,
            "already registered",
        ),
        (
            "dot-dot",
            json!({"name": "x", "path": "../startup/ner"}).to_string(),
            StatusCode::BAD_REQUEST,
            "'..'",
        ),
        (
            "dot-dot inside",
            json!({"name": "x", "path": "ner2/../tc2"}).to_string(),
            StatusCode::BAD_REQUEST,
            "'..'",
        ),
        (
            "absolute outside",
            json!({"name": "x", "path": outside_abs}).to_string(),
            StatusCode::FORBIDDEN,
            "inside the adapters directory",
        ),
        (
            "absolute root",
            json!({"name": "x", "path": "/etc"}).to_string(),
            StatusCode::FORBIDDEN,
            "inside the adapters directory",
        ),
        (
            "symlink out",
            json!({"name": "x", "path": "escape"}).to_string(),
            StatusCode::FORBIDDEN,
            "inside the adapters directory",
        ),
        (
            "the dir itself",
            json!({"name": "x", "path": "."}).to_string(),
            StatusCode::FORBIDDEN,
            "inside the adapters directory",
        ),
        (
            "missing",
            json!({"name": "x", "path": "nope"}).to_string(),
            StatusCode::BAD_REQUEST,
            "no such directory",
        ),
        (
            "broken",
            json!({"name": "x", "path": "empty"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "adapter.json",
        ),
        (
            "bad name",
            json!({"name": "a/b", "path": "ner2"}).to_string(),
            StatusCode::BAD_REQUEST,
            "adapter name",
        ),
        (
            "malformed",
            "{\"name\":".to_string(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "missing path",
            json!({"name": "x"}).to_string(),
            StatusCode::BAD_REQUEST,
            "path",
        ),
    ];
    for (what, body, status, msg) in cases {
        let (st, v) = s.post("/v1/adapters", body).await;
        assert_eq!(st, status, "{what}: {v}");
        assert!(error_of(&v).contains(msg), "{what}: {v}");
    }
    assert!(s.engine.adapter("x").is_none());

    let (st, _) = s.delete("/v1/adapters/ner2").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, body) = s.delete("/v1/adapters/ner2").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    let (st, _) = s.get("/v1/adapters/ner2").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = s
        .post_json("/v1/predict", json!({"adapter": "ner2", "texts": ["x"]}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_disabled_without_adapters_dir() {
    let s = TestServer::start(ServeConfig::default(), true).await;
    let (st, v) = s
        .post_json("/v1/adapters", json!({"name": "ner2", "path": "ner2"}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(error_of(&v).contains("--adapters-dir"));
    s.stop().await;
}

/// Concurrent requests for different adapters (NER and TC) are merged into shared forward
/// passes, and each gets exactly what it gets alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_across_adapters() {
    let cfg = ServeConfig {
        max_wait: Duration::from_millis(200),
        max_batch: 64,
        ..Default::default()
    };
    let s = Arc::new(TestServer::start(cfg, false).await);
    let t = texts();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        let adapter = if i % 2 == 0 { "ner" } else { "tc" };
        let texts = vec![t[i % t.len()].clone(), t[(i + 1) % t.len()].clone()];
        tasks.push(tokio::spawn(async move {
            let (st, v) = s
                .post_json("/v1/predict", json!({"adapter": adapter, "texts": texts}))
                .await;
            (adapter, texts, st, v)
        }));
    }
    for task in tasks {
        let (adapter, texts, st, v) = task.await.unwrap();
        assert_eq!(st, StatusCode::OK, "{v}");
        let want = serde_json::to_value(s.engine.predict(adapter, &texts).unwrap()).unwrap();
        json_close(&v["results"], &want, 1e-5).unwrap();
    }
    let (_, metrics) = s.get("/metrics").await;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("prefine_batch_requests_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        count < 8,
        "8 concurrent requests ran in {count} batches:\n{metrics}"
    );
    Arc::try_unwrap(s).ok().unwrap().stop().await;
}

/// Shutdown while a request is in flight: the request still gets its answer, then the server
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let cfg = ServeConfig {
        max_wait: Duration::from_millis(400),
        ..Default::default()
    };
    let mut s = TestServer::start(cfg, false).await;
    let client = s.client.clone();
    let url = format!("{}/v1/predict", s.url);
    let inflight = tokio::spawn(async move {
        let r = client
            .post(url)
            .body(json!({"adapter": "tc", "texts": ["in flight"]}).to_string())
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    let (st, body) = inflight.await.unwrap();
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body.contains("\"results\""));
    tokio::time::timeout(Duration::from_secs(10), &mut s.handle)
        .await
        .expect("server stops after the request")
        .unwrap()
        .unwrap();
    // No new connections after shutdown.
    assert!(s
        .client
        .get(format!("{}/health", s.url))
        .send()
        .await
        .is_err());
}
