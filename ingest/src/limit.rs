//! Per-client rate limits of the front doors (`ingest.rate_limits`, requests per second): each
//! client has its own bucket ([`ClientLimit`]), so a flood from one client cannot starve the
//! others. A route's client is its bearer token when the request carries one (a wrong token only
//! ever drains its own bucket), else its IP address. Provider webhooks are not limited here: they
//! check the signature first and then take from the provider's bucket
//! ([`ClientKey::Provider`]), so unsigned calls are refused (401) without touching the budget
//! the real provider needs. Over the limit: 429 with `Retry-After` and a JSON error; providers
//! retry, nothing is accepted and then lost.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
pub use switchboard_core::http::{ClientKey, ClientLimit};

async fn check(State(limit): State<ClientLimit>, req: Request, next: Next) -> Response {
    match limit.check(ClientKey::of(&req)) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// `router` limited to `per_sec` requests per second per client (bursts up to one second's
/// worth); `None` or 0: not limited.
pub fn limited(router: Router, source: &'static str, per_sec: Option<u32>) -> Router {
    let limit = ClientLimit::new(source, per_sec);
    if !limit.is_limited() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(limit, check))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::StatusCode;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tower::ServiceExt as _;

    fn request(token: Option<&str>, ip: [u8; 4]) -> Request {
        let mut b = Request::get("/x");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let mut req = b.body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 4000))));
        req
    }

    async fn status(app: &Router, req: Request) -> u16 {
        let r = app.clone().oneshot(req).await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.headers()["retry-after"], "1");
        }
        r.status().as_u16()
    }

    #[tokio::test]
    async fn each_client_has_its_own_bucket() {
        let app = limited(
            Router::new().route("/x", get(|| async { "ok" })),
            "test",
            Some(3),
        );
        // One token over its budget is refused...
        let mut codes = Vec::new();
        for _ in 0..6 {
            codes.push(status(&app, request(Some("flood"), [10, 0, 0, 1])).await);
        }
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3, "{codes:?}");
        assert_eq!(codes.iter().filter(|c| **c == 429).count(), 3, "{codes:?}");
        // ... while another token from the same address, and hostile tokens, are not.
        for bad in ["x\ty", "é\u{1F600}", &"A".repeat(4000)] {
            assert_eq!(status(&app, request(Some(bad), [10, 0, 0, 1])).await, 200);
        }
        for _ in 0..3 {
            assert_eq!(
                status(&app, request(Some("good"), [10, 0, 0, 1])).await,
                200
            );
        }
        // Without a token, the address is the client.
        let mut codes = Vec::new();
        for _ in 0..5 {
            codes.push(status(&app, request(None, [10, 0, 0, 2])).await);
        }
        assert_eq!(codes.iter().filter(|c| **c == 429).count(), 2, "{codes:?}");
        assert_eq!(status(&app, request(None, [10, 0, 0, 3])).await, 200);
        // No limit configured: never refused.
        let open = limited(
            Router::new().route("/x", get(|| async { "ok" })),
            "test",
            None,
        );
        for _ in 0..20 {
            assert_eq!(status(&open, request(Some("t"), [10, 0, 0, 1])).await, 200);
        }
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        let limit = ClientLimit::new("test", Some(1_000_000));
        for i in 0..50_000u32 {
            let t = format!("token-{i}");
            limit.check(ClientKey::Token(&t)).unwrap();
        }
        // Swept every 4096 checks: what remains is what arrived since the last sweep plus the
        // buckets not yet refilled (a million per second refills within microseconds).
        assert!(limit.clients() < 8192, "{}", limit.clients());
    }
}
