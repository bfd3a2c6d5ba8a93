//! The pages Switchboard serves besides the agent console: the supervisor dashboard
//! (`/dashboard`), and for customers the chat widget (`/chat`), the help centre (`/help`) and
//! order tracking (`/track`). They are built with the console (`console/dashboard.html`,
//! `chat.html`, `help.html`, `track.html`, `returns.html`, their TypeScript in `console/src/pages/`, the shared
//! styles in `console/public/`) and served from its embedded build (`crate::console`), their
//! scripts and styles under `/console/`; the satisfaction survey, rendered by `crate::csat`, loads
//! `/console/assets/csat.js` and `/console/pages.css`. They hold no secret: the dashboard signs in
//! with the supervisor's token, the widget with its conversation token. Served with a strict
//! Content Security Policy (scripts only from this origin, no inline script), so a message text can
//! never run.

use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use switchboard_core::http::ApiError;

use crate::Api;

pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The pages, each a file of the console's build.
const PAGES: &[&str] = &[
    "chat.html",
    "dashboard.html",
    "help.html",
    "returns.html",
    "track.html",
];

/// One of the `PAGES` (from the console's build, with its headers); any other name is 404.
pub(crate) fn serve(name: &str) -> Response {
    if PAGES.contains(&name) {
        crate::console::serve(name)
    } else {
        ApiError::not_found("no such page").into_response()
    }
}

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        // The first agent console lived here; the console replaced it.
        .route("/agent", get(|| async { Redirect::permanent("/console/") }))
        .route("/chat", get(|| async { serve("chat.html") }))
        .route("/dashboard", get(|| async { serve("dashboard.html") }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::Built;
    use axum::http::{header, StatusCode};

    #[test]
    fn pages_are_the_consoles_build_served_with_a_strict_policy() {
        for name in PAGES {
            let r = serve(name);
            let csp = r.headers()[header::CONTENT_SECURITY_POLICY].to_str();
            assert!(
                csp.unwrap_or_default().contains("script-src 'self'"),
                "{name}"
            );
            // Built with the console: a built console has every page, each loading its script from
            // this origin and carrying no inline script or style (the policy would block them).
            if Built::get("index.html").is_none() {
                continue;
            }
            let Some(page) = Built::get(name) else {
                panic!("console/dist has no {name}: it predates the pages, run scripts/setup.sh")
            };
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            let html = String::from_utf8_lossy(&page.data).to_string();
            assert!(html.contains("src=\"/console/assets/"), "{name}: {html}");
            for (at, _) in html.match_indices("<script") {
                let tag = html[at..].split('>').next().unwrap_or_default();
                assert!(
                    tag.contains(" src=") && html[at..].starts_with(&format!("{tag}></script>")),
                    "{name} has an inline script: {html}"
                );
            }
            assert!(
                !html.contains("<style") && !html.contains("style="),
                "{name}: {html}"
            );
        }
        // Only the pages: nothing else of the build, nothing outside it.
        for name in ["../Cargo.toml", "index.html", "assets/csat.js", "nope.html"] {
            assert_eq!(serve(name).status(), StatusCode::NOT_FOUND, "{name}");
        }
    }
}
