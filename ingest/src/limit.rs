//! Per-client rate limits of the front doors (`ingest.rate_limits`, requests per second): each
//! client has its own bucket ([`ClientLimit`]), so a flood from one client cannot starve the
//! others. A route's client is its bearer token when the request carries one (a wrong token only
//! ever drains its own bucket), else its IP address. Provider webhooks are not limited here: they
//! check the signature first and then take from the provider's bucket
//! ([`ClientKey::Provider`]), so unsigned calls are refused (401) without touching the budget
//! the real provider needs. Over the limit: 429 with `Retry-After` and a JSON error; providers
//! retry, nothing is accepted and then lost.
//!
//! Checking a bearer token costs a database lookup, so on routes whose tokens are looked up
//! ([`limited_tokens`]) a token not yet seen to work also takes from its address's budget of
//! unverified tokens (`ingest.rate_limits.unverified`): a flood of made-up tokens from one
//! address is refused (429) before it can queue up for the database that real agents' requests
//! need, while tokens that worked recently skip that budget.

use std::collections::HashSet;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
pub use switchboard_core::http::{ClientKey, ClientLimit};

/// Tokens remembered as working; past it the memory starts over (each then costs one
/// unverified check again).
const KNOWN_MAX: usize = 100_000;

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

async fn check_peer(State(limit): State<ClientLimit>, req: Request, next: Next) -> Response {
    match limit.check(ClientKey::peer(&req)) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// [`limited`] keyed by the client's address alone, for routes that take no credential (the
/// customers' pages, the sign-in): a made-up token or cookie per request would otherwise get a
/// fresh bucket each time.
pub fn limited_by_ip(router: Router, source: &'static str, per_sec: Option<u32>) -> Router {
    let limit = ClientLimit::new(source, per_sec);
    if !limit.is_limited() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(limit, check_peer))
}

/// Per-client limits plus the unverified-token budget of [`limited_tokens`].
#[derive(Clone)]
struct TokenLimits {
    limit: ClientLimit,
    unverified: ClientLimit,
    /// Hashes of tokens whose last request got past authentication.
    known: Arc<Mutex<HashSet<u64>>>,
    hasher: std::hash::RandomState,
}

async fn check_tokens(State(t): State<TokenLimits>, req: Request, next: Next) -> Response {
    let key = ClientKey::of(&req);
    let token = match key {
        ClientKey::Token(tok) => Some(t.hasher.hash_one(tok)),
        _ => None,
    };
    if let Some(h) = token {
        let known = t
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&h);
        if !known {
            if let Err(e) = t.unverified.check(ClientKey::peer(&req)) {
                return e.into_response();
            }
        }
    }
    if let Err(e) = t.limit.check(key) {
        return e.into_response();
    }
    let resp = next.run(req).await;
    if let Some(h) = token {
        let status = resp.status();
        let mut known = t.known.lock().unwrap_or_else(PoisonError::into_inner);
        if status == StatusCode::UNAUTHORIZED {
            known.remove(&h);
        } else if !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS {
            if known.len() >= KNOWN_MAX {
                known.clear();
            }
            known.insert(h);
        }
    }
    resp
}

/// [`limited`] for routes that look their bearer tokens up: a token not seen to work lately
/// also takes from its address's `unverified_per_sec` budget (`None` or 0: no such budget).
pub fn limited_tokens(
    router: Router,
    source: &'static str,
    per_sec: Option<u32>,
    unverified_per_sec: Option<u32>,
) -> Router {
    let t = TokenLimits {
        limit: ClientLimit::new(source, per_sec),
        unverified: ClientLimit::new("unverified", unverified_per_sec),
        known: Arc::default(),
        hasher: std::hash::RandomState::new(),
    };
    if !t.limit.is_limited() && !t.unverified.is_limited() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(t, check_tokens))
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

    #[tokio::test]
    async fn public_routes_count_by_address_whatever_token_is_made_up() {
        let app = limited_by_ip(
            Router::new().route("/x", get(|| async { "ok" })),
            "public",
            Some(2),
        );
        let mut codes = Vec::new();
        for i in 0..6 {
            codes.push(status(&app, request(Some(&format!("made-up-{i}")), [10, 0, 0, 9])).await);
        }
        assert!(codes.contains(&429), "{codes:?}");
        // Another address has its own budget.
        assert_eq!(status(&app, request(None, [10, 0, 0, 10])).await, 200);
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

    #[tokio::test]
    async fn made_up_tokens_cannot_crowd_out_working_ones() {
        // Only "good" authenticates; the address may try 3 unverified tokens a second.
        let app = limited_tokens(
            Router::new().route(
                "/x",
                get(|req: Request| async move {
                    let ok = req
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v == "Bearer good");
                    if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                }),
            ),
            "test",
            Some(100),
            Some(3),
        );
        // The agent's token works once: from then on it skips the unverified budget.
        assert_eq!(
            status(&app, request(Some("good"), [10, 0, 0, 1])).await,
            200
        );
        let mut codes = Vec::new();
        for i in 0..20 {
            codes.push(status(&app, request(Some(&format!("made-up-{i}")), [10, 0, 0, 1])).await);
        }
        assert_eq!(codes.iter().filter(|c| **c == 401).count(), 2, "{codes:?}");
        assert_eq!(codes.iter().filter(|c| **c == 429).count(), 18, "{codes:?}");
        for _ in 0..5 {
            assert_eq!(
                status(&app, request(Some("good"), [10, 0, 0, 1])).await,
                200
            );
        }
        // Another address has its own budget; requests without a token are not affected.
        assert_eq!(
            status(&app, request(Some("made-up"), [10, 0, 0, 2])).await,
            401
        );
        assert_eq!(status(&app, request(None, [10, 0, 0, 1])).await, 401);
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
