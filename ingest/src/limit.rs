//! Per-source rate limits: a token bucket per front door (`ingest.rate_limits`), so a flood on
//! one connector cannot starve the others. Over the limit: 429 with `Retry-After` and a JSON
//! error; providers retry, nothing is accepted and then lost.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use switchboard_core::http::ApiError;

#[derive(Clone)]
struct Limit {
    source: &'static str,
    limiter: Arc<DefaultDirectRateLimiter>,
}

async fn check(State(limit): State<Limit>, req: Request, next: Next) -> Response {
    if limit.limiter.check().is_ok() {
        return next.run(req).await;
    }
    metrics::counter!("switchboard_ingest_rate_limited_total", "source" => limit.source)
        .increment(1);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "the {} source takes no more requests this second",
            limit.source
        ),
    );
    e.retry_after_secs = Some(1);
    e.into_response()
}

/// `router` limited to `per_sec` requests per second (bursts up to one second's worth).
pub fn limited(router: Router, source: &'static str, per_sec: Option<u32>) -> Router {
    let Some(rate) = per_sec.and_then(NonZeroU32::new) else {
        return router;
    };
    let limit = Limit {
        source,
        limiter: Arc::new(RateLimiter::direct(Quota::per_second(rate))),
    };
    router.layer(axum::middleware::from_fn_with_state(limit, check))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn over_the_limit_is_429_with_retry_after() {
        let app = limited(
            Router::new().route("/x", get(|| async { "ok" })),
            "test",
            Some(3),
        );
        let mut codes = Vec::new();
        for _ in 0..6 {
            let r = app
                .clone()
                .oneshot(Request::get("/x").body(Body::empty()).unwrap())
                .await
                .unwrap();
            if r.status() == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(r.headers()["retry-after"], "1");
            }
            codes.push(r.status().as_u16());
        }
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3, "{codes:?}");
        assert_eq!(codes.iter().filter(|c| **c == 429).count(), 3, "{codes:?}");
        // No limit configured: never refused.
        let open = limited(
            Router::new().route("/x", get(|| async { "ok" })),
            "test",
            None,
        );
        for _ in 0..20 {
            let r = open
                .clone()
                .oneshot(Request::get("/x").body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
    }
}
