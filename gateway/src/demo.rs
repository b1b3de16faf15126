//! The demo page at `/`: a chat room on the demo channel using the official phoenix client,
//! created with `longPollFallbackMs` so a blocked WebSocket falls back to LongPoll.
//!
//! The client script is served at `/assets/phoenix.min.js` from the npm package file named by
//! `--phoenix-js` (or found in a `node_modules/phoenix` next to the working directory or in
//! `gateway/tests/js`); no third-party file is copied into the repository. When no such file
//! exists the page loads the same pinned version (1.8.16) from a public CDN instead.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use crate::edge::Edge;

/// Where the npm package keeps the browser build.
const PACKAGE_FILE: &str = "node_modules/phoenix/priv/static/phoenix.min.js";

/// `GET /`.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("demo.html"))
}

/// The phoenix.js file to serve: the configured one, else a `node_modules` install nearby.
pub fn find_phoenix_js(configured: Option<PathBuf>) -> Option<PathBuf> {
    let candidates = configured.into_iter().chain([
        PathBuf::from(PACKAGE_FILE),
        PathBuf::from("gateway/tests/js").join(PACKAGE_FILE),
    ]);
    candidates.into_iter().find(|p| p.is_file())
}

/// `GET /assets/phoenix.min.js`.
pub async fn phoenix_js(State(edge): State<Arc<Edge>>) -> Response {
    let Some(path) = &edge.config.phoenix_js else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
