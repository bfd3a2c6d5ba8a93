//! HTTP building blocks shared by the ingest and serving roles: JSON errors that name the field,
//! a strict JSON extractor, bearer-token auth, per-client rate limits ([`ClientLimit`]), the
//! server itself with its limits on slow and greedy clients ([`serve`]), and the ops routes
//! (`/healthz`, `/readyz`, `/metrics`).

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hash};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An API error: status plus `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
        }
    }

    /// 400 naming the offending field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 503 with `Retry-After`: a dependency is down, nothing was accepted.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after_secs: Some(5),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e.retry() {
            crate::Retry::WithBackoff => {
                tracing::warn!(error = %e, "dependency unavailable");
                ApiError::unavailable(e.to_string())
            }
            crate::Retry::Never => match e {
                crate::Error::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", m),
                other => {
                    tracing::error!(error = %other, "request failed");
                    ApiError::internal("internal error")
                }
            },
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        crate::Error::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A JSON body extractor whose errors are [`ApiError`]s: 413 over the body limit, 415 without a
/// JSON content type, 400 naming the field that is missing or wrong.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is over the configured limit",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    rejection.body_text(),
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A query-string extractor whose errors are 400 JSON naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = match message.split('`').nth(1) {
                    Some(f) if path == "." => f.to_string(),
                    _ => path,
                };
                ApiError::field(field, message)
            })
    }
}

/// Parses JSON, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed JSON: {message}"),
            );
        }
        // A missing field is reported at its parent; name the field itself.
        let field = match message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("missing field"))
        {
            Some(f) if path == "." => f.to_string(),
            Some(f) => format!("{path}.{f}"),
            None => path,
        };
        ApiError::field(field, message)
    })
}

/// Requires `Authorization: Bearer <token>` matching one of the given tokens.
#[derive(Debug, Clone)]
pub struct BearerAuth {
    tokens: Arc<Vec<String>>,
}

impl BearerAuth {
    pub fn new(tokens: Vec<String>) -> Self {
        BearerAuth {
            tokens: Arc::new(tokens.into_iter().filter(|t| !t.is_empty()).collect()),
        }
    }

    /// Whether the header carries an accepted token (constant-time comparison).
    pub fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        let Some(given) = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
        else {
            return false;
        };
        self.tokens.iter().fold(false, |ok, t| {
            ok | constant_time_eq(t.as_bytes(), given.trim().as_bytes())
        })
    }

    /// Middleware: 401 JSON unless the request carries an accepted token.
    pub async fn middleware(State(auth): State<BearerAuth>, req: Request, next: Next) -> Response {
        if auth.accepts(req.headers().get(header::AUTHORIZATION)) {
            next.run(req).await
        } else {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

/// Who a request comes from, as rate limits count: its bearer token (valid or not: a wrong token
/// only ever drains its own bucket), a provider whose signature was verified, or else its IP
/// address (IPv6 by its /64, what one subscriber usually holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey<'a> {
    Token(&'a str),
    Provider(&'a str),
    Ip(IpAddr),
    /// No address known (a request that did not come through [`serve`]).
    Unknown,
}

impl<'a> ClientKey<'a> {
    /// The key of a request: its bearer token if it carries one, else its peer address.
    pub fn of(req: &'a Request) -> ClientKey<'a> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        // A person's session counts as their token does (`sb_session`, see serving's sessions).
        let token = token.or_else(|| cookie(req.headers(), "sb_session"));
        match token {
            Some(t) => ClientKey::Token(t),
            None => req
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map_or(ClientKey::Unknown, |ci| ClientKey::Ip(client_ip(ci.0.ip()))),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers. Malformed pairs are skipped;
/// a value longer than 512 bytes is not one of ours.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    // Read as bytes, pair by pair: a pair that is not text (a cookie another site planted) is
    // skipped without hiding the rest of the header.
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty() && v.len() <= 512 && v.is_ascii())
}

impl ClientKey<'static> {
    /// The key of a request's peer address, whatever credentials it carries.
    pub fn peer(req: &Request) -> ClientKey<'static> {
        req.extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map_or(ClientKey::Unknown, |ci| ClientKey::Ip(client_ip(ci.0.ip())))
    }
}

/// The address a client is counted by: IPv4 (also when mapped into IPv6) as is, IPv6 by its /64.
pub fn client_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Checks between two sweeps of clients whose bucket is full again.
const RETAIN_EVERY: u64 = 4096;

/// A token bucket per client ([`ClientKey`]) for one source: `per_sec` requests per second,
/// bursts of one second's worth. A client over its budget gets 429 with `Retry-After`; other
/// clients are not affected. Clients whose bucket has refilled are forgotten every
/// [`RETAIN_EVERY`] checks, so a flood of distinct keys (random tokens, many addresses) holds at
/// most that many plus one second's worth of entries.
#[derive(Clone)]
pub struct ClientLimit {
    source: &'static str,
    inner: Option<Arc<LimitInner>>,
}

struct LimitInner {
    limiter: governor::DefaultKeyedRateLimiter<u64>,
    hasher: std::hash::RandomState,
    checks: AtomicU64,
}

impl std::fmt::Debug for ClientLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimit")
            .field("source", &self.source)
            .field("limited", &self.inner.is_some())
            .finish()
    }
}

