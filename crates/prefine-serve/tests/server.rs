//! The HTTP server, started on an ephemeral loopback port and exercised with a real HTTP
//! client: every endpoint and every error case.

#[path = "../../prefine-runtime/tests/common/mod.rs"]
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
        "/v1/zero-shot",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(api["paths"].get(p).is_some(), "openapi.json lacks {p}");
    }

    let (st, body) = s.get("/nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body.contains("error"));
    let (st, body) = s
        .post_json(
            "/v1/zero-shot",
            json!({"texts": ["x"], "labels": ["a", "b"]}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("--zero-shot"), "{body}");

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

// ---------------------------------------------------------------------------------------------
// Abuse: slow clients, oversized bodies, huge requests, invalid UTF-8, path traversal.
// Raw TCP where a well-behaved client (reqwest) cannot misbehave enough.

use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a raw connection to the test server.
async fn raw(s: &TestServer) -> TcpStream {
    TcpStream::connect(s.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or `limit` passes, which fails the test):
/// everything the server sent, and how long it took.
async fn read_to_close(conn: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), conn.read(&mut buf)).await {
            Err(_) => panic!(
                "connection still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

/// The status code of a raw HTTP/1.1 response.
fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"))
}

/// Slow clients: a connection that sends nothing, one that stalls inside its request head, one
/// that stalls inside its body and one that sends its body a byte at a time (each byte in time,
/// the whole too slow). None of them holds up a normal request; the first two are closed after
/// `header_timeout`, the last two get 408 after `body_timeout`, and shutdown is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_without_holding_up_others() {
    let timeout = Duration::from_millis(600);
    let cfg = ServeConfig {
        header_timeout: timeout,
        body_timeout: timeout,
        ..Default::default()
    };
    let s = TestServer::start(cfg, false).await;
    let body = json!({"adapter": "tc", "texts": ["slow and steady"]}).to_string();
    let head = |len: usize| {
        format!("POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n")
    };

    let opened = Instant::now();
    let mut silent = raw(&s).await;
    let mut half_head = raw(&s).await;
    half_head
        .write_all(b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-le")
        .await
        .unwrap();
    let mut half_body = raw(&s).await;
    half_body
        .write_all(format!("{}{}", head(body.len()), &body[..10]).as_bytes())
        .await
        .unwrap();
    let mut dribble = raw(&s).await;
    dribble
        .write_all(head(body.len()).as_bytes())
        .await
        .unwrap();
    let dribbler = tokio::spawn(async move {
        for b in body.as_bytes() {
            if dribble.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dribble
    });

    // Slowloris: many more connections that send nothing.
    let mut crowd = Vec::new();
    for _ in 0..200 {
        crowd.push(raw(&s).await);
    }

    // A well-behaved request is answered at once, stalled connections notwithstanding.
    let t = Instant::now();
    let (st, v) = s
        .post_json("/v1/predict", json!({"adapter": "ner", "texts": ["Paris"]}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(t.elapsed() < timeout, "took {:?}", t.elapsed());

    for (what, conn) in [("silent", &mut silent), ("half head", &mut half_head)] {
        let (resp, _) = read_to_close(conn, Duration::from_secs(5)).await;
        // hyper closes the connection without an answer.
        assert!(resp.is_empty(), "{what}: {resp:?}");
        let took = opened.elapsed();
        assert!(took >= timeout / 2, "{what}: closed after {took:?}");
    }
    let (resp, _) = read_to_close(&mut half_body, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 408, "{resp}");
    assert!(resp.contains("not received within"), "{resp}");
    let mut dribble = dribbler.await.unwrap();
    let (resp, took) = read_to_close(&mut dribble, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 408, "dribbled body: {resp}");
    assert!(took < Duration::from_secs(2), "dribbled body: {took:?}");

    for (i, conn) in crowd.iter_mut().enumerate() {
        let (resp, _) = read_to_close(conn, Duration::from_secs(5)).await;
        assert!(resp.is_empty(), "crowd #{i}: {resp:?}");
    }

    // Another stalled connection does not hold up shutdown beyond the header timeout.
    let _stalled = raw(&s).await;
    let (st, _) = s.get("/health").await;
    assert_eq!(st, StatusCode::OK);
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("route=\"/v1/predict\",status=\"408\"} 2"),
        "{metrics}"
    );
    s.stop().await;
}

/// Bodies over the limit get 413: declared by `Content-Length` (refused before the body is
/// sent: the client is not made to upload it), or sent chunked without a length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_early() {
    let cfg = ServeConfig {
        max_body_bytes: 4096,
        ..Default::default()
    };
    let s = TestServer::start(cfg, false).await;
    // 10 GB announced, nothing sent: the answer comes without waiting for the body.
    let mut conn = raw(&s).await;
    conn.write_all(
        b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000000\r\n\r\n{\"adapter\"",
    )
    .await
    .unwrap();
    let (resp, took) = read_to_close(&mut conn, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 413, "{resp}");
    assert!(resp.contains("length limit exceeded"), "{resp}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Chunked, no length: refused once the limit is crossed.
    let mut conn = raw(&s).await;
    let chunk = "x".repeat(3000);
    let mut req =
        String::from("POST /v1/adapters HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n");
    for _ in 0..2 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let (resp, _) = read_to_close(&mut conn, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 413, "{resp}");

    // Exactly at the limit is served; one byte more is not.
    let at_limit = |n: usize| format!("{{\"adapter\":\"tc\",\"texts\":[\"{}\"]}}", "y".repeat(n));
    assert_eq!(at_limit(4096 - 29).len(), 4096);
    let (st, v) = s.post("/v1/predict", at_limit(4096 - 29)).await;
    assert_eq!(st, StatusCode::OK, "{}", error_of(&v));
    let (st, v) = s.post("/v1/predict", at_limit(4096 - 28)).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (st, _) = s.get("/health").await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

/// A request with 10 000 texts (under the byte limit) is refused with 400 naming the limit,
/// quickly, and the server keeps serving; and so is one text of 1 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_requests_are_refused() {
    let s = TestServer::start(ServeConfig::default(), false).await;
    let many: Vec<String> = (0..10_000).map(|i| format!("text number {i}")).collect();
    let t = Instant::now();
    let (st, v) = s
        .post_json("/v1/predict", json!({"adapter": "ner", "texts": many}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        error_of(&v).contains("10000 texts, more than the limit of 64"),
        "{v}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let (st, v) = s
        .post_json(
            "/v1/predict",
            json!({"adapter": "tc", "texts": ["word ".repeat(200_000)]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("limit of 20000"), "{v}");
    let (st, _) = s
        .post_json("/v1/predict", json!({"adapter": "tc", "texts": ["ok"]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

/// Invalid UTF-8 anywhere a client controls: raw bytes in a JSON string, a lone surrogate
/// escape, in an adapter path, in a percent-encoded URL segment, in the request line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_refused() {
    let s = TestServer::start(ServeConfig::default(), false).await;
    let bodies: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "raw bytes in a text",
            "/v1/predict",
            b"{\"adapter\":\"tc\",\"texts\":[\"caf\xc3\x28 \xff\xfe\"]}".to_vec(),
        ),
        (
            "raw bytes in the adapter name",
            "/v1/predict",
            b"{\"adapter\":\"t\xffc\",\"texts\":[\"x\"]}".to_vec(),
        ),
        (
            "lone surrogate escape",
            "/v1/predict",
            br#"{"adapter":"tc","texts":["\ud800"]}"#.to_vec(),
        ),
        (
            "raw bytes in a path",
            "/v1/adapters",
            b"{\"name\":\"x\",\"path\":\"ner\xff2\"}".to_vec(),
        ),
        (
            "overlong encoding of '/' in a path",
            "/v1/adapters",
            b"{\"name\":\"x\",\"path\":\"..\xc0\xafetc\"}".to_vec(),
        ),
    ];
    for (what, path, body) in bodies {
        let (st, v) = s.post(path, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert!(error_of(&v).contains("malformed JSON"), "{what}: {v}");
    }
    // %FF is not UTF-8: no adapter can have that name.
    for path in ["/v1/adapters/%FF", "/v1/adapters/t%C3%28c"] {
        let (st, body) = s.get(path).await;
        assert!(
            st == StatusCode::BAD_REQUEST || st == StatusCode::NOT_FOUND,
            "{path}: {st} {body}"
        );
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(!error_of(&v).is_empty());
        let (st, _) = s.delete(path).await;
        assert!(st.is_client_error(), "{path}: {st}");
    }
    // Raw non-UTF-8 bytes in the request line: hyper answers 400 and closes.
    let mut conn = raw(&s).await;
    conn.write_all(b"GET /v1/adapters/\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (resp, _) = read_to_close(&mut conn, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(s.engine.adapter_names(), ["ner", "tc"]);
    s.stop().await;
}

/// Path traversal beyond the cases of `adapter_management`: a sibling directory that shares the
/// adapters directory's name as a prefix, a chain of links that ends outside, a linked
/// directory in the middle of the path, a NUL byte, traversal in the name or URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_refused() {
    let s = TestServer::start(ServeConfig::default(), false).await;
    let adapters = s.root.join("adapters");
    // `adapters-evil/ner` starts with the string `.../adapters` but is not inside it.
    let evil = s.root.join("adapters-evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::os::unix::fs::symlink(s.root.join("startup/ner"), evil.join("ner")).unwrap();
    let startup = s.root.join("startup");
    std::os::unix::fs::symlink(&startup, adapters.join("out")).unwrap();
    std::os::unix::fs::symlink(adapters.join("out"), adapters.join("chain")).unwrap();
    std::fs::create_dir_all(adapters.join("sub")).unwrap();
    std::os::unix::fs::symlink("../../startup", adapters.join("sub/up")).unwrap();
    // A link that stays inside is fine.
    std::os::unix::fs::symlink("ner2", adapters.join("alias")).unwrap();

    let forbidden = StatusCode::FORBIDDEN;
    let bad = StatusCode::BAD_REQUEST;
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "sibling with the same prefix",
            json!({"name": "x", "path": evil.join("ner").display().to_string()}),
            forbidden,
            "inside the adapters directory",
        ),
        (
            "absolute path with '..'",
            json!({"name": "x", "path": format!("{}/../startup/ner", adapters.display())}),
            bad,
            "'..'",
        ),
        (
            "link to a link out",
            json!({"name": "x", "path": "chain/ner"}),
            forbidden,
            "inside the adapters directory",
        ),
        (
            "linked directory in the middle",
            json!({"name": "x", "path": "out/tc"}),
            forbidden,
            "inside the adapters directory",
        ),
        (
            "relative link out from a subdirectory",
            json!({"name": "x", "path": "sub/up/ner"}),
            forbidden,
            "inside the adapters directory",
        ),
        (
            "NUL byte",
            json!({"name": "x", "path": "ner2\u{0}/../../startup"}),
            bad,
            "invalid",
        ),
        (
            "'..' with backslashes is just a missing name",
            json!({"name": "x", "path": "..\\startup\\ner"}),
            bad,
            "no such directory",
        ),
        (
            "traversal in the name",
            json!({"name": "../x", "path": "ner2"}),
            bad,
            "adapter name",
        ),
        (
            "home directory",
            json!({"name": "x", "path": "~/adapters"}),
            bad,
            "no such directory",
        ),
    ];
    for (what, body, status, msg) in cases {
        let (st, v) = s.post_json("/v1/adapters", body).await;
        assert_eq!(st, status, "{what}: {v}");
        assert!(error_of(&v).contains(msg), "{what}: {v}");
    }
    assert_eq!(s.engine.adapter_names(), ["ner", "tc"]);
    let (st, v) = s
        .post_json("/v1/adapters", json!({"name": "alias", "path": "alias"}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "a link inside: {v}");
    // Traversal in the URL reaches no file: it is just an unknown name.
    for path in ["/v1/adapters/..%2F..%2Fetc%2Fpasswd", "/v1/adapters/%2E%2E"] {
        let (st, body) = s.delete(path).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    s.stop().await;
}

/// At most `max_connections` connections are served at once: one more gets 503 at once and is
/// closed, is counted in `/metrics`, and the slot frees when a connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_and_are_counted() {
    let s = TestServer::start(
        ServeConfig {
            max_connections: 2,
            ..ServeConfig::default()
        },
        true,
    )
    .await;
    // Two idle connections hold both slots (the server has accepted them once a request on
    // another connection would be refused).
    let mut a = raw(&s).await;
    let mut b = raw(&s).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = raw(&s).await;
    let (resp, took) = read_to_close(&mut third, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 503, "{resp}");
    assert!(resp.contains("too many open connections"), "{resp}");
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");
    // Freeing a slot lets the next connection in.
    a.shutdown().await.unwrap();
    drop(a);
    b.shutdown().await.unwrap();
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, metrics) = s.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("prefine_connections_refused_total 1"),
        "{metrics}"
    );
    s.stop().await;
}

/// A request head larger than `max_header_bytes` gets 431; one within it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let s = TestServer::start(
        ServeConfig {
            max_header_bytes: 8192,
            ..ServeConfig::default()
        },
        true,
    )
    .await;
    let mut conn = raw(&s).await;
    let big = "x".repeat(20_000);
    let head = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    let (resp, _) = read_to_close(&mut conn, Duration::from_secs(10)).await;
    assert_eq!(raw_status(&resp), 431, "{resp}");
    let (status, _) = s.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    s.stop().await;
}

/// Request lines and headers fuzzed (seeded): mutated, truncated and random heads get an
/// HTTP error status or a closed connection, never a hang or a crash, and the server keeps
/// serving. (`fuzz/fuzz_targets/http_head.rs` runs the same check coverage-guided.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_request_heads_never_break_the_server() {
    use rand::{Rng, SeedableRng};
    let s = TestServer::start(
        ServeConfig {
            header_timeout: Duration::from_secs(1),
            ..ServeConfig::default()
        },
        true,
    )
    .await;
    let seeds: [&[u8]; 4] = [
        b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        b"DELETE /v1/adapters/ner HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /metrics HTTP/1.0\r\n\r\n",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(27);
    for i in 0..120 {
        let mut head = seeds[i % seeds.len()].to_vec();
        for _ in 0..rng.random_range(1..6) {
            let pos = rng.random_range(0..head.len());
            match rng.random_range(0..5) {
                0 => head[pos] = rng.random(),
                1 => {
                    head.remove(pos);
                }
                2 => head.insert(pos, rng.random()),
                3 => head.truncate(pos + 1),
                _ => {
                    let junk: Vec<u8> =
                        (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
                    head.splice(pos..pos, junk);
                }
            }
            if head.is_empty() {
                head.push(b'G');
            }
        }
        let mut conn = raw(&s).await;
        let _ = conn.write_all(&head).await;
        let _ = conn.shutdown().await;
        let (resp, _) = read_to_close(&mut conn, Duration::from_secs(10)).await;
        if !resp.is_empty() {
            let status = raw_status(&resp);
            assert!(
                (200..600).contains(&status),
                "head {:?} got {resp:?}",
                String::from_utf8_lossy(&head)
            );
        }
    }
    let (status, _) = s.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    s.stop().await;
}
