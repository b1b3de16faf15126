//! The HTTP API: `POST /api/broadcast`, `POST /api/disconnect` (Bearer API key when one is
//! configured), `/healthz` (alive), `/readyz` (hears the cluster and is not draining) and
//! `/metrics`. Bad requests get a JSON error body, never a dropped connection. A broadcast on a
//! topic with history is answered once stored (202 with its position), or 503 when it cannot
//! be stored.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::cluster::Broadcast;
use crate::edge::Edge;
use crate::hub::DISCONNECT_EVENT;
use crate::protocol::{is_reserved_event, Payload, MAX_TOPIC_LEN};

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn authorized(edge: &Edge, headers: &HeaderMap) -> bool {
    let Some(key) = &edge.config.api_key else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // compared in time independent of where the key and the guess differ
    given.is_some_and(|g| bool::from(g.trim().as_bytes().ct_eq(key.as_bytes())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastRequest {
    topic: String,
    event: String,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    /// On a history topic: a retry with the same key within the topic's ttl returns the
    /// first position and stores nothing.
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    id: String,
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "ok": true })),
    )
        .into_response()
}

/// `POST /api/broadcast` `{"topic","event","payload"}`: broadcast to the topic on every node.
pub async fn broadcast(State(edge): State<Arc<Edge>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&edge, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong API key");
    }
    let req: BroadcastRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    if is_reserved_event(&req.event) {
        return error(
            StatusCode::BAD_REQUEST,
            "events starting with phx_ or presence_ are reserved",
        );
    }
    if req.topic.is_empty() || req.topic.len() > MAX_TOPIC_LEN || req.event.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "topic must be 1-255 bytes and event non-empty",
        );
    }
    let payload = match req.payload {
        Some(raw) => Payload::raw_json(raw.get().to_owned()),
        None => Payload::empty(),
    };
    // A topic whose channel keeps history answers once the broadcast is stored, with its
    // position; one that cannot be stored is refused so the publisher retries.
    let history = edge
        .core
        .router
        .route(&req.topic)
        .and_then(|factory| factory(&req.topic).history());
    let Some(limits) = history else {
        edge.core
            .hub
            .broadcast(Broadcast::new(req.topic, req.event, payload), None);
        return accepted();
    };
    let msg = Broadcast::plain(req.topic, req.event, payload);
    let key = req.idempotency_key.as_deref().filter(|k| !k.is_empty());
    if key.is_some_and(|k| k.len() > MAX_TOPIC_LEN) {
        return error(
            StatusCode::BAD_REQUEST,
            "idempotency_key must be at most 255 bytes",
        );
    }
    match edge.core.hub.broadcast_stored(msg, None, limits, key).await {
        Ok(stored) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "ok": true, "position": stored.position.to_string() })),
        )
            .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not stored, retry: {e}"),
        ),
    }
}

/// `POST /api/disconnect` `{"id":"user_socket:42"}`: close every session with that id, on every
/// node (close code 1001).
pub async fn disconnect(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&edge, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong API key");
    }
    let req: DisconnectRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    if req.id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "id must not be empty");
    }
    let msg = Broadcast::new(req.id, DISCONNECT_EVENT, Payload::empty());
    edge.core.hub.broadcast(msg, None);
    accepted()
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the node hears the cluster and is not draining, else 503.
pub async fn readyz(State(edge): State<Arc<Edge>>) -> Response {
    if edge.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else if edge.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "pubsub not ready").into_response()
    }
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    edge.core.hub.pubsub().refresh_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        edge.metrics().render(),
    )
        .into_response()
}