impl ClientLimit {
    /// `per_sec` requests per second per client; `None` or 0: not limited.
    pub fn new(source: &'static str, per_sec: Option<u32>) -> Self {
        let inner = per_sec.and_then(NonZeroU32::new).map(|rate| {
            Arc::new(LimitInner {
                limiter: governor::RateLimiter::keyed(governor::Quota::per_second(rate)),
                hasher: std::hash::RandomState::new(),
                checks: AtomicU64::new(0),
            })
        });
        ClientLimit { source, inner }
    }

    /// Whether any request can be refused.
    pub fn is_limited(&self) -> bool {
        self.inner.is_some()
    }

    /// Takes one request from `client`'s budget: `Err` is the 429 to answer.
    pub fn check(&self, client: ClientKey<'_>) -> Result<(), ApiError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        if inner.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            inner.limiter.retain_recent();
            inner.limiter.shrink_to_fit();
        }
        let key = inner.hasher.hash_one(client);
        if inner.limiter.check_key(&key).is_ok() {
            return Ok(());
        }
        let kind = match client {
            ClientKey::Token(_) => "token",
            ClientKey::Provider(_) => "provider",
            ClientKey::Ip(_) => "ip",
            ClientKey::Unknown => "unknown",
        };
        metrics::counter!(crate::telemetry::INGEST_RATE_LIMITED_TOTAL, "source" => self.source, "client" => kind)
            .increment(1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this client sends the {} source more requests than it takes per second",
                self.source
            ),
        );
        e.retry_after_secs = Some(1);
        Err(e)
    }

    /// Clients currently remembered (for tests and metrics).
    pub fn clients(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.limiter.len())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 404 for unknown routes, as JSON.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// What the server allows one client connection: against slowloris (headers or a body sent a
/// byte at a time), and against one client holding every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// The whole request header within this (also how long an idle keep-alive connection stays).
    pub header_read_timeout: Duration,
    /// The whole request body within this of the header (zero: no limit).
    pub body_read_timeout: Duration,
    /// Open connections at most; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Open connections per client address (0: no limit; loopback is exempt).
    pub max_connections_per_ip: usize,
}

impl ServeLimits {
    /// The limits of the `http` config section.
    pub fn from_config(c: &crate::config::HttpConfig) -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms.max(1)),
            body_read_timeout: Duration::from_millis(c.body_read_timeout_ms),
            max_connections: c.max_connections.max(1),
            max_connections_per_ip: c.max_connections_per_ip,
        }
    }
}

/// Admission of connections: a global cap (a semaphore) and a per-address one.
#[derive(Debug, Clone)]
struct ConnectionGate {
    global: Arc<tokio::sync::Semaphore>,
    per_ip_max: usize,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A connection's place under the per-address cap, given back on drop.
#[derive(Debug)]
struct IpSlot {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: Option<IpAddr>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else {
            return;
        };
        let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

impl ConnectionGate {
    fn new(max_connections: usize, per_ip_max: usize) -> Self {
        ConnectionGate {
            global: Arc::new(tokio::sync::Semaphore::new(max_connections.max(1))),
            per_ip_max,
            per_ip: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more connection from `ip`, unless that address holds its share already.
    fn admit(&self, ip: IpAddr) -> Option<IpSlot> {
        let ip = client_ip(ip);
        if self.per_ip_max == 0 || ip.is_loopback() {
            return Some(IpSlot {
                per_ip: self.per_ip.clone(),
                ip: None,
            });
        }
        let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= self.per_ip_max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.per_ip.clone(),
            ip: Some(ip),
        })
    }
}

/// A request body that must arrive whole by a deadline; past it, reading fails (the extractor
/// answers 400 and the connection is closed).
async fn body_deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if !has_body || timeout.is_zero() {
        return next.run(req).await;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let req = req.map(|body| {
        let stream =
            futures::stream::unfold(Some(body.into_data_stream()), move |state| async move {
                use futures::StreamExt as _;
                let mut stream = state?;
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
                    Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                    Ok(None) => None,
                    Err(_) => {
                        metrics::counter!(crate::telemetry::HTTP_BODY_TIMEOUTS_TOTAL).increment(1);
                        Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the request body did not arrive in time",
                            )),
                            None,
                        ))
                    }
                }
            });
        axum::body::Body::from_stream(stream)
    });
    next.run(req).await
}

