//! The HTTP server (axum + tokio): adapters management, predictions with dynamic batching
//! across adapters, health, metrics and the OpenAPI description.
//!
//! Requests for any adapters that arrive within `max_wait` of each other (up to `max_batch`
//! texts) are run by one worker thread as ONE mixed-adapter forward pass
//! ([`Engine::predict_mixed`]). Every error is a JSON body `{"error": "..."}` with a fitting
//! status; nothing a client sends can panic the server, and no request waits longer than
//! `request_timeout`. A client that sends its request head slower than `header_timeout` is
//! disconnected, one that sends its body slower than `body_timeout` gets 408 and is
//! disconnected; neither holds up anyone else. Shutdown stops accepting connections and
//! finishes the requests in flight.

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use prefine_runtime::engine::validate_name;
use prefine_runtime::{Aggregation, Engine, PredictJob, TextPrediction};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use prefine_runtime::zero_shot::{ZeroShot, ZeroShotPrediction};

/// The OpenAPI 3 description of this server (also served at `GET /openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Limits and batching settings of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The only directory adapters may be registered from over HTTP (`None`: registration over
    /// HTTP is disabled).
    pub adapters_dir: Option<PathBuf>,
    /// Most texts run in one forward pass by the dynamic batcher.
    pub max_batch: usize,
    /// How long the batcher waits for more requests after the first one.
    pub max_wait: Duration,
    /// Most texts in one request.
    pub max_texts_per_request: usize,
    /// Most characters in one text (longer inputs are refused; within the limit, NER texts
    /// longer than the model window are windowed and TC texts truncated, flagged).
    pub max_text_chars: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Requests waiting for the batcher before new ones get 503.
    pub queue_capacity: usize,
    /// Longest a prediction request may wait for its result before 504.
    pub request_timeout: Duration,
    /// Longest a connection may take to send a request head (request line and headers),
    /// counted from the first read (also bounds how long an idle keep-alive connection stays
    /// open); slower connections are closed without an answer.
    pub header_timeout: Duration,
    /// Longest a client may take to send a request body once its head has arrived; slower
    /// clients get 408 and their connection is closed.
    pub body_timeout: Duration,
    /// Most client connections open at once; a connection beyond it gets 503 and is closed
    /// (counted in `prefine_connections_refused_total`).
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes, at least 8192; a larger one
    /// gets 431.
    pub max_header_bytes: usize,
    /// The backbone for `POST /v1/zero-shot` (a `prefine pretrain` output); `None`: the
    /// endpoint answers 404.
    pub zero_shot: Option<Arc<ZeroShot>>,
}

/// The smallest `max_header_bytes` (hyper's smallest read buffer).
pub const MIN_HEADER_BYTES: usize = 8192;

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            adapters_dir: None,
            max_batch: 32,
            max_wait: Duration::from_millis(5),
            max_texts_per_request: 64,
            max_text_chars: 20_000,
            max_body_bytes: 2 << 20,
            queue_capacity: 1024,
            request_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_header_bytes: 16 << 10,
            zero_shot: None,
        }
    }
}

impl ServeConfig {
    /// Checks the settings before the server starts.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_batch", self.max_batch),
            ("max_texts_per_request", self.max_texts_per_request),
            ("max_text_chars", self.max_text_chars),
            ("max_body_bytes", self.max_body_bytes),
            ("queue_capacity", self.queue_capacity),
            ("max_connections", self.max_connections),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Server(format!("{k} must be positive")));
        }
        let durations = [
            ("request_timeout", self.request_timeout),
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ];
        if let Some((k, _)) = durations.iter().find(|(_, v)| v.is_zero()) {
            return Err(Error::Server(format!("{k} must be positive")));
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(Error::Server(format!(
                "max_header_bytes must be at least {MIN_HEADER_BYTES}"
            )));
        }
        if let Some(d) = &self.adapters_dir {
            if !d.is_dir() {
                return Err(Error::file(d, "adapters directory not found"));
            }
        }
        Ok(())
    }
}

