//! The demo page at `/`: a small chat room on the demo channel, using the official phoenix
//! client (loaded from a public CDN at the pinned version 1.8.16).

use axum::response::Html;

/// `GET /`.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("demo.html"))
}