/// Serves `app` on `listener` until `shutdown`, HTTP/1.1 with upgrades (WebSockets), under
/// `limits`: a header must arrive within its timeout (an idle keep-alive connection is closed
/// after it too), a body within its own, at most `max_connections` connections are open (more
/// wait in the backlog), and one address beyond its share is refused at once. Each request carries
/// `ConnectInfo<SocketAddr>`. On shutdown, in-flight requests get up to 30 s to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.body_read_timeout,
        body_deadline,
    ));
    let gate = ConnectionGate::new(limits.max_connections, limits.max_connections_per_ip);
    let (close_tx, close_rx) = tokio::sync::watch::channel(());
    loop {
        let permit = tokio::select! {
            p = gate.global.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Some(slot) = gate.admit(peer.ip()) else {
            metrics::counter!(crate::telemetry::HTTP_CONNECTIONS_REFUSED_TOTAL, "reason" => "per_ip")
                .increment(1);
            tracing::debug!(%peer, "connection refused: the address holds its share");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = app
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            });
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let (stop, close_rx) = (shutdown.clone(), close_rx.clone());
        tokio::spawn(async move {
            metrics::gauge!(crate::telemetry::HTTP_CONNECTIONS).increment(1.0);
            let mut conn = std::pin::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        break;
                    }
                    () = stop.cancelled(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            metrics::gauge!(crate::telemetry::HTTP_CONNECTIONS).decrement(1.0);
            drop((permit, slot, close_rx));
        });
    }
    drop(listener);
    drop(close_rx);
    if tokio::time::timeout(Duration::from_secs(30), close_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 30 s after shutdown, leaving them");
    }
    Ok(())
}

/// A dependency `/readyz` checks.
pub trait ReadyCheck: Send + Sync {
    fn name(&self) -> &'static str;
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

impl ReadyCheck for crate::kafka::Publisher {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            crate::kafka::Publisher::check(self)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

impl ReadyCheck for sqlx::PgPool {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(self)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// State of the ops routes.
#[derive(Clone, Default)]
pub struct Ops {
    pub checks: Vec<Arc<dyn ReadyCheck>>,
    pub metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field(
                "checks",
                &self.checks.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Ops {
    /// `/healthz` (process alive), `/readyz` (every dependency answers), `/metrics` (Prometheus).
    pub fn router(self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(self)
    }
}

/// Set once this process has been told to stop: `/readyz` answers 503 from then on.
static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks the process as stopping: `/readyz` answers 503 (`"draining": true`) while it goes on
/// serving, so a load balancer takes it out of rotation before its listeners close.
pub fn start_draining() {
    DRAINING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether [`start_draining`] was called.
pub fn draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::SeqCst)
}

async fn readyz(State(ops): State<Ops>) -> Response {
    if draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "draining": true})),
        )
            .into_response();
    }
    let results = futures::future::join_all(ops.checks.iter().map(|c| async move {
        let r = tokio::time::timeout(Duration::from_secs(3), c.check())
            .await
            .unwrap_or_else(|_| Err("timed out".to_string()));
        (c.name(), r)
    }))
    .await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let checks: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => serde_json::json!({"ok": true}),
                Err(e) => serde_json::json!({"ok": false, "error": e}),
            };
            (name.to_string(), v)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"ready": ready, "checks": checks})),
    )
        .into_response()
}