/// A prediction request waiting for the batcher.
struct Job {
    adapter: String,
    texts: Vec<String>,
    aggregation: Aggregation,
    reply: oneshot::Sender<Result<Vec<TextPrediction>>>,
}

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    cfg: Arc<ServeConfig>,
    metrics: Arc<Metrics>,
    queue: SyncSender<Job>,
}

/// An error response: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<prefine_runtime::Error> for ApiError {
    fn from(e: prefine_runtime::Error) -> Self {
        Error::from(e).into()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::UnknownAdapter(_) => StatusCode::NOT_FOUND,
            Error::AdapterExists(_) => StatusCode::CONFLICT,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Adapter { .. }
            | Error::AdapterLoad { .. }
            | Error::Io { .. }
            | Error::File { .. }
            | Error::Bundle { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Model(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, prefine_runtime::report(&e))
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// The body bytes, or the 4xx of the extractor's rejection (e.g. 413 over the size limit).
fn body_bytes(body: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|r| ApiError(r.status(), r.body_text()))
}

/// Parses a JSON body, mapping every failure to [`Error::BadRequest`] with a message.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::BadRequest(format!("malformed JSON body: {e}")))
}

/// The router with every endpoint; the batcher must be running on the other end of `queue`.
fn router(state: AppState) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/v1/adapters", get(list_adapters).post(add_adapter))
        .route(
            "/v1/adapters/{name}",
            delete(remove_adapter).get(get_adapter),
        )
        .route("/v1/predict", axum::routing::post(predict))
        .route("/v1/zero-shot", axum::routing::post(zero_shot))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    s.metrics.observe_request(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// Reads the whole request body before any handler runs: within `body_timeout` of the head
/// (a client that sends slowly or stalls gets 408, and `Connection: close` ends the connection)
/// and at most `max_body_bytes` (413, without reading further: a declared `Content-Length`
/// over the limit is refused before a byte of the body is read).
async fn read_body(State(s): State<AppState>, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let limit = s.cfg.max_body_bytes;
    let too_large = || {
        let msg = format!("request body larger than {limit} bytes: length limit exceeded");
        let mut r = ApiError(StatusCode::PAYLOAD_TOO_LARGE, msg).into_response();
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        r
    };
    let (parts, mut body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let read = async {
        let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if buf.len() + data.len() > limit {
                    return Ok(None);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok::<_, axum::Error>(Some(buf))
    };
    match tokio::time::timeout(s.cfg.body_timeout, read).await {
        Ok(Ok(Some(buf))) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(buf)))
                .await
        }
        Ok(Ok(None)) => too_large(),
        Ok(Err(e)) => ApiError(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )
        .into_response(),
        Err(_) => {
            let msg = format!("request body not received within {:?}", s.cfg.body_timeout);
            let mut r = ApiError(StatusCode::REQUEST_TIMEOUT, msg).into_response();
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            r
        }
    }
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "backbone": s.engine.model_dir(),
        "backbone_parameters": s.engine.num_backbone_parameters(),
        "adapters": s.engine.adapter_names().len(),
    }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let text = s.metrics.render(s.engine.adapter_names().len());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn list_adapters(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "adapters": s.engine.adapters() }))
}

/// The `{name}` segment of the URL, or a JSON 400 (e.g. percent-encoded bytes that are not
/// UTF-8) instead of axum's plain-text rejection.
fn url_name(name: std::result::Result<UrlPath<String>, PathRejection>) -> ApiResult<String> {
    name.map(|UrlPath(n)| n)
        .map_err(|r| ApiError(r.status(), r.body_text()))
}

async fn get_adapter(
    State(s): State<AppState>,
    name: std::result::Result<UrlPath<String>, PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = url_name(name)?;
    let info = s.engine.adapter(&name).ok_or(Error::UnknownAdapter(name))?;
    Ok(Json(json!(info)))
}

/// The body of `POST /v1/adapters`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddAdapterRequest {
    /// The name to register the adapter under.
    pub name: String,
    /// The adapter directory, relative to (or inside) the adapters directory.
    pub path: String,
}

