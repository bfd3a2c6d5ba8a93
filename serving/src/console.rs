//! The agent console (`console/`: Vue 3 + TypeScript built by Vite in scripts/setup.sh), embedded
//! in the binary from `console/dist` at compile time and served at `/console/` under the same
//! strict Content Security Policy as every page. A binary built before the console was built
//! serves a page saying how to build it. The same build holds the dashboard, chat, help and
//! tracking pages, which `crate::pages` serves at their own paths through [`serve`].

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::pages::CSP;
use crate::Api;

#[derive(rust_embed::Embed)]
#[folder = "../console/dist/"]
#[allow_missing = true]
pub(crate) struct Built;

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// One file of the console (`index.html` for the root).
pub(crate) fn serve(path: &str) -> Response {
    let path = if path.is_empty() { "index.html" } else { path };
    let headers = |ct: &'static str| {
        [
            (header::CONTENT_TYPE, ct),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ]
    };
    match Built::get(path) {
        Some(f) => (headers(content_type(path)), f.data.into_owned()).into_response(),
        None if Built::get("index.html").is_none() => (
            StatusCode::SERVICE_UNAVAILABLE,
            headers("text/plain; charset=utf-8"),
            "the console was not built into this binary: run scripts/setup.sh, then build again",
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            headers("text/plain; charset=utf-8"),
            "no such file",
        )
            .into_response(),
    }
}

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(|| async { serve("") }))
        .route(
            "/console/{*path}",
            get(|Path(path): Path<String>| async move { serve(&path) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_served_under_the_strict_policy_and_nothing_else_is() {
        for path in [
            "",
            "index.html",
            "../Cargo.toml",
            "assets/../../Cargo.toml",
            "nope.js",
        ] {
            let r = serve(path);
            assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap_or_default()
                .contains("script-src 'self'"));
            if path.contains("..") || path == "nope.js" {
                assert_ne!(r.status(), StatusCode::OK, "{path}");
            }
        }
        // When built, the page loads its script from this origin and carries no inline script.
        if let Some(index) = Built::get("index.html") {
            let html = String::from_utf8_lossy(&index.data).to_string();
            assert!(html.contains("src=\"/console/assets/"), "{html}");
            assert!(
                !html.contains("<script>") && !html.contains("style="),
                "{html}"
            );
        }
    }
}