async fn metrics_text(State(ops): State<Ops>) -> Response {
    match ops.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => ApiError::not_found("metrics are not enabled").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        email: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        customer: Inner,
        text: String,
    }

    #[test]
    fn names_missing_and_wrong_fields() {
        let e = parse_json::<Outer>(br#"{"customer": {"email": "a@b"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("text"));
        let e = parse_json::<Outer>(br#"{"customer": {}, "text": "x"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("customer.email"));
        let e = parse_json::<Outer>(br#"{"customer": {"email": 5}, "text": "x"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("customer.email"));
        let e = parse_json::<Outer>(br#"{"customer": "#).unwrap_err();
        assert_eq!(e.code, "malformed_json");
    }

    #[test]
    fn each_address_holds_its_share_of_connections() {
        let gate = ConnectionGate::new(100, 2);
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "a third from the same address");
        assert!(gate.admit("203.0.113.8".parse().unwrap()).is_some());
        // IPv6 counts by /64: another address of the same subscriber shares the share.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _x = gate.admit(v6("2001:db8:1:2::1")).unwrap();
        let _y = gate.admit(v6("2001:db8:1:2::ffff")).unwrap();
        assert!(gate.admit(v6("2001:db8:1:2:abcd::9")).is_none());
        assert!(gate.admit(v6("2001:db8:1:3::1")).is_some());
        // Loopback is exempt; a closed connection gives its place back.
        for _ in 0..10 {
            std::mem::forget(gate.admit("127.0.0.1".parse().unwrap()).unwrap());
        }
        drop(first);
        assert!(gate.admit(a).is_some());
        assert_eq!(
            client_ip("::ffff:198.51.100.1".parse().unwrap()),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
    }

    /// Sends `head` then `drip` a byte every `every`: whether the server hung up first.
    async fn hung_up_first(
        addr: SocketAddr,
        head: &[u8],
        drip: &[u8],
        every: Duration,
    ) -> (bool, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(head).await.unwrap();
        let reader = async move {
            let mut got = Vec::new();
            let _ = rd.read_to_end(&mut got).await;
            String::from_utf8_lossy(&got).into_owned()
        };
        let drip = drip.to_vec();
        let writer = async move {
            for b in drip {
                if wr.write_all(&[b]).await.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(every).await;
            }
        };
        tokio::select! {
            answer = reader => (true, answer),
            () = writer => (false, String::new()),
        }
    }

    #[tokio::test]
    async fn the_server_cuts_off_slow_clients_and_serves_the_rest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            Router::new()
                .route("/", get(|| async { "ok" }))
                .route(
                    "/echo",
                    axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
                )
                .route(
                    "/who",
                    get(
                        |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                            SocketAddr,
                        >| async move { peer.ip().to_string() },
                    ),
                );
        let limits = ServeLimits {
            header_read_timeout: Duration::from_millis(300),
            body_read_timeout: Duration::from_millis(300),
            max_connections: 64,
            max_connections_per_ip: 0,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, limits, stop.clone()));
        let request = |raw: Vec<u8>| async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(&raw).await.unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            got
        };
        let get_ok = |path: &str| {
            request(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
            )
        };
        // A header a byte at a time (60 bytes, 100 ms each): cut off.
        let slow_head = tokio::spawn(hung_up_first(
            addr,
            b"G",
            b"ET / HTTP/1.1\r\nHost: x\r\nX-Slow: \xc3\xa9\x00aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
            Duration::from_millis(100),
        ));
        // A body a byte at a time after a whole header: cut off, nothing handled.
        let slow_body = tokio::spawn(hung_up_first(
            addr,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n",
            &[b'x'; 40],
            Duration::from_millis(100),
        ));
        // Meanwhile others are served, and handlers see who they talk to.
        assert!(get_ok("/").await.ends_with("ok"));
        assert!(get_ok("/who").await.ends_with("127.0.0.1"));
        let (closed, answer) = slow_head.await.unwrap();
        assert!(closed && !answer.contains("200 OK"), "{answer}");
        let (closed, answer) = slow_body.await.unwrap();
        assert!(closed && !answer.ends_with("40"), "{answer}");
        // A body that arrives in time is whole.
        let answer = request(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
        )
        .await;
        assert!(answer.ends_with("\r\n\r\n5"), "{answer}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let auth = BearerAuth::new(vec!["s3cret".into(), String::new()]);
        assert!(auth.accepts(Some(&HeaderValue::from_static("Bearer s3cret"))));
        assert!(!auth.accepts(Some(&HeaderValue::from_static("Bearer s3cre"))));
        assert!(!auth.accepts(Some(&HeaderValue::from_static("Bearer "))));
        assert!(!auth.accepts(Some(&HeaderValue::from_static("s3cret"))));
        assert!(!auth.accepts(None));
    }
}