/// Decodes and checks a `POST /v1/adapters` body (`{"name": ..., "path": ...}`) exactly as the
/// handler does before it touches the file system: any bytes give the request or
/// [`Error::BadRequest`] (HTTP 400), never a panic. The path is checked later against the
/// adapters directory ([`resolve_inside`]).
pub fn decode_add_adapter_request(bytes: &[u8]) -> Result<AddAdapterRequest> {
    let req: AddAdapterRequest = parse_json(bytes)?;
    validate_name(&req.name)?;
    Ok(req)
}

/// Resolves `requested` (relative to `root`, or absolute) to a directory inside `root`,
/// symlinks followed: `..` components, paths outside and links that lead outside are refused.
pub fn resolve_inside(root: &Path, requested: &str) -> Result<PathBuf> {
    let p = Path::new(requested);
    if requested.is_empty() || requested.contains('\0') {
        return Err(Error::BadRequest("path is empty or invalid".into()));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::BadRequest(format!(
            "path {requested:?}: '..' is not allowed"
        )));
    }
    let root = std::fs::canonicalize(root).map_err(|e| Error::file(root, e))?;
    let outside = || {
        Error::BadRequest(format!(
            "path {requested:?} must resolve inside the adapters directory"
        ))
    };
    if p.is_absolute() && !p.starts_with(&root) {
        return Err(outside());
    }
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    };
    let canon = std::fs::canonicalize(&joined).map_err(|_| {
        Error::BadRequest(format!(
            "path {requested:?}: no such directory in the adapters directory"
        ))
    })?;
    if !canon.starts_with(&root) || canon == root {
        return Err(outside());
    }
    Ok(canon)
}

async fn add_adapter(
    State(s): State<AppState>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req = decode_add_adapter_request(&body_bytes(body)?)?;
    let Some(root) = s.cfg.adapters_dir.clone() else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "registering adapters over HTTP is disabled (start the server with --adapters-dir)"
                .into(),
        ));
    };
    let dir = resolve_inside(&root, &req.path).map_err(|e| match e {
        Error::BadRequest(m) if m.contains("must resolve inside") => {
            ApiError(StatusCode::FORBIDDEN, m)
        }
        e => e.into(),
    })?;
    let engine = s.engine.clone();
    let name = req.name.clone();
    let start = Instant::now();
    let info = tokio::task::spawn_blocking(move || engine.register(&name, &dir))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(
        "registered adapter {:?} ({:?}) in {:.1} ms",
        info.name,
        info.task,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok((StatusCode::CREATED, Json(json!(info))).into_response())
}

async fn remove_adapter(
    State(s): State<AppState>,
    name: std::result::Result<UrlPath<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let name = url_name(name)?;
    s.engine.unregister(&name)?;
    tracing::info!("unregistered adapter {name:?}");
    Ok(StatusCode::NO_CONTENT)
}

/// `{"results": [...]}`, serialised straight from the predictions (field order and f32
/// values as `prefine predict` prints them).
#[derive(Serialize)]
struct PredictResponse {
    results: Vec<TextPrediction>,
}

/// The body of `POST /v1/predict`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// The registered adapter to run.
    pub adapter: String,
    /// The texts to predict (1 to `max_texts_per_request`, each non-blank and at most
    /// `max_text_chars` characters).
    pub texts: Vec<String>,
    /// How NER subwords become entities (`none`, `simple`, `first`, `average`, `max`; the
    /// transformers pipeline's names). Default `first`.
    #[serde(default)]
    pub aggregation_strategy: Aggregation,
}

