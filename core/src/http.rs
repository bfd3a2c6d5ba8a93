//! HTTP building blocks shared by the ingest and serving roles: JSON errors that name the field,
//! a strict JSON extractor, bearer-token auth, and the ops routes (`/healthz`, `/readyz`,
//! `/metrics`).

use std::sync::Arc;
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

async fn readyz(State(ops): State<Ops>) -> Response {
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
    fn bearer_tokens_must_match_exactly() {
        let auth = BearerAuth::new(vec!["s3cret".into(), String::new()]);
        assert!(auth.accepts(Some(&HeaderValue::from_static("Bearer s3cret"))));
        assert!(!auth.accepts(Some(&HeaderValue::from_static("Bearer s3cre"))));
        assert!(!auth.accepts(Some(&HeaderValue::from_static("Bearer "))));
        assert!(!auth.accepts(Some(&HeaderValue::from_static("s3cret"))));
        assert!(!auth.accepts(None));
    }
}
