//! The web pages Switchboard serves (from `web/`, compiled in): the agent console (`/agent`),
//! the supervisor dashboard (`/dashboard`), and for customers the chat widget (`/chat`),
//! the help centre (`/help`) and order tracking (`/track`). They hold no
//! secret: the console signs in with the
//! agent's token, the widget with its conversation token. Served with a strict Content Security
//! Policy (scripts only from this origin, no inline script), so a message text can never run.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use switchboard_core::http::ApiError;

use crate::Api;

pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const FILES: &[(&str, &str, &str)] = &[
    (
        "agent.html",
        "text/html; charset=utf-8",
        include_str!("../../web/agent.html"),
    ),
    (
        "agent.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/agent.js"),
    ),
    (
        "chat.html",
        "text/html; charset=utf-8",
        include_str!("../../web/chat.html"),
    ),
    (
        "chat.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/chat.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
    (
        "csat.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/csat.js"),
    ),
    (
        "track.html",
        "text/html; charset=utf-8",
        include_str!("../../web/track.html"),
    ),
    (
        "track.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/track.js"),
    ),
    (
        "help.html",
        "text/html; charset=utf-8",
        include_str!("../../web/help.html"),
    ),
    (
        "help.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/help.js"),
    ),
    (
        "dashboard.html",
        "text/html; charset=utf-8",
        include_str!("../../web/dashboard.html"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../../web/dashboard.css"),
    ),
];

pub(crate) fn serve(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, ct, body)) => (
            [
                (header::CONTENT_TYPE, *ct),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::not_found("no such file").into_response(),
    }
}

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/agent", get(|| async { serve("agent.html") }))
        .route("/chat", get(|| async { serve("chat.html") }))
        .route("/dashboard", get(|| async { serve("dashboard.html") }))
        .route(
            "/web/{file}",
            get(|Path(file): Path<String>| async move { serve(&file) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_served_with_a_strict_policy() {
        let r = serve("agent.html");
        assert_eq!(r.status(), 200);
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap_or_default()
            .contains("script-src 'self'"));
        assert_eq!(serve("../Cargo.toml").status(), 404);
        // No page carries an inline script (the policy would block it).
        for (name, _, body) in FILES {
            if name.ends_with(".html") {
                assert!(!body.contains("<script>"), "{name} has an inline script");
            }
        }
    }
}