/// Decodes and checks a `POST /v1/predict` body exactly as the handler does before it looks up
/// the adapter: any bytes give the request or [`Error::BadRequest`] (HTTP 400) naming the
/// offending text, never a panic.
pub fn decode_predict_request(bytes: &[u8], cfg: &ServeConfig) -> Result<PredictRequest> {
    let req: PredictRequest = parse_json(bytes)?;
    if req.texts.is_empty() {
        return Err(Error::BadRequest("texts is empty".into()));
    }
    if req.texts.len() > cfg.max_texts_per_request {
        return Err(Error::BadRequest(format!(
            "{} texts, more than the limit of {} per request",
            req.texts.len(),
            cfg.max_texts_per_request
        )));
    }
    for (i, t) in req.texts.iter().enumerate() {
        if t.trim().is_empty() {
            return Err(Error::BadRequest(format!("text #{} is empty", i + 1)));
        }
        let n = t.chars().count();
        if n > cfg.max_text_chars {
            return Err(Error::BadRequest(format!(
                "text #{} has {n} characters, more than the limit of {}",
                i + 1,
                cfg.max_text_chars
            )));
        }
    }
    Ok(req)
}

async fn predict(
    State(s): State<AppState>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PredictResponse>> {
    let cfg = &s.cfg;
    let req = decode_predict_request(&body_bytes(body)?, cfg)?;
    if s.engine.adapter(&req.adapter).is_none() {
        return Err(Error::UnknownAdapter(req.adapter).into());
    }
    let (tx, rx) = oneshot::channel();
    let job = Job {
        adapter: req.adapter,
        texts: req.texts,
        aggregation: req.aggregation_strategy,
        reply: tx,
    };
    match s.queue.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy; retry later".into(),
            ))
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down".into(),
            ))
        }
    }
    match tokio::time::timeout(cfg.request_timeout, rx).await {
        Ok(Ok(Ok(results))) => Ok(Json(PredictResponse { results })),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(_)) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the prediction worker dropped the request".into(),
        )),
        Err(_) => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no result within {:?}", cfg.request_timeout),
        )),
    }
}

/// The body of `POST /v1/zero-shot`: texts and either entity-type names (NER) or label names
/// (classification, with an optional template).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroShotRequest {
    /// The texts (the limits of `/v1/predict` apply).
    pub texts: Vec<String>,
    /// Entity-type names, for NER.
    #[serde(default)]
    pub entity_types: Option<Vec<String>>,
    /// Label names, for classification.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Template for the label names (`"This text is about {}."`).
    #[serde(default)]
    pub template: Option<String>,
    /// NER threshold (default: the built-in one).
    #[serde(default)]
    pub threshold: Option<f32>,
}

/// `{"results": [...]}` in the `prefine predict` shape.
#[derive(Serialize)]
struct ZeroShotResponse {
    results: Vec<ZeroShotPrediction>,
}

async fn zero_shot(
    State(s): State<AppState>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ZeroShotResponse>> {
    let Some(zs) = s.cfg.zero_shot.clone() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "zero-shot is not enabled (start the server with --zero-shot DIR)".into(),
        ));
    };
    let bytes = body_bytes(body)?;
    let req: ZeroShotRequest = parse_json(&bytes)?;
    // The text limits of /v1/predict.
    let texts_only = serde_json::to_vec(&json!({"adapter": "zero-shot", "texts": req.texts}))
        .map_err(|e| Error::Server(e.to_string()))?;
    decode_predict_request(&texts_only, &s.cfg)?;
    let run = move || match (&req.entity_types, &req.labels) {
        (Some(t), None) => zs.predict_ner(&req.texts, t, req.threshold),
        (None, Some(l)) => zs.predict_tc(&req.texts, l, req.template.as_deref()),
        _ => Err(prefine_runtime::Error::BadRequest(
            "give exactly one of entity_types (NER) and labels (classification)".into(),
        )),
    };
    let res = tokio::time::timeout(s.cfg.request_timeout, tokio::task::spawn_blocking(run)).await;
    match res {
        Ok(Ok(Ok(results))) => Ok(Json(ZeroShotResponse { results })),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(_)) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error while predicting".into(),
        )),
        Err(_) => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no result within {:?}", s.cfg.request_timeout),
        )),
    }
}

/// The dynamic batcher: waits for a request, gathers more for up to `max_wait` or `max_batch`
/// texts, runs them as one mixed forward pass and answers each. Ends when every sender is gone.
fn batch_worker(
    engine: Arc<Engine>,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    max_wait: Duration,
    metrics: Arc<Metrics>,
) {
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + max_wait;
        let mut texts = first.texts.len();
        let mut jobs = vec![first];
        while texts < max_batch {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(j) => {
                    texts += j.texts.len();
                    jobs.push(j);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // Clients that went away need no answer.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let texts: usize = jobs.iter().map(|j| j.texts.len()).sum();
        let pj: Vec<PredictJob<'_>> = jobs
            .iter()
            .map(|j| PredictJob {
                adapter: &j.adapter,
                texts: &j.texts,
                aggregation: j.aggregation,
            })
            .collect();
        // The batch runs on a worker of the rayon pool: its kernels' parallel loops then start
        // there, instead of being handed over from this thread one op at a time.
        let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rayon::scope(|_| engine.predict_mixed(&pj))
        }));
        drop(pj);
        metrics.observe_batch(texts, jobs.len());
        match results {
            Ok(results) => {
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(r.map_err(Error::from));
                }
            }
            Err(_) => {
                tracing::error!("a prediction batch panicked; its requests get 500");
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(Error::Server("internal error while predicting".into())));
                }
            }
        }
    }
}

/// Serves `engine` on `listener` until `shutdown` completes; then stops accepting
/// connections, finishes the requests in flight and returns.
pub async fn serve(
    engine: Arc<Engine>,
    cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    cfg.validate()?;
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::sync_channel(cfg.queue_capacity);
    let worker = {
        let (engine, metrics) = (engine.clone(), metrics.clone());
        let (max_batch, max_wait) = (cfg.max_batch, cfg.max_wait);
        std::thread::Builder::new()
            .name("prefine-batcher".into())
            .spawn(move || batch_worker(engine, rx, max_batch, max_wait, metrics))
            .map_err(|e| Error::Server(format!("cannot start the batcher: {e}")))?
    };
    let state = AppState {
        engine,
        cfg: Arc::new(cfg),
        metrics,
        queue: tx,
    };
    let limits = ConnectionLimits {
        header_timeout: state.cfg.header_timeout,
        max_connections: state.cfg.max_connections,
        max_header_bytes: state.cfg.max_header_bytes,
        metrics: state.metrics.clone(),
    };
    let app = router(state);
    accept_loop(app, listener, limits, shutdown).await;
    // The router (and with it every queue sender) is gone: the batcher drains and stops.
    let joined = tokio::task::spawn_blocking(move || worker.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        return Err(Error::Server("the batcher thread failed".into()));
    }
    Ok(())
}

/// What the accept loop enforces per connection.
struct ConnectionLimits {
    header_timeout: Duration,
    max_connections: usize,
    max_header_bytes: usize,
    metrics: Arc<Metrics>,
}

/// The answer to a connection beyond `max_connections`.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\nretry-after: 1\r\n\
content-length: 35\r\n\r\n{\"error\":\"too many open connections\"}";

/// Accepts HTTP/1 connections until `shutdown` completes, each served on its own task with a
/// header read timeout (`axum::serve` sets none: a client that never finishes its request head
/// would hold its connection forever) and a cap on the request head's size (431 beyond it). At
/// most `max_connections` are served at once: one more gets 503 and is closed. Then stops
/// accepting, lets every connection finish its request in flight and returns once all are
/// closed. Drops `app` before returning.
async fn accept_loop(
    app: Router,
    listener: tokio::net::TcpListener,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use tokio::io::AsyncWriteExt;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (mut stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            limits.metrics.observe_refused_connection();
            tokio::spawn(async move {
                let write = async {
                    let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
                    let _ = stream.shutdown().await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let metrics = limits.metrics.clone();
        metrics.observe_open_connections(1);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection closed: {e}");
            }
            metrics.observe_open_connections(-1);
            drop(slot);
        });
    }
    drop(listener);
    drop(app);
    graceful.shutdown().await;
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
